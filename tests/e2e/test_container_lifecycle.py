"""The container as the program defines it, on a real engine: start-up, limits, crash recovery, manual stop."""

from __future__ import annotations

import signal
import time

import pytest

from tests.e2e.container_spec import MB, duration_ns
from tests.e2e.harness import Measurements

pytestmark = pytest.mark.e2e

PROBE = ["CMD", "python", "-m", "app.healthcheck"]


def test_prod_stack_as_declared_turns_healthy_within_120s(deploy, measurements: Measurements):
    """(a)+(b) with the prod stack's own healthcheck timings: the seed's success criterion, measured."""
    deployment = deploy("prod", wait_healthy=False, fast_healthcheck=False)
    api = deployment.api
    ready = api.wait_ready(timeout=60)
    healthy = api.wait_health("healthy", timeout=api.spec.provider.wait_timeout_seconds)
    measurements.record("prod timings: start -> /readyz 200 (s)", ready)
    measurements.record("prod timings: start -> Docker healthy (s)", healthy)
    print(f"prod stack timings: ready after {ready:.2f}s, healthy after {healthy:.2f}s")
    assert healthy < 120

    inspected = api.inspect()
    host, config = inspected["HostConfig"], inspected["Config"]
    print(
        "RestartPolicy",
        host["RestartPolicy"],
        "Memory",
        host["Memory"],
        "MemorySwap",
        host["MemorySwap"],
        "NanoCpus",
        host["NanoCpus"],
        "Healthcheck",
        config["Healthcheck"],
    )
    assert host["RestartPolicy"] == {"Name": "always", "MaximumRetryCount": 0}
    assert (host["Memory"], host["MemorySwap"]) == (512 * MB, 512 * MB)
    assert host["NanoCpus"] == 500_000_000
    assert config["Healthcheck"] == {
        "Test": PROBE,
        "Interval": duration_ns("30s"),
        "Timeout": duration_ns("10s"),
        "StartPeriod": duration_ns("2m0s"),
        "Retries": 5,
    }
    # The hardening the program declares is what the engine runs.
    assert host["Init"] is True and host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges:true"]
    assert config["User"] == "10001:10001" and "/tmp" in host["Tmpfs"]
    assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-file": "3", "max-size": "10m"}}
    assert (config["StopSignal"], config["StopTimeout"]) == ("SIGTERM", 30)
    env = dict(item.split("=", 1) for item in config["Env"])
    assert (env["APP_ENV"], env["HEALTHCHECK_KILL_AFTER"]) == ("production", "5")


def test_fast_healthcheck_start_to_ready_and_healthy(deploy, measurements: Measurements):
    """(a) with the test timings: ready as soon as Valkey answers, healthy at the first probe after that."""
    deployment = deploy("prod", wait_healthy=False)
    api = deployment.api
    ready = api.wait_ready(timeout=60)
    healthy = api.wait_health("healthy", timeout=60)
    measurements.record("fast healthcheck (3s interval): start -> /readyz 200 (s)", ready)
    measurements.record("fast healthcheck (3s interval): start -> Docker healthy (s)", healthy)
    assert api.inspect()["Config"]["Healthcheck"]["Interval"] == duration_ns("3s")
    assert api.health_log()[-1].startswith("healthy: /livez ok, readyOnce=true")


def test_kill_9_of_the_main_process_is_restarted_and_healthy_again(deploy, measurements: Measurements):
    """(c) A real crash: SIGKILL from the host to the container's PID 1. Docker restarts it under `always`."""
    api = deploy("prod").api
    before = api.restart_count()
    old_pid = api.main_pid()
    api.kill_from_host(old_pid, signal.SIGKILL)
    killed_at = time.monotonic()
    api.wait_restarted(before, timeout=30)
    restarted = time.monotonic() - killed_at
    api.started_at = killed_at
    healthy = api.wait_health("healthy", timeout=60)
    measurements.record("kill -9 main pid: -> restarted (s)", restarted)
    measurements.record("kill -9 main pid: -> healthy again (s)", healthy)
    assert api.restart_count() == before + 1
    assert api.main_pid() != old_pid
    assert api.get("/readyz")[0] == 200


def test_docker_stop_leaves_it_stopped(deploy):
    """(g) `docker stop` is a manual stop: no restart policy brings it back (the seed's Test 2 was wrong)."""
    api = deploy("prod").api
    before = api.restart_count()
    api.client.api.stop(api.container_id, timeout=api.spec.create_kwargs["stop_timeout"])
    time.sleep(5)  # long enough for Docker's first restart attempt (100 ms backoff) had it wanted one
    state = api.inspect()["State"]
    assert (state["Status"], state["Running"], api.restart_count()) == ("exited", False, before)
    # A graceful SIGTERM shutdown, not Docker's SIGKILL after the grace period (137): the lifespan drain ran, then
    # uvicorn re-raised SIGTERM (exit 143), which tini passed on.
    assert state["ExitCode"] == 143, api.logs()[-2000:]
    assert "Application shutdown complete." in api.logs()
