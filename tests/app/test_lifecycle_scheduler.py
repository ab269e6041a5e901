"""The lifecycle scheduler: each periodic task runs once per period across replicas, survives restarts, never overlaps
itself, and one failing task does not stop the others."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio import Redis

from app.lifecycle.scheduler import LifecycleScheduler, PeriodicTask
from tests.app.lifecycle_helpers import LifecycleEnv

PERIOD = 60.0


class Runs:
    """Counts runs per task name."""

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()

    def task(self, name: str, period: float = PERIOD) -> PeriodicTask:
        async def run() -> None:
            self.count[name] += 1

        return PeriodicTask(name, period, run)


def scheduler(env: LifecycleEnv, tasks: list[PeriodicTask], redis: Redis | None = None) -> LifecycleScheduler:
    return LifecycleScheduler(redis or env.redis, tasks, clock=env.clock)


async def test_each_task_runs_once_per_period_across_replicas(lifecycle_env: LifecycleEnv) -> None:
    env, runs = lifecycle_env, Runs()
    replica_redis = [Redis.from_url(env.redis_server.url, decode_responses=True) for _ in range(3)]
    replicas = [scheduler(env, [runs.task("auto-stop"), runs.task("outbox", 5.0)], redis) for redis in replica_redis]

    async def tick_all() -> None:
        await asyncio.gather(*(replica.run_due() for replica in replicas))

    await tick_all()
    await tick_all()
    assert runs.count == {"auto-stop": 1, "outbox": 1}
    env.clock.advance(4.9)
    await tick_all()
    assert runs.count == {"auto-stop": 1, "outbox": 1}
    env.clock.advance(0.1)
    await tick_all()
    assert runs.count == {"auto-stop": 1, "outbox": 2}
    env.clock.advance(PERIOD - 5.0)
    await tick_all()
    assert runs.count == {"auto-stop": 2, "outbox": 3}
    for redis in replica_redis:
        await redis.aclose()


async def test_a_restarted_replica_does_not_run_early_but_a_flushed_valkey_runs_at_once(
    lifecycle_env: LifecycleEnv,
) -> None:
    env, runs = lifecycle_env, Runs()
    assert await scheduler(env, [runs.task("reconcile")]).run_due() == ["reconcile"]
    env.clock.advance(30)

    restarted = scheduler(env, [runs.task("reconcile")])  # a new process, same Valkey
    assert await restarted.run_due() == []
    env.clock.advance(30)
    assert await restarted.run_due() == ["reconcile"]

    env.redis_server.flushall()
    assert await restarted.run_due() == ["reconcile"]  # nothing remembered: due now (reconcile restores records)
    assert runs.count["reconcile"] == 3


async def test_a_slow_run_never_overlaps_the_next_one(lifecycle_env: LifecycleEnv) -> None:
    env = lifecycle_env
    started, release = asyncio.Event(), asyncio.Event()
    concurrent = 0
    most_concurrent = 0

    async def slow() -> None:
        nonlocal concurrent, most_concurrent
        concurrent += 1
        most_concurrent = max(most_concurrent, concurrent)
        started.set()
        await release.wait()
        concurrent -= 1

    other_redis = Redis.from_url(env.redis_server.url, decode_responses=True)
    first = scheduler(env, [PeriodicTask("spot", PERIOD, slow, lease_seconds=30)])
    second = scheduler(env, [PeriodicTask("spot", PERIOD, slow, lease_seconds=30)], other_redis)
    running = asyncio.create_task(first.run_due())
    await started.wait()
    env.clock.advance(PERIOD * 3)  # overdue, but the first run still holds the lease

    assert await second.run_due() == []
    release.set()
    assert await running == ["spot"]
    assert await second.run_due() == ["spot"]
    assert most_concurrent == 1
    await other_redis.aclose()


async def test_a_failing_task_does_not_stop_the_others_and_runs_again_next_period(
    lifecycle_env: LifecycleEnv, caplog: pytest.LogCaptureFixture
) -> None:
    env, runs = lifecycle_env, Runs()
    attempts = 0

    async def broken() -> None:
        nonlocal attempts
        attempts += 1
        raise RuntimeError("Novita is down")

    tasks = [PeriodicTask("broken", PERIOD, broken), runs.task("healthy")]
    ticker = scheduler(env, tasks)
    assert await ticker.run_due() == ["broken", "healthy"]
    env.clock.advance(PERIOD)
    assert await ticker.run_due() == ["broken", "healthy"]
    assert attempts == 2 and runs.count["healthy"] == 2
    assert "lifecycle task failed" in caplog.text


async def test_run_forever_ticks_until_cancelled(lifecycle_env: LifecycleEnv) -> None:
    env, runs = lifecycle_env, Runs()
    ticks = 0
    done = asyncio.Event()

    async def fake_sleep(seconds: float) -> None:
        nonlocal ticks
        ticks += 1
        env.clock.advance(seconds)
        if ticks == 100:
            done.set()
        await asyncio.sleep(0)

    ticker = LifecycleScheduler(
        env.redis, [runs.task("reconcile")], tick_seconds=1.0, clock=env.clock, sleep=fake_sleep
    )
    loop = asyncio.create_task(ticker.run_forever())
    await done.wait()
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop
    assert runs.count["reconcile"] == 2  # at t=0 and t=60 within 100 simulated seconds


def test_task_names_must_be_unique() -> None:
    noop: Callable[[], Awaitable[None]] = asyncio.sleep  # type: ignore[assignment]
    with pytest.raises(ValueError, match="unique"):
        LifecycleScheduler(None, [PeriodicTask("a", 1, noop), PeriodicTask("a", 2, noop)])  # type: ignore[arg-type]


async def test_stops_even_when_a_task_swallows_the_cancellation(lifecycle_env: LifecycleEnv) -> None:
    started = asyncio.Event()

    async def swallows_cancel() -> None:  # what a redis-py command can do when cancelled mid-way
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return

    ticker = LifecycleScheduler(
        lifecycle_env.redis,
        [PeriodicTask("swallow", PERIOD, swallows_cancel)],
        tick_seconds=0.01,
        clock=lifecycle_env.clock,
    )
    loop = asyncio.create_task(ticker.run_forever())
    await started.wait()
    loop.cancel()
    done, _ = await asyncio.wait({loop}, timeout=2)
    assert done and loop.cancelled()
