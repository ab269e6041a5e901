"""Make `/openapi.json` describe what the API really answers, so generated clients (and the fuzzer) can rely on it.

The routes declare what is specific to them, and FastAPI emits it, however the routers are included:
- security: `app.access.auth.authenticate` takes its key through FastAPI security schemes, so every operation
  behind it lists `ApiKeyHeader` and `BearerToken`;
- the answers of the shared layers: routers behind the key use `AUTHENTICATED_RESPONSES` (401, 403 naming the scope
  needed, 429 and 503 with `Retry-After`), those that call Novita synchronously add `NOVITA_RESPONSES` (502, 504), and each operation adds
  its own 404/409 and the `Location` of a 202 (`accepted_response`).
This module then completes the generated document once, from each operation's shape alone:
- every operation may answer 500; those with parameters or a body 422; those with a body 400 (undecodable) and
  413 (body limit); those with a path parameter 404;
- every error answer without a declared body is `application/problem+json` with the `Problem` schema
  (app/core/errors.py), which replaces FastAPI's JSON 422 shape that the app never sends;
- `/livez`, answered before routing by `app.health.liveness`, is added as the path it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

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
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer", "minimum": 1}}}
_LOCATION = {
    "Location": {"description": "the job carrying out the request: `/api/jobs/{jobId}`", "schema": {"type": "string"}}
}


# What FastAPI takes as an operation's `responses`: status -> OpenAPI response object.
Responses = dict[int | str, dict[str, Any]]


def problem(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    """An error answer with the Problem body, optionally with `Retry-After`."""
    response: dict[str, Any] = {"description": description, "content": {PROBLEM_JSON: {"schema": _PROBLEM_REF}}}
    if retry_after:
        response["headers"] = _RETRY_AFTER
    return response


AUTHENTICATED_RESPONSES: Responses = {
    401: problem("missing or invalid API key"),
    403: problem("the API key's scope does not cover this operation: `detail` names the scope needed"),
    429: problem("the rate limit of this API key (or Novita's) is used up", retry_after=True),
    503: problem("Valkey or Novita unavailable: nothing was accepted", retry_after=True),
}
NOVITA_RESPONSES: dict[int | str, dict[str, Any]] = {
    502: problem("Novita failed or refused our request (`reason` is Novita's)"),
    504: problem("Novita did not answer in time"),
}


def accepted_response(description: str) -> dict[int | str, dict[str, Any]]:
    """The 202 of a queued operation, with its `Location` header."""
    return {202: {"description": description, "headers": _LOCATION}}


_ALWAYS = {"500": "unexpected error (details only in the server log, under the request id)"}
_WITH_INPUT = {"422": "invalid parameters or body: `errors` names each field"}
# Invalid JSON is a 422 like any invalid body; bytes that are not text at all are a 400.
_WITH_BODY = {"400": "body is not decodable (not UTF-8 text)", "413": "request body over the size limit"}
_WITH_PATH_PARAMETERS = {"404": "nothing with this id"}


def install_openapi(app: FastAPI, extra_paths: dict[str, Any]) -> None:
    """Replace `app.openapi` with a version that completes the generated document (built once).

    `extra_paths` documents what is answered before routing (FastAPI cannot see it), e.g. `/livez`.
    """
    generate: Callable[[], OpenApiDocument] = app.openapi

    def openapi() -> OpenApiDocument:
        if app.openapi_schema is None:
            complete_document(generate(), extra_paths)  # FastAPI caches it in app.openapi_schema; completed in place
        return app.openapi_schema  # type: ignore[return-value]  # set by generate()

    app.openapi = openapi  # type: ignore[method-assign]


def complete_document(document: OpenApiDocument, extra_paths: dict[str, Any]) -> None:
    """Add the answers every operation of its shape can give, the Problem body, and `extra_paths`."""
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 shape: the app answers Problem
        schemas.pop(unused, None)
    paths = document.setdefault("paths", {})
    for operations in paths.values():
        for operation in operations.values():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            wanted = dict(_ALWAYS)
            if operation.get("parameters") or operation.get("requestBody"):
                wanted.update(_WITH_INPUT)
            if operation.get("requestBody"):
                wanted.update(_WITH_BODY)
            if any(parameter.get("in") == "path" for parameter in operation.get("parameters", [])):
                wanted.update(_WITH_PATH_PARAMETERS)
            for status, description in wanted.items():
                responses.setdefault(status, {"description": description})
            for status, response in responses.items():
                # An error answer that declares no body of its own (FastAPI's 422 body is not what we send).
                if status.isdigit() and int(status) >= 400 and (status == "422" or "content" not in response):
                    response["content"] = {PROBLEM_JSON: {"schema": _PROBLEM_REF}}
    paths.update(extra_paths)
