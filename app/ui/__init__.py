"""The operations dashboard at `/ui`: server-rendered pages over the same services as the API routers.

Sign-in exchanges an API key for a session cookie (app/ui/sessions.py); every form carries the session's CSRF token.
Pages poll small HTML fragments for live updates (static/dashboard.js); no script or style comes from elsewhere.
None of these routes is in the OpenAPI schema.
"""

from __future__ import annotations

from fastapi import FastAPI
from redis.asyncio import Redis
from starlette.staticfiles import StaticFiles

from app.ui.router import STATIC_DIR, router
from app.ui.sessions import SessionStore


def install_dashboard(app: FastAPI, valkey: Redis, session_ttl_seconds: int) -> None:
    """Serve the dashboard from `app`: its routes, its static files, and its session store on the app's Valkey."""
    app.state.ui_sessions = SessionStore(valkey, session_ttl_seconds)
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="ui-static")
