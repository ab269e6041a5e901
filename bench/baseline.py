"""The baseline every HTTP figure is compared with: a bare ASGI hello-world, served by the same uvicorn.

`app` imports nothing, so its start-up is the interpreter's plus uvicorn's, and its request cost is uvicorn's own.
Run as `uvicorn bench.baseline:app` with the flags of the container's command. `create_fastapi_app` is a second
reference for the HTTP rows: how much of the gap to the bare app is FastAPI's own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

_BODY = b'{"status":"ok"}'
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_BODY)).encode())]

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """Answer every HTTP request with 200 and a small JSON body; accept the lifespan protocol."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})


def create_fastapi_app() -> Any:
    """A FastAPI hello-world with one async route: the framework's own floor, between the bare ASGI app and the API.

    Imported lazily so that `app` above stays import-free. Run as `uvicorn bench.baseline:create_fastapi_app --factory`.
    """
    from fastapi import FastAPI

    framework = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @framework.get("/")
    async def hello() -> dict[str, str]:
        return {"status": "ok"}

    return framework
