"""Readiness over real HTTP: `running` on Novita is not `ready` until every exposed port answers (fake Novita's
port endpoints lead back to it on loopback)."""

from __future__ import annotations

import time

import httpx

from tests.app.conftest import StartServer
from tests.app.instances_client import create_instance, create_running, run_action, wait_for_job, wait_until_ready
from tests.fakes.fixtures import FakeNovitaHandle


def test_an_instance_is_ready_once_its_ports_answer_and_not_before(
    api_server_factory: StartServer, fake_novita: FakeNovitaHandle
) -> None:
    server = api_server_factory(readiness_retry_interval_seconds=0.1)
    with server.client() as client:
        instance = _running_with_silent_ports(
            client, fake_novita, name="probed", ports=[{"port": 8888, "type": "http"}, {"port": 22, "type": "tcp"}]
        )
        time.sleep(0.5)  # several probe rounds
        assert client.get(f"/api/instances/{instance['id']}").json()["readyAt"] is None

        fake_novita.set_state(instance["novitaInstanceId"], ports_answer=True)
        ready = wait_until_ready(client, instance["id"])

    assert ready["state"] == "running"
    assert [event["action"] for event in ready["events"]][-1] == "ready"


def test_readiness_gives_up_after_its_maximum_wait_and_says_why(
    api_server_factory: StartServer, fake_novita: FakeNovitaHandle
) -> None:
    server = api_server_factory(readiness_retry_interval_seconds=0.1, readiness_max_wait_seconds=0.5)
    with server.client() as client:
        instance = _running_with_silent_ports(client, fake_novita, name="silent")
        view = _wait_for_event(client, instance["id"], "readiness_gave_up")

    assert view["readyAt"] is None
    assert "not answering" in next(e for e in view["events"] if e["action"] == "readiness_gave_up")["detail"]


def test_a_stopped_instance_is_no_longer_ready(api_server_factory: StartServer) -> None:
    server = api_server_factory(readiness_retry_interval_seconds=0.1)
    with server.client() as client:
        instance = create_running(client, name="stopping")
        wait_until_ready(client, instance["id"])
        run_action(client, instance["id"], "stop")
        stopped = client.get(f"/api/instances/{instance['id']}").json()

    assert stopped["state"] == "stopped" and stopped["readyAt"] is None


def _running_with_silent_ports(client: httpx.Client, fake_novita: FakeNovitaHandle, **body: object) -> dict:
    """Create an instance whose ports do not answer yet, and bring it to `running` on Novita."""
    fake_novita.set_step_seconds(None)
    accepted = create_instance(client, **body)
    upstream_name = accepted["instance"]["upstreamName"]
    deadline = time.monotonic() + 10
    while not fake_novita.instances(name=upstream_name) and time.monotonic() < deadline:
        time.sleep(0.05)
    novita_id = fake_novita.instances(name=upstream_name)[0]["id"]
    fake_novita.set_state(novita_id, ports_answer=False)
    fake_novita.advance(novita_id, steps=3)
    assert wait_for_job(client, accepted["jobId"])["state"] == "succeeded"
    return client.get(f"/api/instances/{accepted['instance']['id']}").json()


def _wait_for_event(client: httpx.Client, instance_id: str, action: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    view: dict = {}
    while time.monotonic() < deadline:
        view = client.get(f"/api/instances/{instance_id}").json()
        if any(event["action"] == action for event in view["events"]):
            return view
        time.sleep(0.05)
    raise AssertionError(f"no {action!r} event within {timeout} s; last seen: {view}")
