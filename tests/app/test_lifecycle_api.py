"""The lifecycle automations inside the running app, over real HTTP: the heartbeat endpoint, idle auto-stop with a
signed webhook, and records rebuilt by reconciliation after Valkey lost them. Timings are shortened by settings."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from tests.app.conftest import ApiServer, StartServer
from tests.app.instances_client import create_running
from tests.app.lifecycle_helpers import WebhookReceiver
from tests.fakes.fixtures import FakeNovitaHandle
from tests.fixtures_redis import RedisServer

FAST_LIFECYCLE: dict[str, Any] = {
    "lifecycle_tick_seconds": 0.05,
    "cost_guard_interval_seconds": 0.1,
    "reconcile_interval_seconds": 0.2,
    "webhook_delivery_interval_seconds": 0.1,
}
SECRET = "whsec_" + base64.b64encode(b"api-test-signing-key-5f1c2a0d9e8b").decode()


def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll `check` until it returns something truthy; fail with its last value otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s; last value: {value!r}")
        time.sleep(0.05)


def test_start_up_reconciles_once_not_again_on_the_first_tick(
    api_server_factory: StartServer, fake_novita: FakeNovitaHandle
) -> None:
    api_server_factory(lifecycle_tick_seconds=0.1, reconcile_interval_seconds=60)
    time.sleep(1.0)  # ten scheduler ticks

    assert fake_novita.call_count("GET", "/gpu/instances") == 1


def test_heartbeat_answers_for_known_instances_only(api_server: ApiServer) -> None:
    with api_server.client() as client:
        instance = create_running(client)
        beat = client.post(f"/api/instances/{instance['id']}/heartbeat")
        assert beat.status_code == 200, beat.text
        assert beat.json()["instanceId"] == instance["id"] and beat.json()["lastUsedAt"] > 0
        missing = client.post("/api/instances/0123456789abcdef/heartbeat")
        assert missing.status_code == 404
        assert (
            client.post(f"/api/instances/{instance['id']}/heartbeat", headers={"X-API-Key": "wrong"}).status_code == 401
        )


def test_an_idle_instance_is_stopped_and_the_owner_told(
    api_server_factory: StartServer, fake_novita: FakeNovitaHandle, webhook_receiver: WebhookReceiver
) -> None:
    server = api_server_factory(
        **FAST_LIFECYCLE,
        auto_stop_idle_seconds=1.0,
        auto_stop_startup_grace_seconds=3.0,
        webhook_url=webhook_receiver.url,
        webhook_secret=SECRET,
    )
    with server.client() as client:
        busy = create_running(client, name="busy")
        assert client.post(f"/api/instances/{busy['id']}/heartbeat").status_code == 200
        idle = create_running(client, name="idle")

        def idle_one_stopped() -> list[dict[str, Any]]:
            # The busy one keeps beating while we wait; the idle one says nothing.
            assert client.post(f"/api/instances/{busy['id']}/heartbeat").status_code == 200
            return [body for body in webhook_receiver.bodies() if body["type"] == "instance.auto_stopped"]

        stopped = eventually(idle_one_stopped, timeout=15.0)
        assert [body["instanceId"] for body in stopped] == [idle["id"]]
        assert fake_novita.instances(name=busy["upstreamName"])[0]["status"] == "running"
        assert fake_novita.call_count("POST", "/gpu/instance/stop") == 1
        events = [e["action"] for e in client.get(f"/api/instances/{idle['id']}").json()["events"]]
        assert "auto_stop" in events
    received = next(r for r in webhook_receiver.received if b"instance.auto_stopped" in r.body)
    # What a receiver does: the Standard Webhooks library checks the signature and the timestamp's age.
    assert Webhook(SECRET).verify(received.body, received.headers)["type"] == "instance.auto_stopped"


def test_records_lost_with_valkey_come_back_from_novita(
    api_server_factory: StartServer, redis_server: RedisServer
) -> None:
    server = api_server_factory(**FAST_LIFECYCLE)
    with server.client() as client:
        instance = create_running(client, name="survivor")
        redis_server.flushall()  # Valkey lost everything under the running app

        def restored() -> httpx.Response | None:
            response = client.get(f"/api/instances/{instance['id']}")
            return response if response.status_code == 200 else None

        back = eventually(restored).json()
        assert back["novitaInstanceId"] == instance["novitaInstanceId"] and back["state"] == "running"
        assert back["events"][-1]["action"] == "rebuilt"
