"""(e) Valkey outages: down at start keeps the container from ever turning healthy (with a readable reason);
down after start leaves it healthy (restarting the API cannot fix Valkey), /health says so, and it recovers alone."""

from __future__ import annotations

import json
import time

import pytest

from tests.e2e.harness import status_or_none, wait_for
from tests.infra.harness import TEST_SECRETS

pytestmark = pytest.mark.e2e

# Longer than the probe's kill window (3 failures x 3 s interval) plus Docker's marking, so a wrong kill would show.
OBSERVE_SECONDS = 15


def observe_health(api, seconds: float) -> set[str]:
    """Every Docker health status seen during `seconds`."""
    seen: set[str] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen.add(api.health())
        time.sleep(0.2)
    return seen


def test_valkey_down_at_start_never_healthy_with_a_readable_reason(deploy):
    deployment = deploy("prod", valkey_running=False, wait_healthy=False)
    api = deployment.api
    wait_for("/livez to answer", lambda: status_or_none("GET", f"{api.api_url}/livez", timeout=1) == 200, 30)

    seen = observe_health(api, OBSERVE_SECONDS)
    assert "healthy" not in seen, seen
    assert api.restart_count() == 0, "the probe must never kill an app that was never ready"
    assert api.get("/livez")[1] == {"status": "ok", "readyOnce": False}
    status, body = api.get("/readyz")
    assert status == 503 and "Valkey not reachable" in body["reason"], body
    assert any("not ready yet" in line for line in api.health_log()), api.health_log()
    logs = api.logs()
    reasons = [
        entry
        for entry in map(_json_or_none, logs.splitlines())
        if entry and "valkey not reachable" in entry.get("message", "")
    ]
    print("reason in the logs:", reasons[:1])
    assert reasons, logs[-2000:]
    assert f"127.0.0.1:{deployment.valkey_port}" in reasons[-1]["error"]  # names what it could not reach
    assert TEST_SECRETS["novitaApiKey"] not in logs

    # Once Valkey exists, the same container turns ready and healthy by itself.
    deployment.start_valkey()
    api.wait_ready(timeout=60)
    api.wait_health("healthy", timeout=60)
    assert api.restart_count() == 0


def _json_or_none(line: str) -> dict | None:
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def test_valkey_down_after_start_stays_healthy_and_recovers(deploy):
    deployment = deploy("prod")
    api = deployment.api
    deployment.stop_valkey()

    seen = observe_health(api, OBSERVE_SECONDS)
    assert seen == {"healthy"}, seen
    assert api.restart_count() == 0
    status, body = api.get("/health")
    assert status == 503 and body["services"]["redis"] == "down", body
    assert api.get("/readyz")[0] == 503

    deployment.start_valkey()
    wait_for(
        "/health to report redis up again",
        lambda: (answer := api.get("/health"))[0] == 200 and answer[1]["services"]["redis"] == "up",
        60,
    )
    assert api.health() == "healthy" and api.restart_count() == 0
