"""Queue: jobs/s through Valkey with a no-op handler, and enqueue-to-start latency, for `app.jobs` and for saq
(an established asyncio Redis queue, installed only for the benchmark) on the same redis-server.

Both run the same workload in this process, with the same worker concurrency and the same definitions:
- throughput: a burst of jobs enqueued by `PRODUCERS` concurrent producers; jobs/s = jobs / (first enqueue to the
  last handler start);
- latency: jobs enqueued one at a time every `PACE_SECONDS` on an idle queue; latency = handler start - the moment
  just before `enqueue` was called (so it includes the enqueue round trip).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from app.core.config import Settings
from app.core.metrics import Metrics
from app.core.redis import RedisManager
from app.jobs.queue import JobContext, JobQueue
from app.jobs.worker import Worker
from bench.report import Report, Row, ms, ratio
from bench.services import Services

SECTION = "Job queue (no-op handler, worker concurrency 4, same redis-server)"
CONCURRENCY = 4  # consumers here (the app's JOB_CONCURRENCY is 8 since the fleet-scale runs: docs/performance.md)
PRODUCERS = 8
PACE_SECONDS = 0.01
_WAIT_SLACK_SECONDS = 60.0

Enqueue = Callable[[float], Awaitable[Any]]


@dataclass
class Recorder:
    """What the no-op handler writes: the enqueue-to-start latency of each job and when the last one started."""

    expected: int = 0
    latencies: list[float] = field(default_factory=list)
    last_start: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def started(self, enqueued_at: float) -> None:
        """Called first thing by the handler."""
        now = time.time()
        self.latencies.append(now - enqueued_at)
        self.last_start = now
        if len(self.latencies) >= self.expected:
            self.done.set()

    def expect(self, count: int) -> None:
        """Start a new phase of `count` jobs."""
        self.expected, self.latencies, self.done = count, [], asyncio.Event()


@dataclass(frozen=True)
class QueueResult:
    """The two figures of one library."""

    jobs_per_second: float
    p50_seconds: float
    p99_seconds: float


async def _measure(enqueue: Enqueue, recorder: Recorder, burst: int, paced: int) -> QueueResult:
    recorder.expect(burst)
    pending = iter(range(burst))
    started = time.time()

    async def producer() -> None:
        for _ in pending:  # the producers share one iterator: `burst` jobs in all
            await enqueue(time.time())

    await asyncio.gather(*(producer() for _ in range(PRODUCERS)))
    await asyncio.wait_for(recorder.done.wait(), _WAIT_SLACK_SECONDS + burst / 100)
    jobs_per_second = burst / (recorder.last_start - started)

    recorder.expect(paced)
    for _ in range(paced):
        await enqueue(time.time())
        await asyncio.sleep(PACE_SECONDS)
    await asyncio.wait_for(recorder.done.wait(), _WAIT_SLACK_SECONDS)
    latencies = sorted(recorder.latencies)
    return QueueResult(jobs_per_second, statistics.median(latencies), _percentile(latencies, 0.99))


async def _ours(redis_url: str, burst: int, paced: int) -> QueueResult:
    settings = Settings(
        redis_url=SecretStr(redis_url),
        novita_api_key=SecretStr("bench-unused"),
        job_concurrency=CONCURRENCY,
        job_read_block_seconds=1.0,
    )
    redis = RedisManager(settings)
    await redis.wait_until_connected()
    queue = JobQueue(redis)
    worker = Worker(queue, settings, Metrics())
    recorder = Recorder()

    async def noop(context: JobContext) -> None:
        recorder.started(context.job.payload["enqueued_at"])

    worker.register("bench.noop", noop)
    await worker.start()
    try:
        return await _measure(lambda at: queue.enqueue("bench.noop", {"enqueued_at": at}), recorder, burst, paced)
    finally:
        await worker.stop(grace_seconds=5)
        await redis.close()


async def _saq(redis_url: str, burst: int, paced: int) -> QueueResult:
    from saq import Queue
    from saq import Worker as SaqWorker
    from saq.types import Context

    queue = Queue.from_url(redis_url, name="bench")
    recorder = Recorder()

    async def noop(ctx: Context, *, enqueued_at: float) -> None:
        recorder.started(enqueued_at)

    worker = SaqWorker(queue, functions=[("noop", noop)], concurrency=CONCURRENCY)
    await queue.connect()
    running = asyncio.create_task(worker.start())
    try:
        return await _measure(lambda at: queue.enqueue("noop", enqueued_at=at), recorder, burst, paced)
    finally:
        await worker.stop()
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await queue.disconnect()


def run(services: Services, report: Report, burst: int, paced: int) -> None:
    """Run both libraries' workloads, ours first, each on an emptied database."""
    logging.getLogger("saq").setLevel(logging.ERROR)  # its shutdown warning is expected here
    services.redis.flushall()
    ours = asyncio.run(_ours(services.redis.url, burst, paced))
    theirs: QueueResult | None = None
    if importlib.util.find_spec("saq") is None:
        report.note("saq is not installed (`pip install -r bench/requirements.txt`): queue rows have no baseline")
    else:
        services.redis.flushall()
        theirs = asyncio.run(_saq(services.redis.url, burst, paced))
    services.redis.flushall()
    report.add(
        Row(
            SECTION,
            f"throughput, burst of {burst:,} jobs from {PRODUCERS} producers",
            f"{ours.jobs_per_second:,.0f} jobs/s",
            f"saq: {theirs.jobs_per_second:,.0f} jobs/s" if theirs else "-",
            ratio(ours.jobs_per_second, theirs.jobs_per_second) if theirs else None,
        )
    )
    report.add(
        Row(
            SECTION,
            f"enqueue-to-start latency, {paced} jobs every {PACE_SECONDS * 1000:g} ms",
            f"p50 {ms(ours.p50_seconds)}, p99 {ms(ours.p99_seconds)}",
            f"saq: p50 {ms(theirs.p50_seconds)}, p99 {ms(theirs.p99_seconds)}" if theirs else "-",
            ratio(ours.p50_seconds, theirs.p50_seconds) if theirs else None,  # of the p50s: below 1 is faster
        )
    )


def _percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]
