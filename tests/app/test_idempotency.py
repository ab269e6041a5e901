"""`Idempotency-Key` on POST /api/instances: a replay returns the first result and never creates twice."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.app.conftest import ApiServer
from tests.app.instances_client import CREATE_PATH, create_body, wait_for_job
from tests.fakes.fixtures import FakeNovitaHandle
from tests.fixtures_redis import RedisServer


def _post(client: httpx.Client, key: str | None, **overrides: object) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return client.post("/api/instances", json=create_body(**overrides), headers=headers)


def test_same_key_twice_returns_the_same_instance_and_job_and_creates_once(
    client: httpx.Client, fake_novita: FakeNovitaHandle
) -> None:
    first = _post(client, "order-42")
    job = wait_for_job(client, first.json()["jobId"])
    second = _post(client, "order-42")

    assert first.status_code == second.status_code == 202
    assert second.json()["jobId"] == first.json()["jobId"]
    assert second.json()["instance"]["id"] == first.json()["instance"]["id"]
    assert second.json()["instance"]["state"] == "running"  # the replay shows the record as it is now
    assert job["state"] == "succeeded"
    assert wait_for_job(client, second.json()["jobId"])["state"] == "succeeded"
    assert fake_novita.call_count("POST", CREATE_PATH) == 1
    assert len(fake_novita.instances()) == 1
    assert client.get("/api/instances").json()["total"] == 1


def test_concurrent_requests_with_one_key_make_one_job_and_one_instance(
    api_server: ApiServer, fake_novita: FakeNovitaHandle
) -> None:
    def post(_: int) -> httpx.Response:
        with api_server.client() as client:
            return _post(client, "burst-key")

    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(post, range(10)))

    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["jobId"] for a in answers}) == 1
    assert len({a.json()["instance"]["id"] for a in answers}) == 1
    with api_server.client() as client:
        assert wait_for_job(client, answers[0].json()["jobId"])["state"] == "succeeded"
        assert client.get("/api/instances").json()["total"] == 1
    assert fake_novita.call_count("POST", CREATE_PATH) == 1
    assert len(fake_novita.instances()) == 1


def test_same_key_with_another_body_is_422(client: httpx.Client, fake_novita: FakeNovitaHandle) -> None:
    first = _post(client, "reused", gpuNum=1)
    second = _post(client, "reused", gpuNum=2)

    assert first.status_code == 202
    assert second.status_code == 422
    assert second.json()["errors"][0]["field"] == "header.Idempotency-Key"
    assert "different request body" in second.json()["detail"]
    wait_for_job(client, first.json()["jobId"])
    assert len(fake_novita.instances()) == 1


def test_requests_without_a_key_are_independent(client: httpx.Client, fake_novita: FakeNovitaHandle) -> None:
    first, second = _post(client, None), _post(client, None)

    assert first.json()["instance"]["id"] != second.json()["instance"]["id"]
    for answer in (first, second):
        assert wait_for_job(client, answer.json()["jobId"])["state"] == "succeeded"
    assert len(fake_novita.instances()) == 2


def test_different_keys_create_different_instances(client: httpx.Client) -> None:
    first, second = _post(client, "key-a"), _post(client, "key-b")

    assert first.json()["jobId"] != second.json()["jobId"]


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "naïve"])
def test_malformed_key_is_422(client: httpx.Client, key: str) -> None:
    response = client.post("/api/instances", json=create_body(), headers={b"Idempotency-Key": key.encode("utf-8")})

    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "header.Idempotency-Key"


def test_keys_are_stored_with_the_configured_ttl(
    client: httpx.Client, api_server: ApiServer, redis_server: RedisServer
) -> None:
    _post(client, "ttl-key")

    with redis_server.client() as valkey:
        ttl = valkey.ttl("ngpu:idempotency:ttl-key")
    assert 0 < ttl <= api_server.settings.idempotency_ttl_seconds


def test_replay_finishes_an_acceptance_that_stopped_half_way(
    client: httpx.Client, redis_server: RedisServer, fake_novita: FakeNovitaHandle
) -> None:
    """A first attempt that claimed the key and wrote the record, then lost Valkey before the job was written."""
    first = _post(client, "half-way")
    job_id, instance_id = first.json()["jobId"], first.json()["instance"]["id"]
    wait_for_job(client, job_id)
    with redis_server.client() as valkey:  # make it look as if the job had never been written
        valkey.delete(f"ngpu:job:{job_id}")

    replay = _post(client, "half-way")

    assert replay.status_code == 202 and replay.json()["jobId"] == job_id
    assert replay.json()["instance"]["id"] == instance_id
    assert wait_for_job(client, job_id)["state"] == "succeeded"
    assert len(fake_novita.instances()) == 1  # the re-run job found the instance by its record, not a new create
    assert fake_novita.call_count("POST", CREATE_PATH) == 1
