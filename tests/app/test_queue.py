"""The job queue and worker against a real redis-server: durability, reclaim, retries, dead letters, locking."""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from app.core.errors import ServiceUnavailable
from app.jobs.queue import (
    DEAD_KEY,
    FAILED_KEY,
    SCHEDULED_KEY,
    STREAM_KEY,
    Job,
    JobContext,
    JobFailed,
    JobQueue,
    RetryLater,
    job_key,
)
from tests.app.conftest import ApiServer, QueueKit, wait_for
from tests.fixtures_redis import RedisServer


async def test_enqueue_is_durable_before_it_returns_and_idempotent_by_job_id(
    kit: QueueKit, redis_server: RedisServer
) -> None:
    queue = await kit.queue()
    job = await queue.enqueue("demo.echo", {"value": 42})

    with redis_server.client() as raw:  # read back through a different connection: it is really in Valkey
        record = raw.hgetall(job_key(job.id))
        entries = raw.xrange(STREAM_KEY)
    assert record["kind"] == "demo.echo" and record["state"] == "queued"
    assert [fields["job"] for _, fields in entries] == [job.id]
    assert await queue.get(job.id) == job

    again = await queue.enqueue("demo.echo", {"value": 99}, job_id=job.id)
    assert again.payload == {"value": 42}  # the existing job, unchanged
    with redis_server.client() as raw:
        assert raw.xlen(STREAM_KEY) == 1  # and not queued twice


async def test_worker_runs_a_job_records_the_result_and_acknowledges_it(
    kit: QueueKit, redis_server: RedisServer
) -> None:
    queue = await kit.queue()
    seen: list[dict[str, Any]] = []

    async def echo(context: JobContext) -> dict[str, Any]:
        seen.append(context.job.payload)
        return {"echo": context.job.payload["value"]}

    worker = kit.worker(queue, {"demo.echo": echo}, "w1")
    await worker.start()
    job = await queue.enqueue("demo.echo", {"value": 7})
    await wait_for(lambda: _is(kit, queue, job.id, "succeeded"), what="job success")

    done = await queue.get(job.id)
    assert done is not None and done.result == {"echo": 7} and done.attempts == 1
    assert seen == [{"value": 7}]
    stats = await queue.depth()
    assert (stats.depth, stats.pending, stats.scheduled, stats.dead) == (0, 0, 0, 0)
    assert kit.metrics.jobs_processed.labels("demo.echo", "succeeded")._value.get() == 1
    with redis_server.client() as raw:
        assert raw.ttl(job_key(job.id)) > 0  # finished records expire after the retention time


async def test_failing_job_is_retried_with_growing_backoff_then_dead_lettered(kit: QueueKit) -> None:
    queue = await kit.queue()
    attempts_at: list[float] = []

    async def always_fails(context: JobContext) -> None:
        attempts_at.append(time.monotonic())
        raise RuntimeError(f"boom {len(attempts_at)}")

    worker = kit.worker(queue, {"demo.fail": always_fails}, "w1", job_max_attempts=3, job_retry_base_seconds=0.2)
    await worker.start()
    job = await queue.enqueue("demo.fail", {})
    await wait_for(lambda: _is(kit, queue, job.id, "dead"), what="dead letter")

    dead = await queue.dead_letters()
    assert [d.id for d in dead] == [job.id]
    assert dead[0].attempts == 3 and dead[0].last_error == "RuntimeError: boom 3"
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts_at)]
    assert len(gaps) == 2
    assert gaps[0] >= 0.2 * 0.8 and gaps[1] >= 0.4 * 0.8  # exponential: base, then twice the base (±20 % jitter)
    assert (await queue.depth()).dead == 1
    assert kit.metrics.jobs_processed.labels("demo.fail", "retried")._value.get() == 2
    assert kit.metrics.jobs_processed.labels("demo.fail", "dead")._value.get() == 1


async def test_running_lists_the_jobs_a_worker_holds_and_failed_keeps_the_newest_failures(
    kit: QueueKit, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.jobs.worker.FAILED_JOBS_KEPT", 3)  # the bound, small enough to pass here
    queue = await kit.queue()
    assert await queue.running() == [] and await queue.failed() == []  # no consumer group yet: nothing runs
    release = asyncio.Event()

    async def held(context: JobContext) -> None:
        await release.wait()

    async def refused(context: JobContext) -> None:
        raise JobFailed(f"bad request {context.job.payload['n']}")

    worker = kit.worker(queue, {"demo.held": held, "demo.refused": refused}, "w1")
    await worker.start()
    running = await queue.enqueue("demo.held", {})
    waiting = await queue.enqueue("demo.held", {}, delay_seconds=600)
    await wait_for(lambda: _is(kit, queue, running.id, "running"), what="the held job to run")
    assert [job.id for job in await queue.running()] == [running.id]  # not the scheduled one

    failed = []
    for n in range(5):
        job = await queue.enqueue("demo.refused", {"n": n})
        await wait_for(functools.partial(_is, kit, queue, job.id, "failed"), what=f"failure {n}")
        failed.append(job.id)
    listed = await queue.failed()
    assert [job.id for job in listed] == failed[:-4:-1]  # the newest 3, newest first
    assert listed[0].last_error == "bad request 4"
    with redis_server.client() as raw:
        assert raw.zcard(FAILED_KEY) == 3  # trimmed where it is written, not only when read
        raw.delete(job_key(failed[-1]))  # a record gone with the retention leaves the list when it is read
    assert [job.id for job in await queue.failed()] == failed[-2:-4:-1]

    release.set()
    await wait_for(lambda: _is(kit, queue, running.id, "succeeded"), what="the held job to finish")
    assert await queue.running() == []
    still_waiting = await queue.get(waiting.id)
    assert still_waiting is not None and still_waiting.state == "scheduled"


async def test_retry_later_reschedules_without_using_up_attempts(kit: QueueKit, redis_server: RedisServer) -> None:
    queue = await kit.queue()
    calls = 0
    scheduled_seen = False

    async def polls_three_times(context: JobContext) -> dict[str, int]:
        nonlocal calls, scheduled_seen
        calls += 1
        if calls <= 3:
            raise RetryLater(0.15, reason="instance still pulling")
        return {"polls": calls}

    async def observe_schedule() -> bool:
        nonlocal scheduled_seen
        with redis_server.client() as raw:
            scheduled_seen = scheduled_seen or raw.zscore(SCHEDULED_KEY, job.id) is not None
        return await _is(kit, queue, job.id, "succeeded")

    worker = kit.worker(queue, {"demo.poll": polls_three_times}, "w1", job_max_attempts=1)
    await worker.start()
    started = time.monotonic()
    job = await queue.enqueue("demo.poll", {})
    await wait_for(observe_schedule, what="polling job to finish")

    done = await queue.get(job.id)
    assert done is not None and done.result == {"polls": 4}
    assert done.attempts == 1  # three RetryLater did not consume the single allowed attempt
    assert scheduled_seen
    assert time.monotonic() - started >= 3 * 0.15


async def test_a_wake_that_finds_the_job_running_makes_its_next_poll_due_at_once(kit: QueueKit) -> None:
    """The sync may bring a watching job's news while that job is between reading the old status and rescheduling
    itself: the wake must not be lost, or the job would sleep through its whole (long) poll delay."""
    queue = await kit.queue()
    runs: list[float] = []
    woken_mid_run = asyncio.Event()

    async def watch(context: JobContext) -> dict[str, int]:
        runs.append(time.monotonic())
        if len(runs) == 1:
            await queue.wake([context.job.id])  # news arrives while this run still believes nothing changed
            woken_mid_run.set()
            raise RetryLater(30.0, reason="waiting for the sync")
        return {"runs": len(runs)}

    sleeper_runs: list[float] = []

    async def sleeps(context: JobContext) -> None:
        sleeper_runs.append(time.monotonic())
        raise RetryLater(30.0, reason="nothing woke this one")

    worker = kit.worker(queue, {"demo.watch": watch, "demo.sleep": sleeps}, "w1")
    await worker.start()
    job = await queue.enqueue("demo.watch", {})
    unwoken = await queue.enqueue("demo.sleep", {})
    await wait_for(lambda: _is(kit, queue, job.id, "succeeded"), timeout=5.0, what="the woken job to run again")
    await wait_for(lambda: _is(kit, queue, unwoken.id, "scheduled"), what="the other job to reschedule")

    assert woken_mid_run.is_set() and len(runs) == 2
    assert runs[1] - runs[0] < 5.0  # not the 30 s it asked for
    assert len(sleeper_runs) == 1  # a job nobody woke keeps its delay
    await queue.wake([unwoken.id])  # a wake of a scheduled job makes it due now

    async def ran_again() -> bool:
        return len(sleeper_runs) == 2

    await wait_for(ran_again, timeout=5.0, what="the scheduled job to run once more after its wake")


async def test_delayed_job_waits_for_its_due_time(kit: QueueKit) -> None:
    queue = await kit.queue()
    ran_at: list[float] = []

    async def record(context: JobContext) -> None:
        ran_at.append(time.monotonic())

    worker = kit.worker(queue, {"demo.later": record}, "w1")
    await worker.start()
    enqueued_at = time.monotonic()
    job = await queue.enqueue("demo.later", {}, delay_seconds=0.6)
    assert job.state == "scheduled" and (await queue.depth()).scheduled == 1
    await wait_for(lambda: _is(kit, queue, job.id, "succeeded"), what="delayed job")
    assert ran_at[0] - enqueued_at >= 0.6


async def test_job_of_a_killed_worker_is_reclaimed_and_its_effect_happens_once(
    kit: QueueKit, redis_server: RedisServer
) -> None:
    """A worker process is SIGKILLed mid-job; another worker reclaims the job after the visibility timeout."""
    queue = await kit.queue()
    job = await queue.enqueue("demo.effect", {})
    victim = _start_worker_process(redis_server.url, visibility_seconds=1.0)
    try:
        line = await asyncio.wait_for(asyncio.to_thread(victim.stdout.readline), 15)  # type: ignore[union-attr]
        assert line.strip() == f"started {job.id}"
        assert await kit.job_state(queue, job.id) == "running"
        os.kill(victim.pid, signal.SIGKILL)  # no cleanup of any kind, like an OOM kill
        victim.wait(5)
    finally:
        if victim.poll() is None:
            victim.kill()

    async def apply_effect_once(context: JobContext) -> dict[str, int]:
        # The idempotent side effect: count it per job, as a handler would record "instance created".
        with redis_server.client() as raw:
            raw.incr(f"test:effect:{context.job.id}")
        return {"done": 1}

    rescuer = kit.worker(queue, {"demo.effect": apply_effect_once}, "rescuer", job_visibility_timeout_seconds=1.0)
    await rescuer.start()
    await wait_for(lambda: _is(kit, queue, job.id, "succeeded"), timeout=15, what="reclaimed job")
    with redis_server.client() as raw:
        assert raw.get(f"test:effect:{job.id}") == "1"
    done = await queue.get(job.id)
    assert done is not None and done.attempts == 2  # the killed attempt counted, the reclaimed one finished
    assert (await queue.depth()).pending == 0


async def test_graceful_stop_leaves_the_running_job_for_another_worker(kit: QueueKit) -> None:
    queue = await kit.queue()
    started = asyncio.Event()
    runs: list[str] = []

    async def slow(context: JobContext) -> None:
        runs.append(context.job.id)
        started.set()
        await asyncio.sleep(30)

    first = kit.worker(queue, {"demo.slow": slow}, "first", job_visibility_timeout_seconds=1.0)
    await first.start()
    job = await queue.enqueue("demo.slow", {})
    await asyncio.wait_for(started.wait(), 10)

    await first.stop(grace_seconds=0.2)  # what SIGTERM does: stop reading, wait briefly, interrupt
    interrupted = await queue.get(job.id)
    assert interrupted is not None and interrupted.state == "queued" and interrupted.attempts == 0
    assert (await queue.depth()).pending == 1  # unacknowledged, so another worker can claim it

    async def quick(context: JobContext) -> dict[str, str]:
        return {"by": "second"}

    second = kit.worker(queue, {"demo.slow": quick}, "second", job_visibility_timeout_seconds=1.0)
    await second.start()
    await wait_for(lambda: _is(kit, queue, job.id, "succeeded"), what="job finished by the second worker")
    done = await queue.get(job.id)
    assert done is not None and done.result == {"by": "second"} and runs == [job.id]


async def test_two_workers_never_run_one_job_at_the_same_time(kit: QueueKit) -> None:
    """Jobs longer than the visibility timeout: the heartbeat and the per-job lock keep them single."""
    queue = await kit.queue()
    running: set[str] = set()
    overlaps: list[str] = []
    runs: dict[str, int] = {}

    async def longer_than_visibility(context: JobContext) -> None:
        job_id = context.job.id
        if job_id in running:
            overlaps.append(job_id)
        running.add(job_id)
        runs[job_id] = runs.get(job_id, 0) + 1
        await asyncio.sleep(1.5)
        running.discard(job_id)

    options = {"job_visibility_timeout_seconds": 0.6, "job_reclaim_interval_seconds": 0.05, "job_concurrency": 2}
    for name in ("alpha", "beta"):
        await kit.worker(queue, {"demo.long": longer_than_visibility}, name, **options).start()
    jobs = [await queue.enqueue("demo.long", {"n": n}) for n in range(3)]

    async def all_done() -> bool:
        return all([await _is(kit, queue, job.id, "succeeded") for job in jobs])

    await wait_for(all_done, timeout=15, what="all long jobs")
    assert overlaps == []
    assert runs == {job.id: 1 for job in jobs}


async def test_accepted_jobs_survive_a_valkey_restart(kit: QueueKit, redis_server: RedisServer) -> None:
    queue = await kit.queue()
    done_ids: list[str] = []

    async def record(context: JobContext) -> None:
        done_ids.append(context.job.id)

    waiting = [await queue.enqueue("demo.record", {"n": n}) for n in range(3)]
    later = await queue.enqueue("demo.record", {"n": "later"}, delay_seconds=0.3)

    redis_server.restart(save=True)  # Valkey goes away with accepted, unprocessed jobs and comes back

    worker = kit.worker(queue, {"demo.record": record}, "after-restart")
    await worker.start()
    everything = [*waiting, later]

    async def all_done() -> bool:
        return all([await _is(kit, queue, job.id, "succeeded") for job in everything])

    await wait_for(all_done, timeout=15, what="jobs accepted before the restart")
    assert sorted(done_ids) == sorted(job.id for job in everything)

    redis_server.restart(save=True)  # and once more, with the worker running through it
    after = await _enqueue_when_back(queue)
    await wait_for(lambda: _is(kit, queue, after.id, "succeeded"), timeout=15, what="job after a live restart")


async def test_worker_recovers_when_valkey_comes_back_empty(kit: QueueKit, redis_server: RedisServer) -> None:
    """Valkey restarted without its data (consumer group gone): the worker recreates the group and goes on."""
    queue = await kit.queue()

    async def record(context: JobContext) -> None:
        return None

    await kit.worker(queue, {"demo.record": record}, "w1").start()
    first = await queue.enqueue("demo.record", {})
    await wait_for(lambda: _is(kit, queue, first.id, "succeeded"), what="job before the data loss")
    redis_server.restart(save=False)
    after = await _enqueue_when_back(queue)
    await wait_for(lambda: _is(kit, queue, after.id, "succeeded"), timeout=15, what="job after the data loss")


async def test_a_job_that_keeps_killing_its_worker_is_dead_lettered_without_running(
    kit: QueueKit, redis_server: RedisServer
) -> None:
    queue = await kit.queue()
    job = await queue.enqueue("demo.poison", {})
    with redis_server.client() as raw:  # as if every allowed attempt had started and died without a trace
        raw.hset(job_key(job.id), mapping={"attempts": 3, "state": "running"})
    ran: list[str] = []

    async def poison(context: JobContext) -> None:
        ran.append(context.job.id)

    await kit.worker(queue, {"demo.poison": poison}, "w1", job_max_attempts=3).start()
    await wait_for(lambda: _is(kit, queue, job.id, "dead"), what="poison job dead-lettered")
    assert ran == []
    assert [dead.id for dead in await queue.dead_letters()] == [job.id]


async def test_idle_blocking_reads_longer_than_the_socket_timeout_are_not_errors(kit: QueueKit) -> None:
    timings = {"redis_socket_timeout_seconds": 0.3, "job_read_block_seconds": 0.8}
    queue = await kit.queue(**timings)
    ran: list[str] = []

    async def record(context: JobContext) -> None:
        ran.append(context.job.id)

    await kit.worker(queue, {"demo.record": record}, "idle", **timings).start()
    await asyncio.sleep(2.0)  # several empty XREADGROUP BLOCK rounds, each longer than the ordinary socket timeout
    assert queue.redis.is_up
    job = await queue.enqueue("demo.record", {})
    await wait_for(lambda: _is(kit, queue, job.id, "succeeded"), timeout=3, what="job after idling")
    assert ran == [job.id]


async def test_enqueue_while_valkey_is_down_raises_service_unavailable(
    kit: QueueKit, redis_server: RedisServer
) -> None:
    queue = await kit.queue()
    redis_server.stop()
    try:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable):
            await queue.enqueue("demo.record", {})
        assert time.monotonic() - started < 5
        assert queue.redis.is_up is False
    finally:
        redis_server.start()
    job = await _enqueue_when_back(queue)
    assert await queue.get(job.id) is not None


async def test_dead_letters_and_job_state_over_http(
    api_server: ApiServer, kit: QueueKit, redis_server: RedisServer
) -> None:
    async def broken(context: JobContext) -> None:
        raise ValueError("handler bug")

    api_server.container.worker.register("demo.broken", broken)
    queue = await kit.queue()
    job = await queue.enqueue("demo.broken", {"secret": "not shown"})
    await wait_for(lambda: _is(kit, queue, job.id, "dead"), timeout=15, what="dead letter")

    with api_server.client() as client:
        one = client.get(f"/api/jobs/{job.id}")
        dead = client.get("/api/jobs/dead-letters", params={"limit": 10})
        missing = client.get("/api/jobs/does-not-exist")
    assert one.status_code == 200
    body = one.json()
    assert body["state"] == "dead" and body["attempts"] == api_server.settings.job_max_attempts
    assert body["lastError"] == "ValueError: handler bug" and "payload" not in body
    assert [item["id"] for item in dead.json()["items"]] == [job.id]
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    with redis_server.client() as raw:
        assert raw.zcard(DEAD_KEY) == 1


async def _is(kit: QueueKit, queue: JobQueue, job_id: str, state: str) -> bool:
    return await kit.job_state(queue, job_id) == state


async def _enqueue_when_back(queue: JobQueue) -> Job:
    """Enqueue, retrying only ServiceUnavailable while the client reconnects after a restart."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return await queue.enqueue("demo.record", {"after": "restart"})
        except ServiceUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


_VICTIM_WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from app.core.config import Settings
    from app.core.metrics import Metrics
    from app.core.redis import RedisManager
    from app.jobs.queue import JobQueue
    from app.jobs.worker import Worker

    async def hangs(context):
        print("started", context.job.id, flush=True)
        await asyncio.sleep(3600)

    async def main():
        settings = Settings(redis_url=sys.argv[1], novita_api_key="unused", job_visibility_timeout_seconds=float(
            sys.argv[2]), job_read_block_seconds=0.2, job_concurrency=1)
        manager = RedisManager(settings)
        await manager.wait_until_connected()
        worker = Worker(JobQueue(manager), settings, Metrics(), consumer_name="victim")
        worker.register("demo.effect", hangs)
        await worker.start()
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


def _start_worker_process(redis_url: str, *, visibility_seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _VICTIM_WORKER, redis_url, str(visibility_seconds)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
