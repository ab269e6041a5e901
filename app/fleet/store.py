"""Instance records, create specs and idempotency keys on Valkey.

Keys (all under `ngpu:`):
- `ngpu:instance:<id>`        JSON of an `InstanceRecord` (no secrets).
- `ngpu:instance-spec:<id>`   JSON of the create request as the create job needs it, env values included; deleted as
                              soon as Novita has the instance, so secret env values live in Valkey only until then.
- `ngpu:instances...`         the list index (`app.fleet.index`), written in the record's own transactions.
- `ngpu:idempotency:<key>`    JSON `{fingerprint, instance_id, job_id}`, written with SET NX and a TTL.
- `ngpu:instance-jobs:<id>`   sorted set job id -> queued at: the instance's jobs, written by the job queue in the
                              enqueue's own script (`JobQueue.enqueue(listed_in=...)`); expires with the record.
- `ngpu:meter:...`            the cost meter's closed intervals (`app.fleet.meter`), written in the record's own
                              transactions, like the transition hooks' writes (the budgets' GPU reservations).

Every Valkey failure surfaces as `ServiceUnavailable` (503), never as a 500.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from app.core.clock import SYSTEM_CLOCK, WallClock
from app.core.redis import Lease, RedisManager, valkey_errors
from app.fleet import index, meter
from app.fleet.schemas import InstanceRecord, InstanceState

logger = logging.getLogger(__name__)

_PREFIX = "ngpu:"
# Records read per round trip when the automations walk every record, and ids per index write of the migration.
RECORD_BATCH = 500
# A deleted instance's record stays readable this long (to answer "what happened to it"), then expires.
DELETED_RECORD_RETENTION_SECONDS = 7 * 24 * 3600
# Records kept parsed for list pages (about 5 KB each): the pages people read, a few thousand records, while the
# automations' walks over every record parse theirs anew and so never evict these.
PARSED_PAGE_RECORDS = 2048


def _record_key(instance_id: str) -> str:
    return f"{_PREFIX}instance:{instance_id}"


def _spec_key(instance_id: str) -> str:
    return f"{_PREFIX}instance-spec:{instance_id}"


def instance_jobs_key(instance_id: str) -> str:
    """The sorted set of the jobs queued for an instance (the queue writes it; it expires with the record)."""
    return f"{_PREFIX}instance-jobs:{instance_id}"


def _idempotency_key(key: str) -> str:
    return f"{_PREFIX}idempotency:{key}"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@functools.lru_cache(maxsize=PARSED_PAGE_RECORDS)
def _parsed_for_page(raw: str) -> InstanceRecord:
    """A record of a list page, parsed once per stored version: the first pages are read over and over while their
    records rarely change, and parsing them was a fifth of a list request's CPU at 10,000 instances. Keyed by the
    stored JSON itself, so a changed record is parsed again. Shared between requests: `IndexPage.records` are read
    only."""
    return InstanceRecord.model_validate_json(raw)


class RecordNotFound(LookupError):
    """The record does not exist (any more)."""


@dataclass(frozen=True)
class IndexPage:
    """One page read from the index: the filter's total, and per member its record (or external view) and sync time."""

    total: int
    records: list[InstanceRecord]  # shared with other pages (parsed once per stored version): never modify them
    externals: list[dict[str, Any]]
    members: list[str]  # page order; each is a record id or an `ext:` member
    scores: list[float]
    synced_at: dict[str, float]
    sync_status: dict[str, str]  # the background sync's last report (read in the same round trip)


# Queues more writes in a record's transaction, given its state before (None: a new record) and the record as
# written, so a layer above reacts to transitions atomically without this module knowing its keys (the budgets
# release GPU reservations this way).
TransitionHook = Callable[[Pipeline, InstanceState | None, InstanceRecord], None]
# Told of each billed interval once its transaction committed (the spend counter of /metrics).
SegmentListener = Callable[[meter.Segment], None]


class InstanceStore:
    """Reads and writes instance records and their list index; the only module that knows their Valkey layout."""

    def __init__(self, redis: RedisManager, *, clock: WallClock = SYSTEM_CLOCK) -> None:
        self._redis = redis
        self._clock = clock  # the meter's time
        self._hooks: list[TransitionHook] = []
        self._segment_listeners: list[SegmentListener] = []

    def on_transition(self, hook: TransitionHook) -> None:
        """Run `hook` inside every record write's transaction."""
        self._hooks.append(hook)

    def on_segment(self, listener: SegmentListener) -> None:
        """Call `listener` with every billed interval this process closed."""
        self._segment_listeners.append(listener)

    @property
    def _client(self) -> Redis:
        return self._redis.client

    async def create(self, record: InstanceRecord, spec: dict[str, Any]) -> bool:
        """Write a new record, its create spec and its index entries at once; False if the record already exists."""
        async with valkey_errors():
            if await self._client.exists(_record_key(record.id)):
                return False
            meter.advance(record, self._clock())  # opens the meter (billed at once for an adopted running instance)
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.set(_record_key(record.id), record.model_dump_json(), nx=True)
                pipe.set(_spec_key(record.id), json.dumps(spec))
                _index_record(pipe, record)
                meter.queue_meter_writes(pipe, record, None)
                for hook in self._hooks:
                    hook(pipe, None, record)
                written, *_ = await pipe.execute()
            return bool(written)

    async def get(self, instance_id: str) -> InstanceRecord | None:
        """The record, or None."""
        async with valkey_errors():
            raw = await self._client.get(_record_key(instance_id))
        return InstanceRecord.model_validate_json(raw) if raw is not None else None

    async def get_many(self, instance_ids: list[str], batch: int = RECORD_BATCH) -> list[InstanceRecord]:
        """The records that exist among `instance_ids`, in their order, `batch` per round trip."""
        records: list[InstanceRecord] = []
        for start in range(0, len(instance_ids), batch):
            chunk = instance_ids[start : start + batch]
            async with valkey_errors():
                raws = await self._client.mget([_record_key(i) for i in chunk])
            records.extend(InstanceRecord.model_validate_json(raw) for raw in raws if raw is not None)
        return records

    async def list_all(self) -> list[InstanceRecord]:
        """Every record, newest first (small fleets and tests; the automations walk `iter_records`)."""
        records = [record async for record in self.iter_records()]
        return sorted(records, key=lambda record: record.created_at, reverse=True)

    async def iter_records(self, batch: int = RECORD_BATCH) -> AsyncIterator[InstanceRecord]:
        """Every record, oldest first, `batch` per round trip, so that memory stays bounded whatever the fleet size."""
        start = 0
        while True:
            async with valkey_errors():
                members = [_text(m) for m in await self._client.zrange(index.ALL_KEY, start, start + batch - 1)]
                ids = [m for m in members if not index.is_external(m)]
                raws = await self._client.mget([_record_key(i) for i in ids]) if ids else []
            for raw in raws:
                if raw is not None:
                    yield InstanceRecord.model_validate_json(raw)
            if len(members) < batch:
                return
            start += batch

    async def find_by_name(self, name: str) -> list[InstanceRecord]:
        """Records named exactly `name` that are not deleted (names are not unique), newest first."""
        return [record for record in await self.list_all() if record.name == name and record.state != "deleted"]

    async def update(
        self, instance_id: str, change: Callable[[InstanceRecord], None], *, checkpoint_meter: bool = False
    ) -> InstanceRecord:
        """Apply `change` to the record atomically (optimistic: re-read and re-apply if another writer won).

        A change of state or owning team moves the record between the sets of the index in the same transaction; a
        change of billing state closes the meter's interval in it too (`checkpoint_meter`: close it anyway, and open
        the next).
        """
        key = _record_key(instance_id)
        async with valkey_errors(), self._client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if raw is None:
                        raise RecordNotFound(instance_id)
                    record = InstanceRecord.model_validate_json(raw)
                    before = record.state, record.team
                    change(record)
                    closed = meter.advance(record, self._clock(), checkpoint=checkpoint_meter)
                    pipe.multi()
                    pipe.set(key, record.model_dump_json(), keepttl=True)
                    meter.queue_meter_writes(pipe, record, closed)
                    for hook in self._hooks:
                        hook(pipe, before[0], record)
                    if record.state != before[0]:
                        pipe.zrem(index.state_key(before[0]), record.id)
                        pipe.zadd(index.state_key(record.state), {record.id: record.created_at})
                    if (record.state, record.team) != before:
                        _unindex_team(pipe, record.id, *before)
                        _index_team(pipe, record)
                        pipe.incr(index.VERSION_COUNTER_KEY)
                    if record.state == InstanceState.DELETED:
                        pipe.expire(key, DELETED_RECORD_RETENTION_SECONDS)
                        pipe.expire(instance_jobs_key(record.id), DELETED_RECORD_RETENTION_SECONDS)
                        pipe.zadd(index.EXPIRING_KEY, {record.id: time.time() + DELETED_RECORD_RETENTION_SECONDS})
                    await pipe.execute()
                    if closed is not None:
                        for listener in self._segment_listeners:
                            listener(closed)
                    return record
                except WatchError:
                    continue

    # -- the list index ----------------------------------------------------------------------------------------

    async def page(
        self,
        *,
        state: InstanceState | None,
        name: str | None,
        offset: int,
        count: int,
        cursor: index.Cursor | None = None,
        team: str | None = None,
        order: index.ListOrder = "newest",
    ) -> IndexPage:
        """One page of the index (newest first, or by name) and the filter's total; reads only the page's records.

        With `team`, only that team's members (its own sorted sets); without, every member (what admins see).
        """
        if team is not None:
            set_key = index.team_key(team, state)
        else:
            set_key = index.state_key(state) if state is not None else index.ALL_KEY
        async with valkey_errors():
            answer = await self._client.eval(
                index.PAGE_SCRIPT,
                3,
                set_key,
                index.NAMES_KEY,
                index.VERSION_COUNTER_KEY,
                (name or "").casefold(),
                str(offset),
                str(count),
                repr(cursor.score) if cursor else "",
                cursor.member if cursor else "",
                index.MATCH_KEY_PREFIX,
                str(index.MATCH_TTL_SECONDS),
                order,
            )
            total, flat = int(answer[0]), [_text(value) for value in answer[1:]]
            members, scores = flat[0::2], [float(score) for score in flat[1::2]]
            ids = [m for m in members if not index.is_external(m)]
            external_ids = [m.removeprefix(index.EXTERNAL_MEMBER_PREFIX) for m in members if index.is_external(m)]
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.mget([_record_key(i) for i in ids] or ["ngpu:none"])
                pipe.mget([index.external_key(i) for i in external_ids] or ["ngpu:none"])
                pipe.hmget(index.SYNCED_AT_KEY, members or ["none"])
                pipe.hgetall(index.SYNC_STATUS_KEY)
                raw_records, raw_externals, synced, sync_status = await pipe.execute()
        records = [_parsed_for_page(raw) for raw in raw_records[: len(ids)] if raw is not None]
        externals = [json.loads(raw) for raw in raw_externals[: len(external_ids)] if raw is not None]
        found = {r.id for r in records} | {index.external_member(e["novitaInstanceId"]) for e in externals}
        gone = [m for m in members if m not in found]
        if gone:  # expired before the sync pruned them: drop them now (the page is short by these few)
            await self._unindex(gone)
        kept = [(m, s) for m, s in zip(members, scores, strict=True) if m in found]
        return IndexPage(
            total=total - len(gone),
            records=records,
            externals=externals,
            members=[m for m, _ in kept],
            scores=[s for _, s in kept],
            synced_at={m: float(v) for m, v in zip(members, synced, strict=False) if v is not None},
            sync_status={_text(k): _text(v) for k, v in sync_status.items()},
        )

    async def get_synced(self, instance_id: str) -> tuple[InstanceRecord | None, float | None]:
        """The record and when the background sync last saw it (`get` and `synced_at`), in one round trip."""
        async with valkey_errors(), self._client.pipeline(transaction=False) as pipe:
            pipe.get(_record_key(instance_id))
            pipe.hget(index.SYNCED_AT_KEY, instance_id)
            raw, synced = await pipe.execute()
        record = InstanceRecord.model_validate_json(raw) if raw is not None else None
        return record, float(synced) if synced is not None else None

    async def synced_at(self, instance_id: str) -> float | None:
        """When the background sync last saw the instance on Novita (the start of that sync's listing)."""
        async with valkey_errors():
            value = await self._client.hget(index.SYNCED_AT_KEY, instance_id)
        return float(value) if value is not None else None

    async def mark_synced(self, members: Iterable[str], at: float) -> None:
        """Note that one sync, whose listing began at `at`, saw these members on Novita."""
        pending = list(members)
        async with valkey_errors():
            for start in range(0, len(pending), RECORD_BATCH):
                chunk = pending[start : start + RECORD_BATCH]
                await self._client.hset(index.SYNCED_AT_KEY, mapping=dict.fromkeys(chunk, repr(at)))

    async def request_sync(self) -> None:
        """Ask for a background sync before its period ends (a job is waiting for news of its instance)."""
        async with valkey_errors():
            await self._client.set(index.SYNC_WANTED_KEY, "1", ex=60)

    async def take_sync_request(self) -> bool:
        """Whether a sync was asked for since the last one started (and clear the request)."""
        async with valkey_errors():
            return await self._client.getdel(index.SYNC_WANTED_KEY) is not None

    async def sync_status(self) -> dict[str, str]:
        """What the background sync last reported (`write_sync_status`), empty before the first one."""
        async with valkey_errors():
            return {_text(k): _text(v) for k, v in (await self._client.hgetall(index.SYNC_STATUS_KEY)).items()}

    async def write_sync_status(self, fields: dict[str, str | float | int]) -> None:
        """Record the sync's progress for `/health` and the lists' `novitaSynced` (shared by every replica)."""
        async with valkey_errors():
            await self._client.hset(index.SYNC_STATUS_KEY, mapping={k: str(v) for k, v in fields.items()})

    async def put_externals(self, views: dict[str, dict[str, Any]], scores: dict[str, float]) -> None:
        """Replace the views of instances made outside this service (by Novita id); unlisted ones leave the index."""
        async with valkey_errors():
            known = {_text(m) for m in await self._client.smembers(index.EXTERNALS_KEY)}
            current = {index.external_member(novita_id) for novita_id in views}
            async with self._client.pipeline(transaction=True) as pipe:
                for novita_id, view in views.items():
                    member = index.external_member(novita_id)
                    pipe.set(index.external_key(novita_id), json.dumps(view))
                    pipe.zadd(index.ALL_KEY, {member: scores[novita_id]})
                    pipe.hset(index.NAMES_KEY, member, str(view["name"]).casefold())
                    for state in InstanceState:  # its state may have changed since the last sync
                        if state != view["state"]:
                            pipe.zrem(index.state_key(state), member)
                    pipe.zadd(index.state_key(view["state"]), {member: scores[novita_id]})
                if views:
                    pipe.incr(index.VERSION_COUNTER_KEY)
                if current:
                    pipe.sadd(index.EXTERNALS_KEY, *current)
                await pipe.execute()
        gone = sorted(known - current)
        if gone:
            await self._unindex(gone)

    async def prune_expired(self, now: float) -> int:
        """Drop the index entries of deleted records whose retention ended; returns how many."""
        async with valkey_errors():
            expired = [_text(m) for m in await self._client.zrangebyscore(index.EXPIRING_KEY, "-inf", repr(now))]
            alive = await self._client.mget([_record_key(m) for m in expired]) if expired else []
        gone = [m for m, raw in zip(expired, alive, strict=True) if raw is None]
        if gone:
            await self._unindex(gone)
        return len(gone)

    async def ensure_index(self, *, lease_seconds: float = 120.0, poll_seconds: float = 0.1) -> int:
        """Build the index from the records if it was never built (records of a deployment that predates it).

        One replica builds it under a lease, `RECORD_BATCH` records per round trip (memory stays bounded); the
        others wait for it. Returns the number of records indexed here (0 when the index was already there).
        """
        async with valkey_errors():
            while await self._client.get(index.VERSION_KEY) != index.INDEX_VERSION:
                lease = Lease(self._client, index.BUILD_LEASE_KEY, lease_seconds)
                if not await lease.acquire():
                    await asyncio.sleep(poll_seconds)
                    continue
                try:
                    indexed = await self._build_index()
                    await self._client.set(index.VERSION_KEY, index.INDEX_VERSION)
                finally:
                    await lease.release()
                logger.info("built the instance list index from existing records", extra={"records": indexed})
                return indexed
        return 0

    async def _build_index(self) -> int:
        indexed, missing, start = 0, [], 0
        while True:
            ids = [_text(m) for m in await self._client.zrange(index.ALL_KEY, start, start + RECORD_BATCH - 1)]
            own = [i for i in ids if not index.is_external(i)]
            raws = await self._client.mget([_record_key(i) for i in own]) if own else []
            async with self._client.pipeline(transaction=False) as pipe:
                for record_id, raw in zip(own, raws, strict=True):
                    if raw is None:
                        missing.append(record_id)
                        continue
                    _index_record(pipe, InstanceRecord.model_validate_json(raw))
                    indexed += 1
                await pipe.execute()
            if len(ids) < RECORD_BATCH:
                break
            start += RECORD_BATCH
        if missing:
            await self._unindex(missing)
        return indexed

    async def _unindex(self, members: list[str]) -> None:
        async with valkey_errors():
            teams = await self._client.hmget(index.TEAMS_KEY, members)
        async with valkey_errors(), self._client.pipeline(transaction=True) as pipe:
            for member, team in zip(members, teams, strict=True):
                if team is not None:
                    _unindex_team(pipe, member, None, _text(team))
            pipe.hdel(index.TEAMS_KEY, *members)
            pipe.zrem(index.ALL_KEY, *members)
            for state in InstanceState:
                pipe.zrem(index.state_key(state), *members)
            pipe.hdel(index.NAMES_KEY, *members)
            pipe.hdel(index.SYNCED_AT_KEY, *members)
            pipe.zrem(index.EXPIRING_KEY, *members)
            pipe.srem(index.EXTERNALS_KEY, *members)
            externals = [m.removeprefix(index.EXTERNAL_MEMBER_PREFIX) for m in members if index.is_external(m)]
            if externals:
                pipe.delete(*[index.external_key(e) for e in externals])
            pipe.incr(index.VERSION_COUNTER_KEY)
            await pipe.execute()

    async def get_spec(self, instance_id: str) -> dict[str, Any] | None:
        """The create spec (with env values), or None once the instance exists on Novita."""
        async with valkey_errors():
            raw = await self._client.get(_spec_key(instance_id))
        return json.loads(raw) if raw is not None else None

    async def drop_spec(self, instance_id: str) -> None:
        """Forget the create spec (and the secret env values in it)."""
        async with valkey_errors():
            await self._client.delete(_spec_key(instance_id))

    async def claim_idempotency_key(self, key: str, entry: dict[str, str], ttl_seconds: int) -> dict[str, str] | None:
        """Store `entry` under `key` unless the key is taken (SET NX); return the existing entry if it was taken."""
        async with valkey_errors():
            if await self._client.set(_idempotency_key(key), json.dumps(entry), nx=True, ex=ttl_seconds):
                return None
            raw = await self._client.get(_idempotency_key(key))
        # The key may have expired between SET NX and GET: then nobody holds it and the caller may retry the claim.
        return json.loads(raw) if raw is not None else await self.claim_idempotency_key(key, entry, ttl_seconds)


def _index_record(pipe: Pipeline, record: InstanceRecord) -> None:
    """Queue the index entries of `record` (its state set, its name) on `pipe`."""
    pipe.zadd(index.ALL_KEY, {record.id: record.created_at})
    pipe.zadd(index.state_key(record.state), {record.id: record.created_at})
    pipe.hset(index.NAMES_KEY, record.id, record.name.casefold())
    _index_team(pipe, record)
    pipe.incr(index.VERSION_COUNTER_KEY)
    if record.state == InstanceState.DELETED:
        pipe.zadd(index.EXPIRING_KEY, {record.id: time.time() + DELETED_RECORD_RETENTION_SECONDS})


def _index_team(pipe: Pipeline, record: InstanceRecord) -> None:
    """Queue the entries of `record` in its team's sets (none for an unowned record)."""
    if record.team is None:
        return
    pipe.hset(index.TEAMS_KEY, record.id, record.team)
    pipe.zadd(index.team_key(record.team), {record.id: record.created_at})
    pipe.zadd(index.team_key(record.team, record.state), {record.id: record.created_at})


def _unindex_team(pipe: Pipeline, member: str, state: InstanceState | None, team: str | None) -> None:
    """Queue the removal of `member` from `team`'s sets (from every state set when `state` is not known)."""
    if team is None:
        return
    pipe.hdel(index.TEAMS_KEY, member)
    pipe.zrem(index.team_key(team), member)
    for each in [state] if state is not None else list(InstanceState):
        pipe.zrem(index.team_key(team, each), member)
