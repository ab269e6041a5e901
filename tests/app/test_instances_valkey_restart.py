"""Valkey restarted while creates pour in: no accepted job is lost and no instance is created twice.

Each logical request carries its own Idempotency-Key and is retried by the client while the API answers 503 (or the
connection fails), as a well-behaved client would. Afterwards every request must have been accepted exactly once,
every accepted job must have succeeded, and Novita must hold exactly one instance per request.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.app.conftest import ApiServer
from tests.app.instances_client import create_body, wait_for_job
from tests.fakes.fixtures import FakeNovitaHandle
from tests.fixtures_redis import RedisServer

REQUESTS = 24
RETRY_FOR_SECONDS = 30.0


def _create_until_accepted(server: ApiServer, index: int, outcomes: list[int]) -> dict:
    body = create_body(name=f"load-{index}")
    deadline = time.monotonic() + RETRY_FOR_SECONDS
    with server.client(timeout=5.0) as client:
        while True:
            try:
                response = client.post("/api/instances", json=body, headers={"Idempotency-Key": f"load-{index}"})
                outcomes.append(response.status_code)
                if response.status_code == 202:
                    return response.json()
                assert response.status_code == 503, response.text  # Valkey away: nothing accepted, try again
            except httpx.HTTPError:
                outcomes.append(0)
            assert time.monotonic() < deadline, f"request {index} never accepted"
            time.sleep(0.05)


def test_valkey_restart_under_load_loses_no_accepted_job(
    api_server: ApiServer, redis_server: RedisServer, fake_novita: FakeNovitaHandle
) -> None:
    outcomes: list[int] = []
    restarted = threading.Event()

    def restart_valkey_soon() -> None:
        time.sleep(0.4)
        redis_server.stop(save=True)  # SHUTDOWN SAVE: what Valkey acknowledged survives, like AOF/RDB in prod
        time.sleep(1.0)  # a real outage, longer than the client's own command retries
        redis_server.start()
        restarted.set()

    def staggered(index: int) -> dict:
        time.sleep(index * 0.04)  # spread the requests across the restart
        return _create_until_accepted(api_server, index, outcomes)

    restarter = threading.Thread(target=restart_valkey_soon)
    restarter.start()
    with ThreadPoolExecutor(max_workers=8) as pool:
        accepted = list(pool.map(staggered, range(REQUESTS)))
    restarter.join()

    assert restarted.is_set()
    assert any(status != 202 for status in outcomes), "the restart should have refused some requests"
    with api_server.client() as client:
        jobs = [wait_for_job(client, a["jobId"], timeout=60) for a in accepted]
        listed = client.get("/api/instances", params={"pageSize": 100}).json()

    assert [j["state"] for j in jobs] == ["succeeded"] * REQUESTS, [j for j in jobs if j["state"] != "succeeded"]
    upstream_names = [i["name"] for i in fake_novita.instances()]
    for answer in accepted:
        assert upstream_names.count(answer["instance"]["upstreamName"]) == 1
    assert len(upstream_names) == REQUESTS
    assert listed["total"] == REQUESTS
