"""Make `/openapi.json` describe what the API really answers, so clients (and the schema fuzzer) can rely on it.

FastAPI documents a JSON 422 shape the app never sends and none of the errors the shared layers add. This module
post-processes the generated document once:
- every error answer (4xx/5xx) is `application/problem+json` with the `Problem` schema (app/core/errors.py);
- every operation may answer 500; those with parameters or a body 422; those with a body 400 (undecodable) and
  413 (body limit); those with a path parameter 404;
- operations behind `require_api_key` declare the API-key security schemes and may answer 401, 429 (their rate
  limit or Novita's), 502/503/504 (Novita or Valkey down), the 429 and 503 with `Retry-After`;
- the health routes' non-JSON or non-200 answers (`/metrics` text, `/readyz` and `/health` 503).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from app.core.auth import require_api_key
from app.core.errors import PROBLEM_JSON

OpenApiDocument = dict[str, Any]

_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "description": "An error (RFC 9457). `errors` lists each invalid field of a 422; `reason` is Novita's reason.",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "requestId": {"type": "string"},
        "reason": {"type": ["string", "null"]},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}
SECURITY_SCHEMES = {
    "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "BearerToken": {"type": "http", "scheme": "bearer"},
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer", "minimum": 1}}}
_ALWAYS = {"500": "unexpected error (details only in the server log, under the request id)"}
_WITH_INPUT = {"422": "invalid parameters or body: `errors` names each field"}
_WITH_BODY = {"400": "body is not decodable JSON", "413": "request body over the size limit"}
_WITH_PATH_PARAMETERS = {"404": "nothing with this id"}
_AUTHENTICATED = {
    "401": "missing or invalid API key",
    "429": "rate limit of this API key, or Novita's, exceeded",
    "502": "Novita failed or refused our request",
    "503": "Valkey or Novita unavailable: nothing was accepted",
    "504": "Novita did not answer in time",
}
_HEALTH_STATUS = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}
# Routes of app/health whose answers are not the default JSON 200.
_EXTRA_RESPONSES: dict[tuple[str, str], dict[str, Any]] = {
    ("get", "/metrics"): {"200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {
        "type": "string"}}}}},
    ("get", "/readyz"): {"503": {"description": "not ready, with the reason", "content": {"application/json": {
        "schema": _HEALTH_STATUS}}}},
    ("get", "/health"): {"503": {"description": "Valkey or the job queue is down", "content": {"application/json": {
        "schema": _HEALTH_STATUS}}}},
}


def install_openapi(app: FastAPI) -> None:
    """Replace `app.openapi` with a version that documents errors, security and the health routes (built once)."""
    generate: Callable[[], OpenApiDocument] = app.openapi

    def openapi() -> OpenApiDocument:
        if app.openapi_schema is None:
            document = generate()  # FastAPI caches it in app.openapi_schema; completed in place below
            complete_document(document, _authenticated_operations(app))
        return app.openapi_schema  # type: ignore[return-value]  # set by generate()

    app.openapi = openapi  # type: ignore[method-assign]


def complete_document(document: OpenApiDocument, authenticated: set[tuple[str, str]]) -> None:
    """Add the error answers, security and health specifics to a generated document."""
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 shape: the app answers Problem
        schemas.pop(unused, None)
    components.setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)

    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            responses.update(_EXTRA_RESPONSES.get((method, path), {}))
            wanted = dict(_ALWAYS)
            if operation.get("parameters") or operation.get("requestBody"):
                wanted.update(_WITH_INPUT)
            if operation.get("requestBody"):
                wanted.update(_WITH_BODY)
            if any(parameter.get("in") == "path" for parameter in operation.get("parameters", [])):
                wanted.update(_WITH_PATH_PARAMETERS)
            if (method, path) in authenticated:
                wanted.update(_AUTHENTICATED)
                operation["security"] = [{name: []} for name in SECURITY_SCHEMES]
            for status, description in wanted.items():
                responses.setdefault(status, {"description": description})
            specific = _EXTRA_RESPONSES.get((method, path), {})
            for status, response in responses.items():
                if status.isdigit() and int(status) >= 400 and status not in specific:
                    _as_problem(status, response)


def _as_problem(status: str, response: dict[str, Any]) -> None:
    response["content"] = {PROBLEM_JSON: {"schema": _PROBLEM_REF}}
    if status in ("429", "503"):
        response["headers"] = {**_RETRY_AFTER, **response.get("headers", {})}


def _authenticated_operations(app: FastAPI) -> set[tuple[str, str]]:
    """(method, path) of every route that depends on `require_api_key`, directly or through its router."""
    operations: set[tuple[str, str]] = set()
    for route in app.routes:
        if isinstance(route, APIRoute) and _depends_on(route.dependant, require_api_key):
            operations.update((method.lower(), route.path_format) for method in route.methods)
    return operations


def _depends_on(dependant: Any, dependency: Callable[..., Any]) -> bool:
    return any(sub.call is dependency or _depends_on(sub, dependency) for sub in dependant.dependencies)
