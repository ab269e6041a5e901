"""ASGI middleware: request id, access log, HTTP metrics and the last-resort 500; declared body size limit."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import BODY_TOO_LARGE, PayloadTooLarge, app_error_to_problem, internal_error_response
from app.core.logging import request_id_var
from app.core.metrics import Metrics

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("app.access")

REQUEST_ID_HEADER = "x-request-id"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Probes hit these every few seconds; their access lines go to DEBUG so they do not drown the log.
_QUIET_PATHS = frozenset({"/livez", "/readyz", "/health", "/metrics"})


class RequestContextMiddleware:
    """Gives each request an id (the client's X-Request-ID if sane), echoes it, logs one JSON access line, counts it.

    It also answers any exception no handler mapped with a 500 problem (logged here once, with the request id).
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        request_id = incoming if _VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        status = 500
        response_started = False
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (REQUEST_ID_HEADER.encode(), request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("unhandled error")
            if response_started:
                raise
            await internal_error_response(Request(scope, receive))(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "unmatched")  # the template, so ids do not explode labels
            self.metrics.http_requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.http_latency.labels(scope["method"], route).observe(elapsed)
            access_logger.log(
                logging.DEBUG if scope["path"] in _QUIET_PATHS else logging.INFO,
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "durationMs": round(elapsed * 1000, 1),
                    "client": (scope.get("client") or ("-",))[0],
                    "apiKeyName": scope.get("state", {}).get("api_key_name"),
                },
            )
            request_id_var.reset(token)


class BodySizeLimitMiddleware:
    """Answers 413 (problem+json) to a body over `max_bytes`, declared by Content-Length or streamed in chunks.

    The body is read here, up to the limit, and replayed to the app: the limit is small (1 MiB by default) and the
    JSON routes read whole bodies anyway. FastAPI's own `max_body_size` was not used because it answers a declared
    oversize in plain text, outside the app's error handlers.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        buffered: list[Message] = []
        size = 0
        while True:
            message = await receive()
            buffered.append(message)
            if message["type"] != "http.request":
                break  # the client went away; let the app see it
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return buffered.pop(0) if buffered else await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send) -> None:
        response = app_error_to_problem(Request(scope, receive), PayloadTooLarge(BODY_TOO_LARGE))
        await response(scope, receive, send)
