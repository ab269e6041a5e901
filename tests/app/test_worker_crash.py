"""A worker killed mid-job (SIGKILL of the whole API process): the job still completes, exactly one instance exists.

The first API runs as a real child process (`python -m app`) so it can be killed without a chance to clean up; a
second API (in-process) on the same redis-server reclaims the unacknowledged job after the visibility timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.app.conftest import FAST_TIMINGS, StartServer
from tests.app.instances_client import CREATE_PATH, create_instance, wait_for_job
from tests.fakes.fixtures import TEST_STEP_SECONDS, FakeNovitaHandle
from tests.fixtures_redis import RedisServer
from tests.loopback import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
API_KEY = "crash-test-client-key-0123456789"


class ChildApi:
    """The API as a child process, with the test settings passed as environment variables."""

    def __init__(self, redis_url: str, novita: FakeNovitaHandle, directory: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        settings: dict[str, Any] = {
            **FAST_TIMINGS,
            "host": "127.0.0.1",
            "port": self.port,
            "redis_url": redis_url,
            "novita_api_key": novita.api_key,
            "novita_base_url": novita.base_url,
            "novita_timeout_seconds": 5.0,
            "api_keys": f"crash:{API_KEY}",
            "pid_file": directory / "child.pid",
            "instance_poll_interval_seconds": 0.2,
            "instance_provisioning_timeout_seconds": 30.0,
        }
        env = {key: value for key, value in os.environ.items() if not key.startswith(("REDIS_", "NOVITA_"))}
        env.update({name.upper(): str(value) for name, value in settings.items()})
        self.log_path = directory / "child.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"X-API-Key": API_KEY}, timeout=5.0)

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    pytest.fail(f"the API process exited: {self.log_path.read_text()[-2000:]}")
                try:
                    if client.get("/readyz").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
        pytest.fail(f"the API process did not become ready: {self.log_path.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL: no shutdown hook, no acknowledgement, nothing written after this instant."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture
def child_api(
    api_server_factory: StartServer, redis_server: RedisServer, fake_novita: FakeNovitaHandle, tmp_path: Path
) -> Iterator[ChildApi]:
    # Requesting api_server_factory first flushes Valkey and resets the fake for this test.
    child = ChildApi(redis_server.url, fake_novita, tmp_path)
    try:
        child.wait_ready()
        yield child
    finally:
        if child.process.poll() is None:
            child.kill()


def _wait_until(condition: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_killed_during_the_create_call_the_job_completes_with_one_instance(
    child_api: ChildApi, api_server_factory: StartServer, fake_novita: FakeNovitaHandle
) -> None:
    # Novita creates the instance at once but answers only after 3 s; the worker dies while waiting for the answer.
    fake_novita.add_faults({"path": CREATE_PATH, "kind": "lost_response", "delaySeconds": 3, "count": 1})
    with child_api.client() as client:
        accepted = create_instance(client, name="crashy")
    upstream_name = accepted["instance"]["upstreamName"]
    _wait_until(lambda: len(fake_novita.instances(name=upstream_name)) == 1, what="Novita to create the instance")
    child_api.kill()

    survivor = api_server_factory()  # another replica, same Valkey: reclaims the job after the visibility timeout
    with survivor.client() as client:
        job = wait_for_job(client, accepted["jobId"], timeout=30)
        instance = client.get(f"/api/instances/{accepted['instance']['id']}").json()

    assert job["state"] == "succeeded", job
    assert job["attempts"] >= 2  # the killed attempt and the one that finished
    assert instance["state"] == "running"
    assert [i["id"] for i in fake_novita.instances()] == [instance["novitaInstanceId"]]
    assert fake_novita.call_count("POST", CREATE_PATH) == 1  # found by its unique name, not created again
    assert "found_existing" in [e["action"] for e in instance["events"]]
    assert instance["pricePerHour"] not in (None, "0")  # priced from the catalogue though the offer's answer was lost


def test_killed_while_polling_the_job_completes(
    child_api: ChildApi, api_server_factory: StartServer, fake_novita: FakeNovitaHandle
) -> None:
    fake_novita.set_step_seconds(None)  # the instance waits in toCreate until we let it go on
    with child_api.client() as client:
        accepted = create_instance(client, name="polled")
        instance_path = f"/api/instances/{accepted['instance']['id']}"
        _wait_until(
            lambda: client.get(instance_path).json()["novitaInstanceId"] is not None,
            what="the record to get its Novita id",
        )
    child_api.kill()
    fake_novita.set_step_seconds(TEST_STEP_SECONDS)

    survivor = api_server_factory()
    with survivor.client() as client:
        job = wait_for_job(client, accepted["jobId"], timeout=30)
        instance = client.get(instance_path).json()

    assert job["state"] == "succeeded", job
    assert instance["state"] == "running"
    assert len(fake_novita.instances()) == 1
    assert fake_novita.call_count("POST", CREATE_PATH) == 1
