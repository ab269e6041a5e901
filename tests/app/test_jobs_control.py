"""Cancel and requeue of jobs: over real HTTP against the real redis-server, across replicas, and against a worker
racing the cancel (a cancelled job never runs, even when its stream entry was already delivered)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import httpx

from app.core.errors import Conflict
from app.jobs.queue import CONSUMER_GROUP, SCHEDULED_KEY, STREAM_KEY, JobContext, JobQueue
from app.jobs.service import JobControl
from tests.app.conftest import ApiServer, QueueKit, StartServer, wait_for
from tests.app.instances_client import create_running, wait_for_job
from tests.fakes.fixtures import FakeNovitaHandle
from tests.fixtures_redis import RedisServer

PROBLEM_JSON = "application/problem+json"


class Recorder:
    """A job handler that records the jobs it ran; a job with payload `hold` runs until `release` is set."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.release = threading.Event()
        self.failing = False

    async def __call__(self, context: JobContext) -> dict[str, Any]:
        self.ran.append(context.job.id)
        await asyncio.sleep(context.job.payload.get("work_seconds", 0))
        while context.job.payload.get("hold") and not self.release.is_set():
            await asyncio.sleep(0.02)
        if self.failing:
            raise ValueError("handler bug")
        return {"ok": True}


async def test_cancel_over_http_404_409_and_a_cancelled_job_never_runs(
    api_server: ApiServer,
    kit: QueueKit,
    redis_server: RedisServer,
) -> None:
    recorder = Recorder()
    api_server.container.worker.register("demo.recorded", recorder)
    queue = await kit.queue()
    waiting = await queue.enqueue("demo.recorded", {}, delay_seconds=1.5)
    held = await queue.enqueue("demo.recorded", {"hold": True})
    await wait_for(lambda: _state_is(queue, held.id, "running"), what="the held job running")

    with api_server.client() as client:
        cancelled = client.post(f"/api/jobs/{waiting.id}/cancel")
        again = client.post(f"/api/jobs/{waiting.id}/cancel")
        running = client.post(f"/api/jobs/{held.id}/cancel")
        recorder.release.set()
        await wait_for(lambda: _state_is(queue, held.id, "succeeded"), what="the held job finishing")
        finished = client.post(f"/api/jobs/{held.id}/cancel")
        unknown = client.post("/api/jobs/no-such-job/cancel")
        await asyncio.sleep(2.0)  # well past the cancelled job's due time
        after = client.get(f"/api/jobs/{waiting.id}").json()

    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert after["state"] == "cancelled" and after["attempts"] == 0
    assert recorder.ran == [held.id]  # the cancelled one never ran
    for refused, state in ((again, "cancelled"), (running, "running"), (finished, "succeeded")):
        assert refused.status_code == 409 and refused.headers["content-type"] == PROBLEM_JSON
        assert f"is {state}: only a queued or scheduled job can be cancelled" in refused.json()["detail"]
    assert unknown.status_code == 404 and unknown.headers["content-type"] == PROBLEM_JSON
    with redis_server.client() as raw:
        assert raw.zscore(SCHEDULED_KEY, waiting.id) is None
        assert raw.ttl(f"ngpu:job:{waiting.id}") > 0  # kept for the retention time, like any finished job


async def test_requeue_of_a_dead_letter_over_http_runs_it_again_once(
    api_server_factory: StartServer,
    kit: QueueKit,
) -> None:
    server = api_server_factory(job_max_attempts=2)
    recorder = Recorder()
    recorder.failing = True
    server.container.worker.register("demo.recorded", recorder)
    queue = await kit.queue()
    job = await queue.enqueue("demo.recorded", {})
    await wait_for(lambda: _state_is(queue, job.id, "dead"), what="the dead letter")

    with server.client() as client:
        not_dead = client.post(f"/api/jobs/{(await queue.enqueue('demo.other', {}, delay_seconds=60)).id}/requeue")
        recorder.failing = False
        with ThreadPoolExecutor(4) as pool:  # four clients (or replicas) requeue it at once
            answers = list(pool.map(lambda _: client.post(f"/api/jobs/{job.id}/requeue"), range(4)))
        await wait_for(lambda: _state_is(queue, job.id, "succeeded"), what="the requeued job succeeding")
        done = client.get(f"/api/jobs/{job.id}").json()
        dead_letters = client.get("/api/jobs/dead-letters").json()["items"]
        unknown = client.post("/api/jobs/no-such-job/requeue")

    assert sorted(answer.status_code for answer in answers) == [200, 409, 409, 409]
    accepted = next(answer.json() for answer in answers if answer.status_code == 200)
    assert accepted["state"] == "queued" and accepted["attempts"] == 0 and accepted["requeuedAt"] > 0
    assert done["state"] == "succeeded" and done["attempts"] == 1 and done["requeuedAt"] == accepted["requeuedAt"]
    assert recorder.ran == [job.id] * 3  # two failed attempts, then exactly one more run
    assert dead_letters == []
    assert (
        not_dead.status_code == 409
        and "is scheduled: only a dead-lettered job can be requeued" in not_dead.json()["detail"]
    )
    assert unknown.status_code == 404


def test_cancelling_a_stop_waiting_out_a_novita_outage_puts_the_instance_back(
    api_server_factory: StartServer, fake_novita: FakeNovitaHandle
) -> None:
    server = api_server_factory()
    with server.client() as client:
        instance = create_running(client, name="kept")
        fake_novita.add_faults({"path": "/gpu/instance/stop", "kind": "server_error", "status": 503, "count": None})
        stop = client.post(f"/api/instances/{instance['id']}/stop")
        assert stop.status_code == 202
        job_id = stop.json()["jobId"]
        # The job waits for Novita in short rescheduled steps: cancel it between two of them.
        cancelled = _cancel_when_not_running(client, job_id)
        fake_novita.clear_faults()
        stops_when_cancelled = fake_novita.call_count("POST", "/gpu/instance/stop")
        time.sleep(1.0)  # several poll intervals: a job that was still going would call Novita again
        view = client.get(f"/api/instances/{instance['id']}").json()
        # The record is back to what Novita reports (running), so stopping is allowed again, and works.
        stop_again = client.post(f"/api/instances/{instance['id']}/stop")
        assert stop_again.status_code == 202, stop_again.text
        assert wait_for_job(client, stop_again.json()["jobId"])["state"] == "succeeded"

    assert cancelled["state"] == "cancelled"
    assert fake_novita.call_count("POST", "/gpu/instance/stop") == stops_when_cancelled + 1  # only the new stop
    assert "job_cancelled" in [event["action"] for event in view["events"]]


async def test_a_job_cancelled_after_its_entry_was_delivered_is_acknowledged_unrun(kit: QueueKit) -> None:
    queue = await kit.queue()
    job = await queue.enqueue("demo.recorded", {})
    # A worker read the entry and then died: the entry is delivered and pending, the job still `queued`.
    await queue.redis.client.xgroup_create(STREAM_KEY, CONSUMER_GROUP, id="0", mkstream=True)
    # redis-py types the reply for every protocol; ours is RESP2 with decoded strings: [[stream, [(id, fields)]]].
    delivered = cast(
        "list[tuple[str, list[tuple[str, dict[str, str]]]]]",
        await queue.redis.client.xreadgroup(CONSUMER_GROUP, "died", {STREAM_KEY: ">"}, count=1),
    )
    assert [fields for _stream, entries in delivered for _entry_id, fields in entries] == [{"job": job.id}]

    cancelled = await JobControl(queue, retention_seconds=60).cancel(job.id)
    recorder = Recorder()
    worker = kit.worker(queue, {"demo.recorded": recorder}, "reclaimer")
    await worker.start()  # reclaims the entry after the visibility timeout (2 s in the test settings)

    async def settled() -> bool:
        return (await queue.redis.client.xpending(STREAM_KEY, CONSUMER_GROUP))["pending"] == 0

    await wait_for(settled, timeout=10, what="the delivered entry to be acknowledged")
    stored = await queue.get(job.id)
    assert cancelled.state == "cancelled" and recorder.ran == []
    assert stored is not None and stored.state == "cancelled" and stored.attempts == 0
    assert await queue.redis.client.xlen(STREAM_KEY) == 0


async def test_cancel_racing_the_worker_either_wins_or_is_refused_never_both(kit: QueueKit) -> None:
    queue = await kit.queue()
    control = JobControl(queue, retention_seconds=60)
    recorder = Recorder()
    workers = [kit.worker(queue, {"demo.recorded": recorder}, f"w{index}", job_concurrency=4) for index in range(2)]
    for worker in workers:
        await worker.start()
    warm_up = await queue.enqueue("demo.recorded", {})
    await wait_for(lambda: _state_is(queue, warm_up.id, "succeeded"), what="the workers to take jobs")
    jobs = await asyncio.gather(*(queue.enqueue("demo.recorded", {"work_seconds": 0.01}) for _ in range(60)))

    async def cancel(index: int, job_id: str) -> bool:
        await asyncio.sleep(0.002 * index)  # the cancels sweep over the queue while the workers drain it
        try:
            await control.cancel(job_id)
        except Conflict:  # it was running or done already
            return False
        return True

    cancelled = await asyncio.gather(*(cancel(index, job.id) for index, job in enumerate(jobs)))
    outcomes = dict(zip([job.id for job in jobs], cancelled, strict=True))

    async def all_settled() -> bool:
        states = [await queue.get(job.id) for job in jobs]
        return all(state is not None and state.state in ("cancelled", "succeeded") for state in states)

    await wait_for(all_settled, timeout=20, what="every job cancelled or done")
    await asyncio.sleep(0.5)  # any cancelled entry still in the stream is read and dropped now
    for job in jobs:
        stored = await queue.get(job.id)
        assert stored is not None
        ran = job.id in recorder.ran  # a job cancelled in time never ran; one that ran refused the cancel
        assert outcomes[job.id] != ran, f"job {job.id}: cancelled={outcomes[job.id]} ran={ran}"
        assert stored.state == ("cancelled" if outcomes[job.id] else "succeeded")
    assert recorder.ran.count(warm_up.id) == 1 and len(recorder.ran) == len(set(recorder.ran))
    assert (await queue.redis.client.xpending(STREAM_KEY, CONSUMER_GROUP))["pending"] == 0


def _cancel_when_not_running(client: httpx.Client, job_id: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        answer = client.post(f"/api/jobs/{job_id}/cancel")
        if answer.status_code == 200:
            return answer.json()
        assert answer.status_code == 409 and "is running" in answer.json()["detail"], answer.text
        assert time.monotonic() < deadline, "the job never waited between two steps"
        time.sleep(0.01)


async def _state_is(queue: JobQueue, job_id: str, state: str) -> bool:
    job = await queue.get(job_id)
    return job is not None and job.state == state
