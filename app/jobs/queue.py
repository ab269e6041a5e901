"""A durable job queue on Valkey Streams: what a job is, how it is accepted, scheduled and dead-lettered.

Layout (every key under `ngpu:`):
- `ngpu:job:<id>`        hash: the job record (state, attempts, last error, payload, result).
- `ngpu:jobs:stream`     stream of `{job: <id>}` entries, read by the consumer group `workers`; an entry stays in the
                         group's pending list until a worker records the outcome, so a worker that dies mid-job does
                         not lose it (another worker claims it after the visibility timeout).
- `ngpu:jobs:scheduled`  sorted set id -> due time: delayed jobs, retries with backoff and `RetryLater` polls. A Lua
                         script moves due ids to the stream atomically, so several replicas never double-promote.
- `ngpu:jobs:dead`       sorted set id -> time: jobs that exhausted their attempts, listable.
- `ngpu:jobs:failed`     sorted set id -> time: the newest `FAILED_JOBS_KEPT` jobs that failed permanently
                         (`JobFailed`), written in the worker's transaction that marks the job failed; ids whose
                         record has expired leave it when it is read.
- `ngpu:job-lock:<id>`   per-job lock so one job never runs twice at the same time across replicas.
- `ngpu:job-woken:<id>`  a wake (`JobQueue.wake`) that found the job running rather than scheduled: its next
                         `RetryLater` is due at once instead of after its delay, so no news is lost to that race.
- a list of the caller's (`enqueue(listed_in=<key>)`): sorted set id -> queued at, the newest `LISTED_JOBS_KEPT`
                         kept, written in the enqueue's own script (e.g. an instance's jobs, keyed by its owner).
The worker that executes jobs is in `app/jobs/worker.py`.

Cancel and requeue are Lua scripts on the job's record, so they are atomic against each other, against other replicas
and against the worker, which starts an attempt with a script too (`queued`/`running` -> `running`): whichever runs
first wins. A job cancelled while its stream entry is already delivered to a worker is never run: the worker's start
script sees `cancelled`, and the entry is acknowledged unrun.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.core.errors import ServiceUnavailable
from app.core.redis import RedisManager, text_hash, texts

KEY_PREFIX = "ngpu:"
STREAM_KEY = f"{KEY_PREFIX}jobs:stream"
SCHEDULED_KEY = f"{KEY_PREFIX}jobs:scheduled"
DEAD_KEY = f"{KEY_PREFIX}jobs:dead"
FAILED_KEY = f"{KEY_PREFIX}jobs:failed"
JOB_KEY_PREFIX = f"{KEY_PREFIX}job:"
LOCK_KEY_PREFIX = f"{KEY_PREFIX}job-lock:"
WOKEN_KEY_PREFIX = f"{KEY_PREFIX}job-woken:"
# How long a wake waits for the running job to reschedule itself (a job step is far shorter).
WOKEN_TTL_SECONDS = 60
CONSUMER_GROUP = "workers"

TERMINAL_STATES = frozenset({"succeeded", "failed", "dead", "cancelled"})
# States a job can be cancelled in: it is waiting, not running.
CANCELLABLE_STATES = frozenset({"queued", "scheduled"})
# How many of the newest jobs a list (`enqueue(listed_in=...)`) keeps; older ids leave it as new ones arrive.
LISTED_JOBS_KEPT = 100
# How many of the newest permanently failed jobs `ngpu:jobs:failed` keeps (their records expire with the retention).
FAILED_JOBS_KEPT = 100

# Create the job record and make it deliverable in one atomic step: either both exist or neither does. With a 4th
# key, the job also joins that list (by its queue time), which is trimmed to its newest ARGV[4] ids in the same step.
_ENQUEUE_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
if tonumber(ARGV[2]) > 0 then
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
else
  redis.call('XADD', KEYS[2], '*', 'job', ARGV[1])
end
if KEYS[4] then
  redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
  local extra = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[4])
  if extra > 0 then redis.call('ZREM', KEYS[4], unpack(redis.call('ZRANGE', KEYS[4], 0, extra - 1))) end
end
return 1
"""

# Move due scheduled jobs to the stream; ZREM and XADD in one script, so each id is promoted exactly once.
_PROMOTE_SCRIPT = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  local job_key = ARGV[3] .. id
  if redis.call('EXISTS', job_key) == 1 then
    redis.call('HSET', job_key, 'state', 'queued', 'updated_at', ARGV[1])
    redis.call('XADD', KEYS[2], '*', 'job', id)
  end
end
return #due
"""

# Wake jobs: a scheduled one becomes due now; one that is not scheduled (running right now) is marked woken, so that
# the reschedule it is about to write (RESCHEDULE_SCRIPT) makes it due now. ARGV: now, woken TTL, woken key prefix,
# then the ids.
_WAKE_SCRIPT = """
for i = 4, #ARGV do
  local id = ARGV[i]
  if redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZADD', KEYS[1], 'LT', ARGV[1], id)
  else
    redis.call('SET', ARGV[3] .. id, '1', 'EX', ARGV[2])
  end
end
return 1
"""

# Schedule a job that asked to come back later (`RetryLater`): at ARGV[2], or at once (ARGV[1]) if it was woken while
# it ran. KEYS[1] the scheduled set, KEYS[2] the job's woken marker; ARGV[3] the job id.
RESCHEDULE_SCRIPT = """
local due = ARGV[2]
if redis.call('DEL', KEYS[2]) == 1 then due = ARGV[1] end
redis.call('ZADD', KEYS[1], due, ARGV[3])
return 1
"""

# Cancel a waiting job: returns the state it had ('' when there is no such job); only queued/scheduled change.
_CANCEL_SCRIPT = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return '' end
if state ~= 'queued' and state ~= 'scheduled' then return state end
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'updated_at', ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return state
"""

# Put a dead job back in the stream with a fresh attempt budget. Answers {the state it had} ('' when no such job),
# followed, when it was dead, by the job's fields as requeued: a worker may take it the moment it is in the stream,
# so a read after this script could already see it running.
_REQUEUE_SCRIPT = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {''} end
if state ~= 'dead' then return {state} end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], 'state', 'queued', 'attempts', '0', 'updated_at', ARGV[2], 'requeued_at', ARGV[2])
redis.call('PERSIST', KEYS[1])
local requeued = redis.call('HGETALL', KEYS[1])
redis.call('XADD', KEYS[3], '*', 'job', ARGV[1])
table.insert(requeued, 1, state)
return requeued
"""


def job_key(job_id: str) -> str:
    """Key of a job's record."""
    return f"{JOB_KEY_PREFIX}{job_id}"


@dataclass
class Job:
    """One unit of background work and its current state."""

    id: str
    kind: str
    payload: dict[str, Any]
    state: str  # queued | scheduled | running | succeeded | failed | dead | cancelled
    attempts: int = 0
    last_error: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    result: dict[str, Any] | None = None
    requeued_at: float = 0.0  # 0: never requeued

    @property
    def began_at(self) -> float:
        """When the current run of this job's work began: its creation, or its last requeue from the dead letters.

        Handlers count their deadlines from here, so a requeued job gets its full time again.
        """
        return self.requeued_at or self.created_at

    @classmethod
    def from_record(cls, record: dict[str, str]) -> Job:
        """Build from the stored hash."""
        return cls(
            id=record["id"],
            kind=record["kind"],
            payload=json.loads(record.get("payload") or "{}"),
            state=record["state"],
            attempts=int(record.get("attempts") or 0),
            last_error=record.get("last_error") or None,
            created_at=float(record.get("created_at") or 0),
            updated_at=float(record.get("updated_at") or 0),
            result=json.loads(record["result"]) if record.get("result") else None,
            requeued_at=float(record.get("requeued_at") or 0),
        )

    def to_record(self) -> dict[str, str]:
        """The hash stored in Valkey."""
        return {
            "id": self.id,
            "kind": self.kind,
            "payload": json.dumps(self.payload),
            "state": self.state,
            "attempts": str(self.attempts),
            "last_error": self.last_error or "",
            "created_at": repr(self.created_at),
            "updated_at": repr(self.updated_at),
            "result": json.dumps(self.result) if self.result is not None else "",
            "requeued_at": repr(self.requeued_at),
        }


@dataclass(frozen=True)
class QueueStats:
    """Counts for health and metrics."""

    depth: int  # in the stream, not yet delivered to a worker
    pending: int  # delivered, not yet acknowledged (running, or held by a worker that died)
    scheduled: int  # waiting for their due time
    dead: int  # exhausted their attempts


class RetryLater(Exception):
    """Raised by a handler to run the job again after `delay_seconds` (a polling step, not a failure).

    The attempt is not counted; the handler bounds how often it asks (e.g. by its own deadline).
    """

    def __init__(self, delay_seconds: float, reason: str = "") -> None:
        super().__init__(reason or f"retry in {delay_seconds} s")
        self.delay_seconds = delay_seconds
        self.reason = reason


class JobFailed(Exception):
    """Raised by a handler when retrying cannot help (e.g. the request is invalid): the job ends `failed` at once."""


@dataclass
class JobContext:
    """What a handler receives."""

    job: Job
    queue: JobQueue


Handler = Callable[[JobContext], Awaitable[dict[str, Any] | None]]


class JobQueue:
    """Accepts, reads back and lists jobs; see the module docstring for the layout."""

    def __init__(self, redis: RedisManager) -> None:
        self._redis = redis

    @property
    def redis(self) -> RedisManager:
        """The Valkey connection (for the worker)."""
        return self._redis

    async def enqueue(
        self,
        kind: str,
        payload: dict[str, Any],
        *,
        delay_seconds: float = 0.0,
        job_id: str | None = None,
        listed_in: str | None = None,
    ) -> Job:
        """Store a job durably and return it; with `job_id`, an existing job of that id is returned unchanged.

        With `listed_in` (a key under `ngpu:`), the new job also joins that list of jobs (`listed`), atomically with
        the enqueue. Returns only after Valkey acknowledged the write. Raises `ServiceUnavailable` when Valkey is
        down: nothing is accepted that was not written.
        """
        now = time.time()
        job = Job(
            id=job_id or uuid.uuid4().hex,
            kind=kind,
            payload=payload,
            state="scheduled" if delay_seconds > 0 else "queued",
            created_at=now,
            updated_at=now,
        )
        due_at = now + delay_seconds if delay_seconds > 0 else 0.0
        fields = [item for pair in job.to_record().items() for item in pair]
        keys = [job_key(job.id), STREAM_KEY, SCHEDULED_KEY, *([listed_in] if listed_in else [])]
        try:
            created = await self._redis.client.eval(
                _ENQUEUE_SCRIPT, len(keys), *keys, job.id, repr(due_at), repr(now), str(LISTED_JOBS_KEPT), *fields
            )
            if not created:
                existing = await self.get(job.id)
                if existing is not None:
                    return existing
        except (RedisConnectionError, RedisTimeoutError, OSError) as error:
            self._redis.record_failure(error)
            raise ServiceUnavailable("job queue unavailable (Valkey unreachable); the job was not accepted") from None
        return job

    async def get(self, job_id: str) -> Job | None:
        """The job's current record, or None."""
        record = text_hash(await self._redis.client.hgetall(job_key(job_id)))
        return Job.from_record(record) if record else None

    async def cancel(self, job_id: str, retention_seconds: int) -> str | None:
        """Cancel the job if it is waiting (queued or scheduled); returns the state it had, None if it does not exist.

        A cancelled job never runs: a scheduled one leaves the schedule, and a stream entry already delivered is
        acknowledged unrun by the worker (see the module docstring).
        """
        state = await self._redis.client.eval(
            _CANCEL_SCRIPT, 2, job_key(job_id), SCHEDULED_KEY, job_id, repr(time.time()), str(retention_seconds)
        )
        return state or None

    async def requeue(self, job_id: str) -> tuple[str | None, Job | None]:
        """Queue a dead job again with its attempts reset; returns the state it had (None if it does not exist) and,
        when it was dead, the job as requeued."""
        answer = texts(
            await self._redis.client.eval(
                _REQUEUE_SCRIPT, 3, job_key(job_id), DEAD_KEY, STREAM_KEY, job_id, repr(time.time())
            )
        )
        state, fields = answer[0], answer[1:]
        requeued = Job.from_record(dict(zip(fields[0::2], fields[1::2], strict=True))) if fields else None
        return state or None, requeued

    async def dead_letters(self, limit: int = 100) -> list[Job]:
        """Dead jobs, most recent first."""
        ids = await self._redis.client.zrevrange(DEAD_KEY, 0, max(0, limit - 1))
        jobs = [await self.get(job_id) for job_id in texts(ids)]
        return [job for job in jobs if job is not None]

    async def listed(self, list_key: str, limit: int) -> list[Job]:
        """The newest `limit` jobs of a list written by `enqueue(listed_in=list_key)`, newest first.

        Ids whose record has expired (finished longer ago than the retention) are dropped from the list here.
        """
        ids = [str(job_id) for job_id in await self._redis.client.zrevrange(list_key, 0, max(0, limit - 1))]
        async with self._redis.client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(job_key(job_id))
            records = await pipe.execute() if ids else []
        gone = [job_id for job_id, record in zip(ids, records, strict=True) if not record]
        if gone:
            await self._redis.client.zrem(list_key, *gone)
        return [Job.from_record(record) for record in records if record]

    async def failed(self, limit: int = FAILED_JOBS_KEPT) -> list[Job]:
        """Jobs that failed permanently, most recent first (the newest `FAILED_JOBS_KEPT` at most)."""
        return await self.listed(FAILED_KEY, limit)

    async def running(self, limit: int = 100) -> list[Job]:
        """Jobs a worker is running now, oldest delivery first: the consumer group's pending entries (delivered, not
        yet acknowledged) whose job is in state `running`. An entry held by a worker that died stays pending until
        it is reclaimed; its job shows here as running meanwhile, as its record says."""
        client = self._redis.client
        try:
            pending = await client.xpending_range(STREAM_KEY, CONSUMER_GROUP, min="-", max="+", count=limit)
        except ResponseError as error:
            if "NOGROUP" in str(error):  # no worker has read the stream yet: nothing runs
                return []
            raise
        if not pending:
            return []
        async with client.pipeline(transaction=False) as pipe:
            for entry in pending:
                pipe.xrange(STREAM_KEY, min=entry["message_id"], max=entry["message_id"])
            entries = await pipe.execute()
        job_ids = list(dict.fromkeys(found[0][1]["job"] for found in entries if found and "job" in found[0][1]))
        async with client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(job_key(job_id))
            records = await pipe.execute() if job_ids else []
        jobs = [Job.from_record(text_hash(record)) for record in records if record]
        return [job for job in jobs if job.state == "running"]

    async def depth(self) -> QueueStats:
        """Current counts; acknowledged entries are deleted, so the stream holds only waiting and pending ones."""
        async with self._redis.client.pipeline(transaction=False) as pipe:
            pipe.xlen(STREAM_KEY)
            pipe.zcard(SCHEDULED_KEY)
            pipe.zcard(DEAD_KEY)
            length, scheduled, dead = await pipe.execute()
        pending = 0
        if length:
            groups = await self._redis.client.xinfo_groups(STREAM_KEY)
            pending = sum(int(group["pending"]) for group in groups if group["name"] == CONSUMER_GROUP)
        return QueueStats(
            depth=max(0, int(length) - pending), pending=pending, scheduled=int(scheduled), dead=int(dead)
        )

    async def wake(self, job_ids: list[str]) -> None:
        """Make these jobs due now (watching jobs whose news just arrived): a scheduled one at once, one running right
        now as soon as it reschedules itself (see `RESCHEDULE_SCRIPT`). Jobs that never reschedule are untouched."""
        if job_ids:
            await self._redis.client.eval(
                _WAKE_SCRIPT, 1, SCHEDULED_KEY, repr(time.time()), str(WOKEN_TTL_SECONDS), WOKEN_KEY_PREFIX, *job_ids
            )

    async def promote_due(self, limit: int = 100) -> int:
        """Move scheduled jobs whose time has come into the stream; returns how many moved."""
        moved = await self._redis.client.eval(
            _PROMOTE_SCRIPT, 2, SCHEDULED_KEY, STREAM_KEY, repr(time.time()), str(limit), JOB_KEY_PREFIX
        )
        return int(moved)
