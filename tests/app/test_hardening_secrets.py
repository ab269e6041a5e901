"""Known secrets driven through the running app must never come back out: not in a log line, a response body or
header, `/health`, `/readyz` or `/metrics`.

The app runs over real HTTP on a password-protected TLS redis-server (the password is in `REDIS_URL`), against the
fake Novita with its key, with two client keys. The test goes through success paths (create, watch, list, act) and
error paths (missing, wrong and misplaced keys, Novita errors that echo our key, a Novita timeout, validation errors,
Valkey down), captures everything the app emits, then scans it all for every secret value.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx

from app.core.logging import JsonFormatter
from tests.app.conftest import ApiServer, StartServer
from tests.app.instances_client import create_body, run_action, wait_for_job
from tests.fakes.fixtures import FakeNovitaHandle
from tests.fixtures_redis import RedisServer

ALPHA_KEY = "alpha-client-key-5b0e8f1d2c"
BRAVO_KEY = "bravo-client-key-93a7c4e6f0"
SECRET_ENV_VALUE = "instance-env-secret-4d1f9a"


@dataclass
class Capture:
    """Everything the app sent out during the test."""

    log: io.StringIO = field(default_factory=io.StringIO)
    answers: list[httpx.Response] = field(default_factory=list)

    def record(self, response: httpx.Response) -> httpx.Response:
        self.answers.append(response)
        return response

    def texts(self) -> Iterator[tuple[str, str]]:
        """(where, text) of every log line, body and header captured."""
        for number, line in enumerate(self.log.getvalue().splitlines(), start=1):
            yield f"log line {number}", line
        for response in self.answers:
            where = f"{response.request.method} {response.request.url.path} -> {response.status_code}"
            yield f"{where} body", response.text
            for name, value in response.headers.items():
                yield f"{where} header {name}", value


def _secrets(novita: FakeNovitaHandle, redis_tls: RedisServer) -> dict[str, str]:
    assert redis_tls.password is not None
    return {
        "Novita API key": novita.api_key,
        "Valkey password": redis_tls.password,
        "Valkey URL": redis_tls.url,
        "client key alpha": ALPHA_KEY,
        "client key bravo": BRAVO_KEY,
        "secret env value": SECRET_ENV_VALUE,
    }


@contextmanager
def _app_log_into(buffer: io.StringIO) -> Iterator[None]:
    """Point the app's JSON log handler (installed when the app was built) at `buffer` for a while."""
    handler = next(h for h in logging.getLogger().handlers if isinstance(h.formatter, JsonFormatter))
    previous = handler.setStream(buffer)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        handler.setStream(previous)  # type: ignore[attr-defined]


def test_no_secret_leaves_the_app(
    api_server_factory: StartServer,
    fake_novita: FakeNovitaHandle,
    redis_tls_server: RedisServer,
) -> None:
    secrets = _secrets(fake_novita, redis_tls_server)
    server: ApiServer = api_server_factory(
        wait_ready=False,
        redis_url=redis_tls_server.url,
        redis_ca_cert=redis_tls_server.ca_path,
        api_keys=f"alpha:{ALPHA_KEY},bravo:{BRAVO_KEY}",
        novita_timeout_seconds=0.5,
        novita_max_attempts=1,
        novita_breaker_failure_threshold=50,  # keep the breaker out of this test: each fault reaches the fake
        log_level="DEBUG",  # the most talkative level must not leak either
    )
    capture = Capture()
    with _app_log_into(capture.log):
        server.wait_ready()
        _drive(server, fake_novita, redis_tls_server, capture)

    scanned = list(capture.texts())
    assert len(scanned) > 100 and any("app.access" in text for _, text in scanned), "nothing was captured"
    leaks = [
        f"{name} in {where}: {text[:300]}"
        for where, text in scanned
        for name, secret in secrets.items()
        if secret in text
    ]
    assert not leaks, "\n".join(leaks)


def _forget_cache(redis_tls: RedisServer) -> None:
    with redis_tls.client() as valkey:
        cached = [key for key in valkey.scan_iter("ngpu:*") if "cache" in key]
        if cached:
            valkey.delete(*cached)


def _drive(server: ApiServer, novita: FakeNovitaHandle, redis_tls: RedisServer, capture: Capture) -> None:
    """Success and error paths; every answer is recorded for the scan."""
    rec = capture.record
    base = server.base_url
    with (
        httpx.Client(base_url=base, headers={"X-API-Key": ALPHA_KEY}, timeout=15) as alpha,
        httpx.Client(base_url=base, headers={"Authorization": f"Bearer {BRAVO_KEY}"}, timeout=15) as bravo,
        httpx.Client(base_url=base, timeout=15) as anonymous,
    ):
        # Success: create with a secret env value, watch the job, list, show, stop.
        body = create_body(envs=[{"key": "HF_TOKEN", "value": SECRET_ENV_VALUE, "secret": True}])
        accepted = rec(alpha.post("/api/instances", json=body, headers={"Idempotency-Key": "secret-scan-1"}))
        assert accepted.status_code == 202, accepted.text
        instance_id, job_id = accepted.json()["instance"]["id"], accepted.json()["jobId"]
        assert wait_for_job(alpha, job_id)["state"] == "succeeded"
        for path in (
            f"/api/jobs/{job_id}",
            "/api/jobs/dead-letters",
            "/api/instances",
            f"/api/instances/{instance_id}",
            "/api/products",
            "/api/regions",
            "/health",
            "/readyz",
            "/livez",
            "/metrics",
        ):
            assert rec(bravo.get(path)).status_code == 200, path
        assert run_action(alpha, instance_id, "stop")["state"] == "succeeded"
        rec(alpha.post(f"/api/instances/{instance_id}/stop"))  # 409: already stopped

        # Authentication errors, including secrets sent where they do not belong.
        novita_key = novita.api_key
        for headers in (
            {},
            {"X-API-Key": novita_key},
            {"Authorization": f"Bearer {redis_tls.password}"},
            {"X-API-Key": ALPHA_KEY[:-1]},
            {"X-API-Key": ALPHA_KEY + "x"},
        ):
            assert rec(anonymous.get("/api/instances", headers=headers)).status_code == 401

        # Validation errors whose invalid input is a secret.
        for bad in (
            create_body(name=ALPHA_KEY + "!"),
            create_body(billingMode=novita_key),
            create_body(imageUrl=f"redis {redis_tls.password}"),
            {"name": BRAVO_KEY, "extra": novita_key},
        ):
            assert rec(alpha.post("/api/instances", json=bad)).status_code == 422
        assert rec(alpha.get("/api/products", params={"gpuNum": novita_key})).status_code == 422
        assert rec(alpha.get(f"/api/jobs/{ALPHA_KEY}!")).status_code == 422
        assert rec(alpha.get(f"/api/jobs/{ALPHA_KEY}")).status_code == 404  # the detail names the id it looked for
        assert (
            rec(
                alpha.post(
                    "/api/instances",
                    content=f'{{"name": "{novita_key}"'.encode(),
                    headers={"Content-Type": "application/json"},
                )
            ).status_code
            == 422
        )

        # Novita errors that echo our key back (in JSON, in HTML), a server error, and a timeout.
        echo = f"invalid token Bearer {novita_key} for key {novita_key}"
        _forget_cache(redis_tls)  # the catalogue was cached by the success path; these calls must reach Novita
        novita.add_faults(
            {"path": "/products", "kind": "error", "status": 401, "reason": "FAILED_TO_AUTH", "message": echo},
            {
                "path": "/clusters",
                "kind": "error",
                "status": 500,
                "contentType": "text/html",
                "body": f"<html><body>upstream said {novita_key}</body></html>",
            },
        )
        assert rec(alpha.get("/api/products", params={"gpuName": "H100"})).status_code == 502
        assert rec(alpha.get("/api/regions")).status_code == 502
        novita.clear_faults()
        novita.add_faults(
            {"path": "/gpu/instances", "kind": "server_error", "status": 500, "message": echo, "count": None}
        )
        rec(alpha.get("/api/instances"))  # answered from our records only, flagged novitaSynced=false
        novita.clear_faults()
        novita.add_faults({"path": "/clusters", "kind": "timeout", "delaySeconds": 2})
        assert rec(alpha.get("/api/regions")).status_code == 504
        novita.clear_faults()
        rec(alpha.get("/health"))  # dev health makes a live Novita call

        # Valkey down: health, readiness and the API's 503s must not show the URL or its password.
        redis_tls.stop()
        try:
            server.wait_until("/readyz", 503, timeout=10)
            for path in ("/health", "/readyz", "/livez", "/metrics", "/api/instances", f"/api/jobs/{job_id}"):
                rec(alpha.get(path))
            rec(alpha.post("/api/instances", json=create_body(name="during-outage")))
        finally:
            redis_tls.start()
        server.wait_ready()
        rec(alpha.get("/metrics"))
