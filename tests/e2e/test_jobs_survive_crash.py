"""(d) Jobs accepted before a crash finish after it: none lost, none done twice."""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest

from tests.e2e.harness import Measurements, http, wait_for

pytestmark = pytest.mark.e2e

JOBS = 6
CREATE_CALL = "POST /gpu/instance/create"
TERMINAL = {"succeeded", "failed", "dead"}


def test_jobs_accepted_before_a_crash_finish_exactly_once(deploy, novita_fake, measurements: Measurements):
    deployment = deploy("prod")
    api = deployment.api
    # Every create on Novita takes 2 s, so the crash lands while creates are in flight and others still queued.
    status, _ = http(
        "POST",
        f"{novita_fake}/_fake/faults",
        body={"path": "/gpu/instance/create", "method": "POST", "kind": "slow", "delaySeconds": 2, "count": None},
    )
    assert status == 200

    accepted: dict[str, str] = {}  # job id -> instance record id
    for index in range(JOBS):
        status, body = api.post(
            "/api/instances", {"name": f"crash-{index}", "productId": "4090-us-ca-6", "imageUrl": "nginx:latest"}
        )
        assert status == 202, body
        accepted[body["jobId"]] = body["instance"]["id"]

    def creates_on_novita() -> int:
        return http("GET", f"{novita_fake}/_fake/calls")[1]["calls"].get(CREATE_CALL, 0)

    wait_for("a create to reach Novita", creates_on_novita, 30, interval=0.05)
    unfinished = [job for job in accepted if api.get(f"/api/jobs/{job}")[1]["state"] not in TERMINAL]
    assert unfinished, "every job finished before the crash: the test would prove nothing"

    before = api.restart_count()
    api.kill_from_host(api.main_pid(), signal.SIGKILL)
    crashed_at = time.monotonic()
    api.wait_restarted(before, timeout=30)
    api.wait_health("healthy", timeout=60)

    def all_finished() -> dict[str, dict] | None:
        views = {job: api.get(f"/api/jobs/{job}")[1] for job in accepted}
        return views if all(view["state"] in TERMINAL for view in views.values()) else None

    # Jobs the dead process held are reclaimed after the queue's visibility timeout (60 s by default).
    views = wait_for("every accepted job to finish", all_finished, 150, interval=1.0)
    measurements.record("jobs: crash -> all accepted jobs finished (s)", time.monotonic() - crashed_at)
    outcomes = {job: (view["state"], view["attempts"], view["lastError"]) for job, view in views.items()}
    print(outcomes)
    assert {view["state"] for view in views.values()} == {"succeeded"}, outcomes
    assert any(view["attempts"] >= 2 for view in views.values()), f"no job was interrupted and reclaimed: {outcomes}"

    # None done twice: one Novita instance per accepted request, each under its record's unique name.
    instances = http("GET", f"{novita_fake}/_fake/instances")[1]["instances"]
    names = Counter(instance["name"] for instance in instances)
    assert len(instances) == JOBS and all(count == 1 for count in names.values()), names
    records = [api.get(f"/api/instances/{record_id}")[1] for record_id in accepted.values()]
    assert sorted(record["upstreamName"] for record in records) == sorted(names)
    assert {record["state"] for record in records} == {"running"}, records
