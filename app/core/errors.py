"""Every error the API can answer, and the one place that turns exceptions into application/problem+json (RFC 9457).

Routers and services raise `AppError` subclasses (or let Novita/Valkey errors through); `install_exception_handlers`
maps them all, so no route builds an error body by hand and bad input never becomes a 500.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.deps import services_of
from app.core.logging import SecretRedactor, request_id_var

PROBLEM_JSON = "application/problem+json"
BODY_TOO_LARGE = "request body too large"
logger = logging.getLogger(__name__)


class AppError(Exception):
    """An error with a known HTTP meaning; `detail` is shown to the client, so it must hold no secret."""

    status: int = 500  # a class default; UpstreamError sets it per instance
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal Server Error"

    def __init__(self, detail: str, *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra or {}

    def headers(self) -> dict[str, str]:
        """Extra response headers (e.g. Retry-After)."""
        return {}


class NotFound(AppError):
    """The resource does not exist (404)."""

    status, code, title = 404, "not_found", "Not Found"


class Conflict(AppError):
    """The request conflicts with the resource's current state (409)."""

    status, code, title = 409, "conflict", "Conflict"


class ValidationFailed(AppError):
    """A value the schema accepted is still wrong (422); `field` is its path, e.g. `body.gpuCount`."""

    status, code, title = 422, "validation_failed", "Unprocessable Content"

    def __init__(self, detail: str, *, field: str) -> None:
        super().__init__(detail, extra={"errors": [{"field": field, "message": detail}]})
        self.field = field


class Unauthorized(AppError):
    """No or a wrong API key (401)."""

    status, code, title = 401, "unauthorized", "Unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'APIKey header="X-API-Key", Bearer'}


class Forbidden(AppError):
    """The key is valid but its scope does not cover the operation (403); `detail` names the scope needed."""

    status, code, title = 403, "forbidden", "Forbidden"


class PayloadTooLarge(AppError):
    """The request body is larger than the configured limit (413)."""

    status, code, title = 413, "payload_too_large", "Content Too Large"


class RateLimited(AppError):
    """Too many requests (429); the client should wait `retry_after` seconds."""

    status, code, title = 429, "rate_limited", "Too Many Requests"

    def __init__(self, detail: str, *, retry_after: float | None = None, reason: str | None = None) -> None:
        super().__init__(detail, extra={"reason": reason} if reason else None)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, round(self.retry_after)))} if self.retry_after is not None else {}


class ServiceUnavailable(AppError):
    """A dependency of ours (Valkey) is down; nothing was accepted (503)."""

    status, code, title = 503, "service_unavailable", "Service Unavailable"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


class UpstreamError(AppError):
    """Novita failed or refused (502, 503 or 504); `reason` is Novita's own error name when it gave one."""

    code, title = "upstream_error", "Upstream Error"

    def __init__(self, detail: str, *, status: int = 502, reason: str | None = None) -> None:
        if status not in (502, 503, 504):
            raise ValueError("an upstream error answers 502, 503 or 504")
        super().__init__(detail, extra={"reason": reason} if reason else None)
        self.status = status

    def headers(self) -> dict[str, str]:
        # 503: no capacity or the circuit breaker is open; both may clear within seconds.
        return {"Retry-After": "5"} if self.status == 503 else {}


class UpstreamRejected(AppError):
    """Novita rejected the content of what the client asked for (422), with Novita's reason."""

    status, code, title = 422, "upstream_rejected", "Unprocessable Content"

    def __init__(self, detail: str, *, reason: str | None = None) -> None:
        super().__init__(detail, extra={"reason": reason} if reason else None)


def problem_response(
    request: Request,
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """Build one problem+json answer; every error body of the API comes from here."""
    redact = _redactor(request)
    body: dict[str, Any] = {
        "type": f"/problems/{code}",
        "title": title,
        "status": status,
        "detail": redact(detail),
        "instance": redact(request.url.path),  # a client may put its key in the path; echo it masked
    }
    request_id = request_id_var.get()
    if request_id:
        body["requestId"] = request_id
    body.update(extra or {})
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _redactor(request: Request) -> Callable[[str], str]:
    """The app's secret redactor; a no-op before the container exists (nothing secret is known then)."""
    services = services_of(request.app) if "app" in request.scope else None
    return services.get(SecretRedactor) if services is not None else str


def app_error_to_problem(request: Request, error: AppError) -> JSONResponse:
    """Render an `AppError`."""
    return problem_response(
        request,
        status=error.status,
        code=error.code,
        title=error.title,
        detail=error.detail,
        extra=error.extra,
        headers=error.headers(),
    )


# Turns an exception of an outside system's client (Novita's) into what our client should see.
UpstreamTranslator = Callable[[Any], AppError]


def install_exception_handlers(app: FastAPI, upstream: dict[type[Exception], UpstreamTranslator]) -> None:
    """Map every known exception a request can raise to problem+json.

    `upstream` maps each outside client's error base class to its translator (`app.novita.problems`), so this module,
    at the bottom of the app, renders every problem without knowing the clients above it.

    Unexpected exceptions are caught by `RequestContextMiddleware` (app/core/middleware.py), which logs them once with
    the request id and answers `internal_error_response`; a handler for `Exception` here would let Starlette re-raise
    them into uvicorn's log a second time.
    """

    @app.exception_handler(AppError)
    async def _app_error(request: Request, error: AppError) -> JSONResponse:
        return app_error_to_problem(request, error)

    for error_type, translate in upstream.items():
        app.add_exception_handler(error_type, _upstream_handler(translate))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        # Input values are left out on purpose: they may hold secrets (envs, registry passwords).
        errors = [
            {"field": ".".join(str(part) for part in item["loc"]), "message": item["msg"]} for item in error.errors()
        ]
        fields = ", ".join(entry["field"] for entry in errors)
        return problem_response(
            request,
            status=422,
            code="validation_failed",
            title="Unprocessable Content",
            detail=f"invalid request: {fields}",
            extra={"errors": errors},
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        title = {400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}.get(error.status_code, "HTTP Error")
        return problem_response(
            request,
            status=error.status_code,
            code=title.lower().replace(" ", "_"),
            title=title,
            detail=str(error.detail),
            headers=dict(error.headers or {}),
        )

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def _valkey_down(request: Request, error: Exception) -> JSONResponse:
        logger.warning("valkey unavailable during request", extra={"error": type(error).__name__})
        return app_error_to_problem(request, ServiceUnavailable("Valkey (state store) is unavailable; retry later"))


def _upstream_handler(translate: UpstreamTranslator) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handle(request: Request, error: Exception) -> JSONResponse:
        return app_error_to_problem(request, translate(error))

    return handle


def internal_error_response(request: Request) -> JSONResponse:
    """The answer to an unexpected exception: 500 without details (they are in the log, under the request id)."""
    return problem_response(
        request,
        status=500,
        code="internal_error",
        title="Internal Server Error",
        detail="unexpected error; see the server logs with this request id",
    )
