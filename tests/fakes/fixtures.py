"""Pytest fixtures around the fake Novita server, and a manual clock for the client's resilience helpers.

``fake_novita`` (session) runs one fake on a free 127.0.0.1 port in a background thread; ``novita`` (function)
is the same handle, reset before the test. Tests talk to the fake over real HTTP.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from app.novita.resilience import Clock
from tests.fakes.novita import BASE_PREFIX, FakeNovita

# Short steps so lifecycle tests take a second, not minutes; tests needing exact control set None.
TEST_STEP_SECONDS = 0.2
_UNSET: Any = object()


class FakeNovitaHandle:
    """What a test needs of a running fake: where it is, its key, and its control API."""

    def __init__(self, root_url: str, api_key: str) -> None:
        self.root_url = root_url
        self.base_url = root_url + BASE_PREFIX
        self.api_key = api_key
        self._control = httpx.Client(base_url=root_url + "/_fake", timeout=10.0)

    def close(self) -> None:
        """Close the control connection."""
        self._control.close()

    def _post(self, path: str, body: Any = None) -> Any:
        response = self._control.post(path, json=body)
        response.raise_for_status()
        return response.json()

    def reset(self) -> None:
        """Forget instances, faults and call counts; restore the default step duration."""
        self._post("/reset")

    def add_faults(self, *rules: dict[str, Any]) -> list[dict[str, Any]]:
        """Add fault rules (see ``tests.fakes.novita``); returns the active rules."""
        return self._post("/faults", list(rules))["faults"]

    def clear_faults(self) -> None:
        """Remove every fault rule."""
        self._control.delete("/faults").raise_for_status()

    def calls(self) -> dict[str, int]:
        """Requests received per ``"METHOD /path"`` since the last reset."""
        return self._control.get("/calls").json()["calls"]

    def call_count(self, method: str, path: str) -> int:
        """Requests received for one endpoint, e.g. ``call_count("POST", "/gpu/instance/create")``."""
        return self.calls().get(f"{method} {path}", 0)

    def preload(self, instances: list[dict[str, Any]]) -> list[str]:
        """Add instances at once (``{"name", "status", "billingMode", "createdAt"}`` each); returns their ids."""
        return self._post("/preload", {"instances": instances})["ids"]

    def instances(self, name: str | None = None) -> list[dict[str, Any]]:
        """Every instance the fake holds (as Novita lists them), optionally only those named exactly ``name``."""
        instances = self._control.get("/instances").json()["instances"]
        return [instance for instance in instances if name is None or instance["name"] == name]

    def set_state(
        self,
        instance_id: str,
        *,
        status: str | None = None,
        status_error: Any = _UNSET,
        frozen: bool | None = None,
        ports_answer: bool | None = None,
    ) -> dict[str, Any]:
        """Force an instance's status, statusError (a dict or None), frozen flag or whether its ports answer."""
        body: dict[str, Any] = {}
        if status is not None:
            body["status"] = status
        if status_error is not _UNSET:
            body["statusError"] = status_error
        if frozen is not None:
            body["frozen"] = frozen
        if ports_answer is not None:
            body["portsAnswer"] = ports_answer
        return self._post(f"/instances/{instance_id}/state", body)["instance"]

    def vanish(self, instance_id: str) -> None:
        """Drop an instance entirely, as if Novita had forgotten it."""
        self._control.delete(f"/instances/{instance_id}").raise_for_status()

    def advance(self, instance_id: str | None = None, steps: int = 1) -> list[dict[str, Any]]:
        """Move one instance (or all) ``steps`` statuses along their lifecycle."""
        body: dict[str, Any] = {"steps": steps}
        if instance_id is not None:
            body["instanceId"] = instance_id
        return self._post("/advance", body)["instances"]

    def set_step_seconds(self, step_seconds: float | None) -> None:
        """Seconds per automatic status step; None turns automatic progress off."""
        self._post("/config", {"stepSeconds": step_seconds})

    def configure(self, **switches: Any) -> dict[str, Any]:
        """Set the fake's readings of Novita's docs, e.g. ``configure(pageBase=0, pageCap=3, total="string")``;
        ``reset()`` restores the defaults."""
        return self._post("/config", switches)


class ManualClock:
    """A clock that only moves when told to or when slept on; records every sleep."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        """The current manual time."""
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Record the sleep and jump ahead by it, yielding to the event loop once."""
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        """Move time forward without sleeping."""
        self.now += seconds

    def as_clock(self) -> Clock:
        """This clock in the form ``NovitaClient(clock=...)`` takes."""
        return Clock(monotonic=self.monotonic, sleep=self.sleep)


@pytest.fixture(scope="session")
def fake_novita() -> Iterator[FakeNovitaHandle]:
    """A fake Novita server for the whole session, on a free 127.0.0.1 port."""
    api_key = "fake-novita-key-" + secrets.token_hex(12)
    fake = FakeNovita(api_key, step_seconds=TEST_STEP_SECONDS)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            fake.app,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="fake-novita", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the fake Novita server did not start")
        time.sleep(0.01)
    handle = FakeNovitaHandle(f"http://127.0.0.1:{port}", api_key)
    try:
        yield handle
    finally:
        handle.close()
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()


@pytest.fixture
def novita(fake_novita: FakeNovitaHandle) -> FakeNovitaHandle:
    """The session's fake Novita, reset for this test."""
    fake_novita.reset()
    return fake_novita


@pytest.fixture
def manual_clock() -> ManualClock:
    """A manual clock starting at t=1000."""
    return ManualClock()
