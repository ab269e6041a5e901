"""Every job of one instance: `GET /api/instances/{id}/jobs` over real HTTP, and the per-instance list the queue writes
in the enqueue's own script (bounded, newest first, expiring with a deleted record) on the real redis-server."""

from __future__ import annotations

from typing import Any

import httpx

from app.fleet.store import DELETED_RECORD_RETENTION_SECONDS, instance_jobs_key
from app.jobs.queue import LISTED_JOBS_KEPT, job_key
from tests.app.conftest import ApiServer, QueueKit
from tests.app.instances_client import create_running, run_action, wait_for_job
from tests.fixtures_redis import RedisServer

PROBLEM_JSON = "application/problem+json"


def _jobs(client: httpx.Client, instance_id: str, **params: int) -> list[dict[str, Any]]:
    response = client.get(f"/api/instances/{instance_id}/jobs", params=params)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def test_an_instance_lists_all_its_jobs_newest_first(api_server: ApiServer, redis_server: RedisServer) -> None:
    with api_server.client() as client:
        running = create_running(client)
        instance_id, create_job = running["id"], running["lastJobId"]
        other = create_running(client, name="other")
        stop = run_action(client, instance_id, "stop")
        start = run_action(client, instance_id, "start")
        wait_for_job(client, f"{start['id']}-readiness")  # the readiness check that the start queued for it

        listed = _jobs(client, instance_id)
        newest = _jobs(client, instance_id, limit=1)
        unknown = client.get("/api/instances/0123456789abcdef/jobs")
        too_many = client.get(f"/api/instances/{instance_id}/jobs", params={"limit": LISTED_JOBS_KEPT + 1})

    kinds = [item["kind"] for item in listed]
    ids = [item["id"] for item in listed]
    assert kinds[:3] == ["instance.readiness", "instance.start", "instance.stop"]
    assert ids[:3] == [f"{start['id']}-readiness", start["id"], stop["id"]]
    assert ids[-1] == create_job and kinds[-1] == "instance.create"
    assert other["lastJobId"] not in ids  # another instance's jobs stay on its own list
    created = [item["createdAt"] for item in listed]
    assert created == sorted(created, reverse=True)
    assert all(item["state"] == "succeeded" for item in listed)
    assert "payload" not in listed[0]  # the job view never carries the payload (it may hold env values)
    assert [item["id"] for item in newest] == [ids[0]]
    assert unknown.status_code == 404 and unknown.headers["content-type"] == PROBLEM_JSON
    assert too_many.status_code == 422 and "limit" in too_many.text
    with redis_server.client() as raw:
        assert raw.ttl(instance_jobs_key(instance_id)) == -1  # a live instance's list does not expire


def test_a_deleted_instance_keeps_its_job_list_as_long_as_its_record(
    api_server: ApiServer, redis_server: RedisServer
) -> None:
    with api_server.client() as client:
        instance_id = create_running(client)["id"]
        deleted = run_action(client, instance_id, "delete")
        assert deleted["state"] == "succeeded", deleted
        assert _jobs(client, instance_id)[0]["id"] == deleted["id"]
    with redis_server.client() as raw:
        list_ttl = raw.ttl(instance_jobs_key(instance_id))
        record_ttl = raw.ttl(f"ngpu:instance:{instance_id}")
    assert 0 < list_ttl <= DELETED_RECORD_RETENTION_SECONDS
    assert abs(list_ttl - record_ttl) <= 2


async def test_the_list_keeps_the_newest_jobs_and_drops_expired_ones(kit: QueueKit) -> None:
    queue = await kit.queue()
    listed_in = instance_jobs_key("feedfacefeedface")
    jobs = [await queue.enqueue("demo.noop", {"n": n}, listed_in=listed_in) for n in range(LISTED_JOBS_KEPT + 5)]
    unlisted = await queue.enqueue("demo.noop", {})
    replay = await queue.enqueue("demo.noop", {}, job_id=jobs[-1].id, listed_in=listed_in)

    listed = await queue.listed(listed_in, LISTED_JOBS_KEPT + 50)

    assert replay.created_at == jobs[-1].created_at  # a replayed id is the same job, listed once
    assert [job.id for job in listed] == [job.id for job in reversed(jobs[5:])]
    assert unlisted.id not in {job.id for job in listed}
    await queue.redis.client.delete(job_key(jobs[-1].id))  # as when its retention ran out
    assert [job.id for job in await queue.listed(listed_in, 2)] == [jobs[-2].id]
    assert await queue.redis.client.zscore(listed_in, jobs[-1].id) is None  # and it left the list
