"""(f) A wedged app comes back without a person: the probe kills it after HEALTHCHECK_KILL_AFTER failed probes,
tini exits, and the restart policy starts the container again. Plain Docker alone would leave it `unhealthy`."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable

import pytest

from tests.e2e.harness import ApiContainer, Measurements

pytestmark = pytest.mark.e2e

# Kill window: 3 failed probes at a 3 s interval, each up to the 2 s Docker timeout, then the restart.
RECOVERY_SECONDS = 60


def assert_recovers(api: ApiContainer, wedge: Callable[[], None], label: str, measurements: Measurements) -> None:
    """Wedge the app, then prove the probe killed it (exit 137) and it is back and healthy."""
    before = api.restart_count()
    since = int(time.time()) - 1
    wedged_at = time.monotonic()
    wedge()
    api.wait_restarted(before, timeout=RECOVERY_SECONDS)
    restarted = time.monotonic() - wedged_at
    api.started_at = wedged_at
    healthy = api.wait_health("healthy", timeout=RECOVERY_SECONDS)
    measurements.record(f"{label}: wedged -> restarted (s)", restarted)
    measurements.record(f"{label}: wedged -> healthy again (s)", healthy)

    events = api.client.api.events(
        since=since,
        until=int(time.time()) + 1,
        decode=True,
        filters={"container": api.container_id, "type": "container"},
    )
    seen = [(event["Action"], event["Actor"]["Attributes"].get("exitCode")) for event in events]
    print(f"{label} events: {seen}")
    assert ("die", "137") in seen, f"the app was not SIGKILLed by the probe: {seen}"
    assert api.restart_count() == before + 1
    assert api.get("/readyz")[0] == 200


def test_blocked_event_loop_is_killed_and_restarted(deploy, measurements: Measurements):
    api = deploy("dev", overrides={"faultInjection": "true"}).api

    def block_loop() -> None:
        # The request never gets an answer in time: the loop sleeps far longer than the kill window.
        threading.Thread(
            target=lambda: _ignore_errors(lambda: api.post("/debug/block-loop?seconds=600", timeout=RECOVERY_SECONDS)),
            daemon=True,
        ).start()

    assert_recovers(api, block_loop, "blocked event loop", measurements)


def test_process_frozen_with_sigstop_is_killed_and_restarted(deploy, measurements: Measurements):
    api = deploy("prod").api
    assert_recovers(api, lambda: api.kill_from_host(api.app_pid(), signal.SIGSTOP), "SIGSTOP-frozen app", measurements)


def _ignore_errors(call: Callable[[], object]) -> None:
    with contextlib.suppress(OSError):
        call()
