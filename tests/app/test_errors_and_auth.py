"""Over real HTTP: API-key auth, problem+json for every error class, body limit, request ids, no secret in logs."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Iterator

import httpx
from fastapi import Depends

from app.access.auth import authenticate
from app.core.logging import JsonFormatter
from tests.app.conftest import ApiServer, StartServer
from tests.fakes.fixtures import FakeNovitaHandle

PROBLEM = "application/problem+json"


def test_api_routes_need_a_valid_key_in_either_header(api_server: ApiServer) -> None:
    with httpx.Client(base_url=api_server.base_url) as client:
        missing = client.get("/api/jobs/dead-letters")
        wrong = client.get("/api/jobs/dead-letters", headers={"X-API-Key": "wrong-key-0123456789"})
        by_header = client.get("/api/jobs/dead-letters", headers={"X-API-Key": api_server.api_key})
        by_bearer = client.get("/api/jobs/dead-letters", headers={"Authorization": f"Bearer {api_server.api_key}"})
        health = client.get("/health")
    for refused in (missing, wrong):
        assert refused.status_code == 401 and refused.headers["content-type"] == PROBLEM
        assert "WWW-Authenticate" in refused.headers
        assert refused.json()["title"] == "Unauthorized"
    assert "missing API key" in missing.json()["detail"] and wrong.json()["detail"] == "invalid API key"
    assert by_header.status_code == 200 and by_bearer.status_code == 200
    assert health.status_code == 200


def test_development_without_api_keys_is_open(api_server_factory: StartServer) -> None:
    server = api_server_factory(api_keys=None)
    with server.client(authenticated=False) as client:
        assert client.get("/api/jobs/dead-letters").status_code == 200


def test_errors_are_problem_json_with_the_request_id(api_server: ApiServer) -> None:
    with api_server.client() as client:
        unknown = client.get("/api/nothing-here", headers={"X-Request-ID": "trace-abc.123"})
        invalid = client.get("/api/jobs/dead-letters", params={"limit": 0})
        bad_id = client.get("/api/jobs/" + "x" * 200)

    assert unknown.status_code == 404 and unknown.headers["content-type"] == PROBLEM
    assert unknown.headers["x-request-id"] == "trace-abc.123"
    assert unknown.json()["requestId"] == "trace-abc.123" and unknown.json()["instance"] == "/api/nothing-here"

    assert invalid.status_code == 422 and invalid.headers["content-type"] == PROBLEM
    assert invalid.json()["errors"][0]["field"] == "query.limit"
    assert len(invalid.headers["x-request-id"]) == 32  # generated when the client sent none
    assert bad_id.status_code == 422 and bad_id.json()["errors"][0]["field"] == "path.job_id"


def test_unexpected_errors_are_500_without_details_and_secrets_stay_out_of_logs(
    api_server: ApiServer, fake_novita: FakeNovitaHandle
) -> None:
    novita_key = fake_novita.api_key
    log_handler = next(h for h in logging.getLogger().handlers if isinstance(h.formatter, JsonFormatter))
    captured = io.StringIO()
    previous_stream = log_handler.setStream(captured)  # type: ignore[attr-defined]

    async def leaky_bug() -> None:
        raise RuntimeError(f"bug while using {novita_key} and {api_server.api_key}")

    api_server.app.add_api_route(
        "/api/test-bug", leaky_bug, dependencies=[Depends(authenticate)]
    )  # a route with a bug that mentions secrets
    try:
        with api_server.client() as client:
            answer = client.get("/api/test-bug", headers={"X-Request-ID": "bug-1"})
        deadline = time.monotonic() + 5
        while '"app.access"' not in captured.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)  # the access line is written by the server thread just after the answer is sent
    finally:
        log_handler.setStream(previous_stream)  # type: ignore[attr-defined]
    assert answer.status_code == 500 and answer.headers["content-type"] == PROBLEM
    assert answer.json()["detail"] == "unexpected error; see the server logs with this request id"
    assert novita_key not in answer.text

    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    errors = [line for line in lines if line["level"] == "ERROR"]
    assert len(errors) == 1  # logged once, with the request id and the secrets masked
    assert errors[0]["requestId"] == "bug-1" and "RuntimeError: bug while using [REDACTED]" in errors[0]["exception"]
    access = [line for line in lines if line["logger"] == "app.access"]
    assert access and access[0]["status"] == 500 and access[0]["apiKeyName"] == "tests"
    assert novita_key not in captured.getvalue() and api_server.api_key not in captured.getvalue()


def test_request_body_over_the_limit_is_413(api_server_factory: StartServer) -> None:
    server = api_server_factory(max_request_body_bytes=1024)
    big = b'{"name": "' + b"x" * 4096 + b'"}'

    def chunks() -> Iterator[bytes]:
        yield from (big[i : i + 512] for i in range(0, len(big), 512))

    with server.client() as client:
        declared = client.post("/api/instances", content=big, headers={"Content-Type": "application/json"})
        streamed = client.post("/api/instances", content=chunks(), headers={"Content-Type": "application/json"})
    for refused in (declared, streamed):
        assert refused.status_code == 413 and refused.headers["content-type"] == PROBLEM
        assert refused.json()["detail"] == "request body too large"


def test_novita_failures_map_to_upstream_statuses(api_server: ApiServer, fake_novita: FakeNovitaHandle) -> None:
    fake_novita.add_faults({"path": "/products", "kind": "rate_limit", "retryAfter": 0, "count": None})
    with api_server.client() as client:
        limited = client.get("/api/products")
    fake_novita.clear_faults()
    fake_novita.add_faults(
        {"path": "/products", "kind": "server_error", "status": 500, "reason": "BOOM", "count": None}
    )
    with api_server.client() as client:
        failing = client.get("/api/products")
    assert limited.status_code == 429 and limited.headers["content-type"] == PROBLEM
    assert "Retry-After" in limited.headers and limited.json()["reason"] == "RATE_LIMIT_EXCEEDED"
    assert failing.status_code == 502 and failing.json()["reason"] == "BOOM"


def test_docs_follow_the_environment(api_server_factory: StartServer) -> None:
    development = api_server_factory()
    production = api_server_factory(app_env="production")
    with development.client() as dev, production.client() as prod:
        assert dev.get("/docs").status_code == 200
        assert prod.get("/docs").status_code == 404
        assert prod.get("/openapi.json").status_code == 200  # the API description stays published
        assert prod.get("/debug/block-loop", params={"seconds": 1}).status_code == 404  # no fault injection


def test_fault_injection_blocks_the_event_loop(api_server_factory: StartServer) -> None:
    server = api_server_factory(fault_injection=True)
    with server.client() as client:
        assert client.post("/debug/block-loop", params={"seconds": 0}).status_code == 422

    def block() -> None:
        with server.client() as client:
            client.post("/debug/block-loop", params={"seconds": 1.0})

    blocker = threading.Thread(target=block)
    blocker.start()
    time.sleep(0.2)
    started = time.monotonic()
    with server.client() as client:
        assert client.get("/livez").status_code == 200
    waited = time.monotonic() - started
    blocker.join()
    assert waited >= 0.5  # even the dependency-free endpoint could not answer while the loop was blocked
