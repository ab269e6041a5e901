"""`/livez`, answered before routing: the cheapest proof that the event loop runs.

Liveness must depend on nothing: not on routing, dependencies or the other middleware (request ids, access log,
metrics). Answered here, the container probe measures the event loop alone, and a probe costs next to nothing
(docs/performance.md). `/livez` is therefore not a FastAPI route and not in the OpenAPI schema.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.process import ProcessState

LIVEZ_PATH = "/livez"
_BODIES = {ready: b'{"status":"ok","readyOnce":%s}' % (b"true" if ready else b"false") for ready in (True, False)}


class LivenessEndpoint:
    """Pure ASGI middleware: answers GET and HEAD `/livez` with `{"status": "ok", "readyOnce": bool}`."""

    def __init__(self, app: ASGIApp, process: ProcessState) -> None:
        self.app = app
        self.process = process

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != LIVEZ_PATH or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        body = _BODIES[self.process.ready_once]
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body if scope["method"] == "GET" else b""})


# How /livez looks in the OpenAPI document: constant bytes before routing, it answers nothing but 200.
LIVEZ_OPERATION: dict[str, Any] = {
    "tags": ["health"],
    "summary": "Livez",
    "description": "200 while the event loop answers; answered before routing, depends on nothing.",
    "operationId": "livez",
    "responses": {
        "200": {
            "description": "alive",
            "content": {
                "application/json": {
                    "schema": {
                        "title": "Liveness",
                        "type": "object",
                        "required": ["status", "readyOnce"],
                        "properties": {
                            "status": {"type": "string", "enum": ["ok"]},
                            "readyOnce": {
                                "type": "boolean",
                                "description": "the app has been ready (Valkey connected) once",
                            },
                        },
                    }
                }
            },
        }
    },
}
