"""Health endpoints over real HTTP: formats, Valkey outages and recovery, readiness at start, production mode."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.core.config import Settings
from app.core.redis import RedisManager
from app.health.novita import CHECK_KEY
from app.jobs.queue import JobQueue
from tests.app.conftest import ApiServer, StartServer, fast_settings
from tests.fakes.fixtures import FakeNovitaHandle
from tests.fixtures_redis import RedisServer
from tests.loopback import free_port

SEED_SERVICES = {"novitaApi", "jobQueue", "cache", "redis"}
REPO_ROOT = Path(__file__).resolve().parents[2]
_SETTING_NAMES = {name.upper() for name in Settings.model_fields}


def test_health_documents_have_the_agreed_format(api_server: ApiServer) -> None:
    with api_server.client(authenticated=False) as client:  # health needs no key
        livez, readyz, health = client.get("/livez"), client.get("/readyz"), client.get("/health")
        metrics = client.get("/metrics")

    assert livez.status_code == 200 and livez.json() == {"status": "ok", "readyOnce": True}
    assert readyz.status_code == 200 and readyz.json() == {"status": "ready"}
    assert health.status_code == 200
    body = health.json()
    assert set(body) == {"status", "services", "version", "uptimeSeconds", "queue", "reasons", "reconciliation"}
    assert body["status"] == "healthy"
    assert body["services"] == {name: "up" for name in SEED_SERVICES}
    assert body["version"] == "0.1.0" and body["uptimeSeconds"] >= 0
    assert body["queue"] == {"depth": 0, "pending": 0, "scheduled": 0, "dead": 0}
    assert body["reasons"] == {}

    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    for name in (
        "job_queue_depth",
        "job_queue_pending",
        "job_queue_dead_letters",
        "http_requests_total",
        "valkey_up 1.0",
        "novita_calls",
    ):
        assert name in metrics.text


def test_valkey_outage_makes_health_503_and_the_app_recovers_by_itself(
    api_server: ApiServer, redis_server: RedisServer
) -> None:
    redis_server.stop()
    try:
        health = api_server.wait_until("/health", 503, timeout=10)
        body = health.json()
        assert body["status"] == "unhealthy"
        assert body["services"]["redis"] == "down" and body["services"]["jobQueue"] == "down"
        assert body["services"]["cache"] == "down" and body["queue"] is None
        readyz = api_server.wait_until("/readyz", 503, timeout=10)
        assert readyz.json()["status"] == "not ready" and "Valkey unreachable" in readyz.json()["reason"]
        with api_server.client() as client:
            livez = client.get("/livez")  # the process itself is fine: the container must not be restarted
            accepted = client.get("/api/jobs/anything")
        assert livez.status_code == 200 and livez.json()["readyOnce"] is True
        assert accepted.status_code == 503 and accepted.headers["content-type"] == "application/problem+json"
    finally:
        redis_server.start()

    health = api_server.wait_until("/health", 200, timeout=15)  # no restart of the app
    assert health.json()["status"] == "healthy"
    api_server.wait_until("/readyz", 200, timeout=5)


def test_not_ready_until_valkey_answers_at_start(api_server_factory: StartServer, redis_server: RedisServer) -> None:
    redis_server.stop()
    try:
        server = api_server_factory(wait_ready=False)
        livez = server.wait_until("/livez", 200, timeout=5)  # served at once, before Valkey
        assert livez.json() == {"status": "ok", "readyOnce": False}
        readyz = server.wait_until("/readyz", 503, timeout=5)
        assert readyz.json()["reason"].startswith("starting: Valkey not reachable yet")
        assert server.wait_until("/health", 503, timeout=5).json()["status"] == "unhealthy"
        assert int(server.settings.pid_file.read_text()) == os.getpid()  # for the container probe
    finally:
        redis_server.start()
    server.wait_ready(timeout=15)
    with server.client() as client:
        assert client.get("/livez").json() == {"status": "ok", "readyOnce": True}


def test_shutdown_before_valkey_ever_answered_is_prompt(api_server_factory: StartServer) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}"  # a port nobody listens on
    server = api_server_factory(wait_ready=False, redis_url=nowhere)
    assert server.wait_until("/readyz", 503, timeout=5).json()["reason"].startswith("starting:")
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 5


def test_production_health_makes_no_live_novita_call(
    api_server_factory: StartServer, fake_novita: FakeNovitaHandle, redis_server: RedisServer
) -> None:
    server = _start_quiet_production_server(api_server_factory, redis_server)
    with server.client(authenticated=False) as client:
        calls_before = fake_novita.calls()
        answers = [client.get("/health") for _ in range(20)]
    assert all(a.status_code == 200 and a.json()["services"]["novitaApi"] == "up" for a in answers)
    assert fake_novita.calls() == calls_before


def test_a_novita_outage_is_reported_with_its_reason_and_the_recovery_too(
    api_server_factory: StartServer, fake_novita: FakeNovitaHandle
) -> None:
    server = api_server_factory(novita_health_check_interval_seconds=0.2)
    # Every call fails: the status sync's listings too, or the check would take their success as Novita's answer.
    fake_novita.add_faults({"path": "*", "kind": "server_error", "status": 503, "count": None})
    down = _wait_for_novita(server, "down")
    assert down.status_code == 200  # Novita is not required for the API to accept work
    body = down.json()
    assert body["status"] == "degraded" and body["services"]["redis"] == "up"
    assert body["reasons"]["novitaApi"].startswith("Novita call failed (UNKNOWN) (seen by ")

    fake_novita.clear_faults()
    up = _wait_for_novita(server, "up")
    assert up.json()["status"] == "healthy" and up.json()["reasons"] == {}


@pytest.mark.parametrize(
    ("status", "reason"),
    [(401, "FAILED_TO_AUTH"), (403, "FORBIDDEN"), (400, "INVALID_USER_TOKEN"), (400, "BANNED_USER")],
)
def test_a_refused_key_turns_novita_down_on_every_replica_without_traffic(
    api_server_factory: StartServer, fake_novita: FakeNovitaHandle, status: int, reason: str
) -> None:
    """Two production replicas that serve no request learn from the shared background check."""
    # The status sync (every 0.2 s in tests) would list Novita too: slow it down so every call counted is the check's.
    replicas = [
        api_server_factory(
            app_env="production", novita_health_check_interval_seconds=0.3, reconcile_interval_seconds=3600
        )
        for _ in range(2)
    ]
    fake_novita.add_faults(
        {
            "path": "*",
            "kind": "error",
            "status": status,
            "reason": reason,
            "message": "failed to authenticate API key",
            "count": None,
        }
    )
    for replica in replicas:
        body = _wait_for_novita(replica, "down").json()
        assert body["status"] == "degraded"
        assert body["reasons"]["novitaApi"].startswith(f"Novita refused our API key ({reason}) (seen by ")
        assert replica.settings.novita_api_key.get_secret_value() not in json.dumps(body)
        with replica.client(authenticated=False) as client:
            assert client.get("/livez").status_code == 200  # the container probe does not fail for Novita

    # One check per interval between both replicas, however often /health is asked.
    calls_before = sum(fake_novita.calls().values())
    started = time.monotonic()
    for _ in range(10):
        for replica in replicas:
            with replica.client(authenticated=False) as client:
                assert client.get("/health").json()["services"]["novitaApi"] == "down"
        time.sleep(0.1)
    elapsed = time.monotonic() - started
    assert sum(fake_novita.calls().values()) - calls_before <= elapsed / 0.3 + 2


def test_a_refused_key_seen_by_a_request_shows_at_once_and_health_calls_nothing(
    api_server_factory: StartServer, fake_novita: FakeNovitaHandle, redis_server: RedisServer
) -> None:
    # Nothing in the background calls Novita from here on: a successful listing landing between the refused request
    # and the read would otherwise be the newest evidence (and count as a call).
    server = _start_quiet_production_server(api_server_factory, redis_server)
    fake_novita.add_faults(
        {"path": "/products", "kind": "error", "status": 401, "reason": "FAILED_TO_AUTH", "count": None}
    )
    with server.client() as client:
        assert client.get("/api/products").status_code == 502
        calls_before = fake_novita.calls()
        health = client.get("/health")
        assert fake_novita.calls() == calls_before
        assert health.json()["services"]["novitaApi"] == "down"
        assert (
            "refused our API key (FAILED_TO_AUTH) (seen by this replica's calls at "
            in health.json()["reasons"]["novitaApi"]
        )
        fake_novita.clear_faults()
        assert client.get("/api/products").status_code == 200  # a call that works again is the newest evidence
        assert client.get("/health").json()["services"]["novitaApi"] == "up"


def _start_quiet_production_server(api_server_factory: StartServer, redis_server: RedisServer) -> ApiServer:
    """A production server whose start-up Novita calls are over: the background check (next in a minute) has shared
    what it saw and the start-up reconciliation (next in an hour) has listed Novita, so Novita sees no call but ours."""
    server = api_server_factory(app_env="production", reconcile_interval_seconds=3600)
    deadline = time.monotonic() + 10
    with redis_server.client() as raw:
        while raw.get(CHECK_KEY) is None:
            assert time.monotonic() < deadline, "the background Novita check never ran"
            time.sleep(0.05)
    with server.client(authenticated=False) as client:
        while (client.get("/health").json()["reconciliation"] or {}).get("state") != "done":
            assert time.monotonic() < deadline, "the start-up reconciliation never finished"
            time.sleep(0.05)
    return server


def _wait_for_novita(server: ApiServer, state: str, timeout: float = 10.0) -> httpx.Response:
    """Poll /health until it reports `novitaApi` in `state`."""
    deadline = time.monotonic() + timeout
    with server.client(authenticated=False) as client:
        while True:
            health = client.get("/health")
            if health.json()["services"]["novitaApi"] == state:
                return health
            assert time.monotonic() < deadline, f"novitaApi never became {state}: {health.text}"
            time.sleep(0.05)


def _start_python_m_app(
    redis_server: RedisServer, fake_novita: FakeNovitaHandle, pid_file: Path, **extra: str
) -> tuple[subprocess.Popen, int]:
    """`python -m app` on a free loopback port, returned once /readyz answers 200."""
    redis_server.start()
    redis_server.flushall()
    fake_novita.reset()  # whatever an earlier test left on the shared fake (faults, instances)
    port = free_port()
    environment = {key: value for key, value in os.environ.items() if key.upper() not in _SETTING_NAMES}
    environment.update(
        {
            "REDIS_URL": redis_server.url,
            "NOVITA_API_KEY": fake_novita.api_key,
            "NOVITA_BASE_URL": fake_novita.base_url,
            "API_KEYS": "ci:0123456789abcdef0123",
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "PID_FILE": str(pid_file),
            "JOB_READ_BLOCK_SECONDS": "0.2",
            "SHUTDOWN_GRACE_SECONDS": "2",
            **extra,
        }
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "app"],
        env=environment,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process, port
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError("python -m app did not become ready")
        time.sleep(0.1)


def test_python_m_app_serves_writes_its_pid_and_drains_on_sigterm(
    redis_server: RedisServer, fake_novita: FakeNovitaHandle, tmp_path: Path
) -> None:
    """The real entry point: one command, the pid file for the container probe, a clean SIGTERM shutdown."""
    pid_file = tmp_path / "app.pid"
    process, _ = _start_python_m_app(redis_server, fake_novita, pid_file)
    try:
        deadline = time.monotonic() + 20
        assert int(pid_file.read_text()) == process.pid
        job_id = asyncio.run(_enqueue_unknown_job(redis_server.url))  # the worker reads it (and retries it)
        with redis_server.client() as raw:
            while not raw.xinfo_consumers("ngpu:jobs:stream", "workers"):
                assert time.monotonic() < deadline, "the worker never read the job"
                time.sleep(0.05)

        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean shutdown
    messages = [json.loads(line)["message"] for line in output.splitlines() if line.startswith("{")]
    assert messages.index("job worker stopped") < messages.index("stopped")  # the lifespan drained the worker
    assert not pid_file.exists()
    with redis_server.client() as raw:  # it left the consumer group tidy: nothing pending, no stale consumer
        assert raw.xinfo_consumers("ngpu:jobs:stream", "workers") == []
        assert (
            raw.hget(f"ngpu:job:{job_id}", "last_error")
            == "LookupError: no handler registered for job kind 'test.unknown'"
        )
    assert fake_novita.api_key not in output


async def _enqueue_unknown_job(redis_url: str) -> str:
    manager = RedisManager(fast_settings(redis_url))
    try:
        return (await JobQueue(manager).enqueue("test.unknown", {})).id
    finally:
        await manager.close()


def test_sigterm_reports_not_ready_while_still_serving_for_the_drain_time_then_stops(
    redis_server: RedisServer, fake_novita: FakeNovitaHandle, tmp_path: Path
) -> None:
    """Behind the edge proxy (SHUTDOWN_DRAIN_SECONDS > 0): the proxy sees /readyz 503 and takes the replica out
    while it still answers, and only then does the listener close."""
    process, port = _start_python_m_app(redis_server, fake_novita, tmp_path / "app.pid", SHUTDOWN_DRAIN_SECONDS="2")
    url = f"http://127.0.0.1:{port}"
    try:
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(0.3)
        readiness = httpx.get(f"{url}/readyz", timeout=1)
        assert (readiness.status_code, readiness.json()["reason"]) == (503, "shutting down")
        assert httpx.get(f"{url}/livez", timeout=1).status_code == 200
        products = httpx.get(f"{url}/api/products", headers={"X-API-Key": "0123456789abcdef0123"}, timeout=5)
        assert products.status_code == 200  # still serving requests that arrive during the drain
        assert time.monotonic() - signalled < 2, "the checks above took too long to prove anything"
        process.communicate(timeout=15)
        stopped_after = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode in (0, -signal.SIGTERM)
    assert stopped_after >= 2  # the listener stayed open for the whole drain
