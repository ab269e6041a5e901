"""The worker: reads jobs from the stream, runs their handlers and records the outcome (see app/jobs/queue.py).

Delivery is at-least-once. An entry is acknowledged only in the same transaction that records the job's outcome, so
a worker that dies mid-job leaves it in the consumer group's pending list, where any worker (this replica after a
restart, or another one) claims it with XAUTOCLAIM once it has been idle for the visibility timeout. A running job
keeps its entry fresh (heartbeat) and holds a per-job lock, so a slow job is not run twice at the same time.
Handlers must therefore be idempotent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
import time
import uuid
from typing import Any, cast

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.core.config import Settings
from app.core.metrics import Metrics
from app.core.redis import Lease, texts
from app.jobs.queue import (
    CONSUMER_GROUP,
    DEAD_KEY,
    FAILED_JOBS_KEPT,
    FAILED_KEY,
    LOCK_KEY_PREFIX,
    RESCHEDULE_SCRIPT,
    SCHEDULED_KEY,
    STREAM_KEY,
    WOKEN_KEY_PREFIX,
    Handler,
    Job,
    JobContext,
    JobFailed,
    JobQueue,
    RetryLater,
    job_key,
)

logger = logging.getLogger(__name__)

_CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
# What XREADGROUP answers on our decoding client: [(stream, [(entry id, fields)])].
_StreamRead = list[tuple[str, list[tuple[str, dict[str, str]]]]]

# Take the job's lock and begin an attempt, in one step (one round trip where a lock, a read and a start took three:
# a create takes several steps, and a burst of them is bound by the API's one core). The attempt begins only while
# the job may run (queued, or running under a worker that died): atomic against a cancel, which changes only queued or
# scheduled jobs. Answers {} when another worker holds the lock; {state} ('' for no job) when the job must not run,
# the lock then being ours to release; else the job's fields, its state running and the attempt counted.
_CLAIM_SCRIPT = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {} end
local state = redis.call('HGET', KEYS[2], 'state')
if state ~= 'queued' and state ~= 'running' then return {state or ''} end
redis.call('HINCRBY', KEYS[2], 'attempts', 1)
redis.call('HSET', KEYS[2], 'state', 'running', 'updated_at', ARGV[3])
return redis.call('HGETALL', KEYS[2])
"""

# How long the best-effort bookkeeping of an interrupted job may delay shutdown.
_INTERRUPT_BOOKKEEPING_SECONDS = 1.0
# How long cancelled loops may take to end (they only have the bookkeeping above left to do).
_STOP_TIMEOUT_SECONDS = 5.0


class Worker:
    """Runs registered handlers for queued jobs: `job_concurrency` consumers, a reclaimer and a scheduler."""

    def __init__(self, queue: JobQueue, settings: Settings, metrics: Metrics, *, consumer_name: str | None = None):
        self._queue = queue
        self._redis = queue.redis
        self._settings = settings
        self._metrics = metrics
        self._handlers: dict[str, Handler] = {}
        self.consumer_name = consumer_name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._visibility_ms = int(settings.job_visibility_timeout_seconds * 1000)
        self._runners: list[asyncio.Task[None]] = []
        self._scheduler: asyncio.Task[None] | None = None
        self._busy: set[asyncio.Task[Any]] = set()
        self._group_ready = False
        self._stopping = False

    def register(self, kind: str, handler: Handler) -> None:
        """Run `handler` for jobs of `kind`."""
        self._handlers[kind] = handler

    @property
    def running(self) -> bool:
        """True while every consumer loop is alive and no shutdown has begun."""
        return bool(self._runners) and not self._stopping and all(not task.done() for task in self._runners)

    async def start(self) -> None:
        """Start consuming; safe while Valkey is down (the loops wait and retry)."""
        if self._runners:
            return
        self._runners = [
            asyncio.create_task(self._consume_loop(), name=f"job-consumer-{index}")
            for index in range(self._settings.job_concurrency)
        ]
        self._runners.append(asyncio.create_task(self._reclaim_loop(), name="job-reclaimer"))
        self._scheduler = asyncio.create_task(self._schedule_loop(), name="job-scheduler")
        logger.info("job worker started", extra={"consumer": self.consumer_name})

    async def stop(self, grace_seconds: float) -> None:
        """Stop taking jobs; let running jobs finish for up to `grace_seconds`, then interrupt them.

        An interrupted job stays unacknowledged, so another worker (or this one after a restart) reclaims it.
        """
        self._stopping = True
        if not self._runners:
            return  # never started (Valkey never answered)
        if self._scheduler is not None:
            self._scheduler.cancel()
        busy = [task for task in self._runners if task in self._busy]
        for task in self._runners:
            if task not in self._busy:
                task.cancel()
        if busy:
            _, unfinished = await asyncio.wait(busy, timeout=grace_seconds)
            for task in unfinished:
                logger.warning("interrupting a running job at shutdown; it will be reclaimed")
                task.cancel()
        tasks = [*self._runners, *(t for t in [self._scheduler] if t)]
        _, stuck = await asyncio.wait(tasks, timeout=_STOP_TIMEOUT_SECONDS)
        if stuck:  # never expected; bounded so that a bug cannot hang the process's shutdown
            logger.error("job worker tasks did not stop", extra={"tasks": sorted(t.get_name() for t in stuck)})
        await self._leave_group()
        logger.info("job worker stopped", extra={"consumer": self.consumer_name})

    # -- loops -------------------------------------------------------------------------------------------------------

    async def _consume_loop(self) -> None:
        block_ms = int(self._settings.job_read_block_seconds * 1000)
        while not self._stopping:
            try:
                await self._ensure_group()
                response = await self._redis.blocking_client.xreadgroup(
                    CONSUMER_GROUP, self.consumer_name, {STREAM_KEY: ">"}, count=1, block=block_ms
                )
                for _stream, entries in cast(_StreamRead, response or []):
                    for entry_id, fields in entries:
                        await self._process_entry(entry_id, fields)
            except ResponseError as error:
                await self._on_response_error(error)
            except _CONNECTION_ERRORS as error:
                await self._on_connection_error(error)

    async def _reclaim_loop(self) -> None:
        cursor = "0-0"
        while not self._stopping:
            try:
                await self._ensure_group()
                cursor, entries, *_ = await self._redis.client.xautoclaim(
                    STREAM_KEY, CONSUMER_GROUP, self.consumer_name, self._visibility_ms, start_id=cursor, count=1
                )
                for entry_id, fields in entries:
                    logger.warning("reclaimed a job left unfinished by a worker", extra={"entry": entry_id})
                    await self._process_entry(entry_id, fields)
                if not entries and cursor == "0-0":
                    await asyncio.sleep(self._settings.job_reclaim_interval_seconds)
            except ResponseError as error:
                await self._on_response_error(error)
            except _CONNECTION_ERRORS as error:
                await self._on_connection_error(error)

    async def _schedule_loop(self) -> None:
        while True:
            try:
                await self._queue.promote_due()
            except _CONNECTION_ERRORS as error:
                self._redis.record_failure(error)
            await asyncio.sleep(self._settings.job_scheduler_interval_seconds)

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self._redis.client.xgroup_create(STREAM_KEY, CONSUMER_GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        self._group_ready = True

    async def _on_response_error(self, error: ResponseError) -> None:
        if "NOGROUP" in str(error):  # Valkey lost its data (restart without persistence): recreate the group
            self._group_ready = False
            return
        logger.error("unexpected Valkey error in the job worker", extra={"error": str(error)})
        await asyncio.sleep(1.0)

    async def _on_connection_error(self, error: BaseException) -> None:
        self._redis.record_failure(error)
        logger.warning("job worker cannot reach Valkey; retrying", extra={"error": self._redis.last_error})
        await asyncio.sleep(random.uniform(0.5, 1.5))

    # -- one job -----------------------------------------------------------------------------------------------------

    async def _process_entry(self, entry_id: str, fields: dict[str, str]) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._busy.add(task)
        try:
            await self._process_locked(entry_id, fields.get("job"))
        finally:
            self._busy.discard(task)

    async def _process_locked(self, entry_id: str, job_id: str | None) -> None:
        client = self._redis.client
        if not job_id:
            await self._acknowledge(entry_id)
            return
        lock = Lease(client, f"{LOCK_KEY_PREFIX}{job_id}", self._settings.job_visibility_timeout_seconds)
        claimed = texts(
            await client.eval(_CLAIM_SCRIPT, 2, lock.key, job_key(job_id), lock.token, lock.ttl_ms, repr(time.time()))
        )
        if not claimed:
            return  # another worker is running it and will acknowledge this entry when done
        try:
            if len(claimed) == 1:  # a duplicate delivery of a job settled, rescheduled or cancelled: it must not run
                await self._acknowledge(entry_id)
                if claimed[0] == "cancelled":
                    logger.info("job not started: it was cancelled", extra={"jobId": job_id})
                return
            await self._run(entry_id, Job.from_record(dict(zip(claimed[0::2], claimed[1::2], strict=True))), lock)
        finally:
            try:
                async with asyncio.timeout(_INTERRUPT_BOOKKEEPING_SECONDS):
                    await lock.release()
            except (*_CONNECTION_ERRORS, TimeoutError):
                pass  # the lock expires by itself

    async def _run(self, entry_id: str, job: Job, lock: Lease) -> None:
        """Run an attempt the claim began (`job` as it began: running, its attempts counted)."""
        if job.attempts > self._settings.job_max_attempts:
            # Only reachable when earlier attempts never recorded an outcome: the job keeps killing its worker.
            await self._bury(entry_id, job, job.last_error or "the worker stopped during every attempt")
            return
        handler = self._handlers.get(job.kind)
        log_fields = {"jobId": job.id, "kind": job.kind, "attempt": job.attempts}
        logger.info("job started", extra=log_fields)
        heartbeat = asyncio.create_task(self._heartbeat(entry_id, lock))
        started = time.monotonic()
        try:
            if handler is None:
                raise LookupError(f"no handler registered for job kind '{job.kind}'")
            result = await handler(JobContext(job=job, queue=self._queue))
        except RetryLater as later:
            await self._reschedule(entry_id, job, later.delay_seconds, later.reason, count_attempt=False)
            self._count(job, "rescheduled")
        except JobFailed as failure:
            await self._settle(entry_id, job, state="failed", error=str(failure))
            self._count(job, "failed")
            logger.warning("job failed permanently", extra={**log_fields, "error": str(failure)})
        except asyncio.CancelledError:
            await self._mark_interrupted(job)
            self._count(job, "interrupted")
            raise
        except Exception as error:  # a handler bug or an upstream failure: retry with backoff, then dead-letter
            message = f"{type(error).__name__}: {error}"
            if job.attempts >= self._settings.job_max_attempts:
                await self._bury(entry_id, job, message)
            else:
                await self._reschedule(entry_id, job, self._backoff(job.attempts), message, count_attempt=True)
                self._count(job, "retried")
                logger.warning("job attempt failed; retrying", extra={**log_fields, "error": message})
        else:
            await self._settle(entry_id, job, state="succeeded", result=result)
            self._count(job, "succeeded")
            logger.info("job succeeded", extra=log_fields)
        finally:
            heartbeat.cancel()
            self._metrics.job_duration.labels(job.kind).observe(time.monotonic() - started)

    async def _heartbeat(self, entry_id: str, lock: Lease) -> None:
        """Keep the lock and the pending entry fresh while a handler runs longer than the visibility timeout."""
        client = self._redis.client
        while True:
            await asyncio.sleep(self._settings.job_visibility_timeout_seconds / 3)
            try:
                if not await lock.extend():
                    logger.warning("job lock lost while running", extra={"entry": entry_id})
                # Re-claiming our own entry resets its idle time, so XAUTOCLAIM elsewhere leaves it alone.
                await client.xclaim(STREAM_KEY, CONSUMER_GROUP, self.consumer_name, 0, [entry_id], justid=True)
            except _CONNECTION_ERRORS as error:
                self._redis.record_failure(error)
            except RedisError as error:  # a missed beat is survivable; a heartbeat task dead of an exception is not
                logger.warning("job heartbeat failed", extra={"entry": entry_id, "error": str(error)})

    def _backoff(self, attempts: int) -> float:
        base = self._settings.job_retry_base_seconds * 2 ** (attempts - 1)
        return min(self._settings.job_retry_max_seconds, base) * random.uniform(0.8, 1.2)

    def _count(self, job: Job, outcome: str) -> None:
        self._metrics.jobs_processed.labels(job.kind, outcome).inc()

    # -- recording outcomes: each one acknowledges the entry in the same transaction ---------------------------------

    async def _settle(
        self, entry_id: str, job: Job, *, state: str, result: dict[str, Any] | None = None, error: str | None = None
    ) -> None:
        key = job_key(job.id)
        fields: dict[Any, str] = {"state": state, "updated_at": repr(time.time()), "last_error": error or ""}
        if result is not None:
            fields["result"] = json.dumps(result, default=str)
        async with self._redis.client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, self._settings.job_retention_seconds)
            if state == "failed":  # listed in the same step, so the jobs page's failed list misses none
                pipe.zadd(FAILED_KEY, {job.id: time.time()})
                pipe.zremrangebyrank(FAILED_KEY, 0, -(FAILED_JOBS_KEPT + 1))
            pipe.xack(STREAM_KEY, CONSUMER_GROUP, entry_id)
            pipe.xdel(STREAM_KEY, entry_id)
            await pipe.execute()

    async def _reschedule(self, entry_id: str, job: Job, delay: float, reason: str, *, count_attempt: bool) -> None:
        key = job_key(job.id)
        async with self._redis.client.pipeline(transaction=True) as pipe:
            if not count_attempt:
                pipe.hincrby(key, "attempts", -1)
            pipe.hset(key, mapping={"state": "scheduled", "updated_at": repr(time.time()), "last_error": reason})
            if count_attempt:  # a retry after a failure keeps its backoff
                pipe.zadd(SCHEDULED_KEY, {job.id: time.time() + delay})
            else:  # a watching job woken while it ran (its news arrived meanwhile) is due at once
                now = time.time()
                pipe.eval(
                    RESCHEDULE_SCRIPT,
                    2,
                    SCHEDULED_KEY,
                    f"{WOKEN_KEY_PREFIX}{job.id}",
                    repr(now),
                    repr(now + delay),
                    job.id,
                )
            pipe.xack(STREAM_KEY, CONSUMER_GROUP, entry_id)
            pipe.xdel(STREAM_KEY, entry_id)
            await pipe.execute()

    async def _bury(self, entry_id: str, job: Job, error: str) -> None:
        key = job_key(job.id)
        async with self._redis.client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"state": "dead", "updated_at": repr(time.time()), "last_error": error})
            pipe.zadd(DEAD_KEY, {job.id: time.time()})
            pipe.xack(STREAM_KEY, CONSUMER_GROUP, entry_id)
            pipe.xdel(STREAM_KEY, entry_id)
            await pipe.execute()
        self._count(job, "dead")
        logger.error("job dead-lettered", extra={"jobId": job.id, "kind": job.kind, "error": error})

    async def _mark_interrupted(self, job: Job) -> None:
        """Give back the attempt of a job cut short by shutdown; its entry stays pending for reclaim."""
        key = job_key(job.id)
        try:
            async with self._redis.client.pipeline(transaction=True) as pipe:
                pipe.hincrby(key, "attempts", -1)
                pipe.hset(key, mapping={"state": "queued", "updated_at": repr(time.time())})
                async with asyncio.timeout(_INTERRUPT_BOOKKEEPING_SECONDS):
                    await pipe.execute()
        except (*_CONNECTION_ERRORS, TimeoutError):
            pass  # the reclaimed attempt is then counted, which only shortens the retry budget by one

    async def _acknowledge(self, entry_id: str) -> None:
        async with self._redis.client.pipeline(transaction=True) as pipe:
            pipe.xack(STREAM_KEY, CONSUMER_GROUP, entry_id)
            pipe.xdel(STREAM_KEY, entry_id)
            await pipe.execute()

    async def _leave_group(self) -> None:
        """Remove this consumer from the group when it holds no pending entry, so restarts do not pile up names."""
        try:
            consumers = await self._redis.client.xinfo_consumers(STREAM_KEY, CONSUMER_GROUP)
            mine = next((c for c in consumers if c["name"] == self.consumer_name), None)
            if mine is not None and int(mine["pending"]) == 0:
                await self._redis.client.xgroup_delconsumer(STREAM_KEY, CONSUMER_GROUP, self.consumer_name)
        except (*_CONNECTION_ERRORS, ResponseError):
            pass
