"""Instance records, create specs and idempotency keys on Valkey.

Keys (all under `ngpu:`):
- `ngpu:instance:<id>`        JSON of an `InstanceRecord` (no secrets).
- `ngpu:instance-spec:<id>`   JSON of the create request as the create job needs it, env values included; deleted as
                              soon as Novita has the instance, so secret env values live in Valkey only until then.
- `ngpu:instances`            sorted set of record ids by creation time (the index for listing).
- `ngpu:idempotency:<key>`    JSON `{fingerprint, instance_id, job_id}`, written with SET NX and a TTL.

Every Valkey failure surfaces as `ServiceUnavailable` (503), never as a 500.
"""
from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, WatchError

from app.core.errors import ServiceUnavailable
from app.core.redis import RedisManager
from app.instances.schemas import InstanceRecord

_PREFIX = "ngpu:"
_INDEX_KEY = f"{_PREFIX}instances"
# A deleted instance's record stays readable this long (to answer "what happened to it"), then expires.
DELETED_RECORD_RETENTION_SECONDS = 7 * 24 * 3600


def _record_key(instance_id: str) -> str:
    return f"{_PREFIX}instance:{instance_id}"


def _spec_key(instance_id: str) -> str:
    return f"{_PREFIX}instance-spec:{instance_id}"


def _idempotency_key(key: str) -> str:
    return f"{_PREFIX}idempotency:{key}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RecordNotFound(LookupError):
    """The record does not exist (any more)."""


@asynccontextmanager
async def _valkey_errors() -> AsyncIterator[None]:
    try:
        yield
    except WatchError:
        raise
    except (RedisError, OSError) as exc:
        raise ServiceUnavailable(f"Valkey is unavailable ({type(exc).__name__})") from exc


class InstanceStore:
    """Reads and writes instance records; the only module that knows their Valkey layout."""

    def __init__(self, redis: RedisManager) -> None:
        self._redis = redis

    @property
    def _client(self) -> Redis:
        return self._redis.client

    async def create(self, record: InstanceRecord, spec: dict[str, Any]) -> bool:
        """Write a new record, its create spec and its index entry at once; False if the record already exists."""
        async with _valkey_errors():
            if await self._client.exists(_record_key(record.id)):
                return False
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.set(_record_key(record.id), record.model_dump_json(), nx=True)
                pipe.set(_spec_key(record.id), json.dumps(spec))
                pipe.zadd(_INDEX_KEY, {record.id: record.created_at})
                written, _, _ = await pipe.execute()
            return bool(written)

    async def get(self, instance_id: str) -> InstanceRecord | None:
        """The record, or None."""
        async with _valkey_errors():
            raw = await self._client.get(_record_key(instance_id))
        return InstanceRecord.model_validate_json(raw) if raw is not None else None

    async def list_all(self) -> list[InstanceRecord]:
        """Every record, newest first; index entries of expired records are pruned on the way."""
        async with _valkey_errors():
            ids = [_text(i) for i in await self._client.zrevrange(_INDEX_KEY, 0, -1)]
            if not ids:
                return []
            raws = await self._client.mget([_record_key(i) for i in ids])
            expired = [i for i, raw in zip(ids, raws) if raw is None]
            if expired:
                await self._client.zrem(_INDEX_KEY, *expired)
        return [InstanceRecord.model_validate_json(raw) for raw in raws if raw is not None]

    async def find_by_name(self, name: str) -> list[InstanceRecord]:
        """Records named exactly `name` that are not deleted (names are not unique), newest first."""
        return [record for record in await self.list_all() if record.name == name and record.state != "deleted"]

    async def update(self, instance_id: str, change: Callable[[InstanceRecord], None]) -> InstanceRecord:
        """Apply `change` to the record atomically (optimistic: re-read and re-apply if another writer won)."""
        key = _record_key(instance_id)
        async with _valkey_errors():
            async with self._client.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(key)
                        raw = await pipe.get(key)
                        if raw is None:
                            raise RecordNotFound(instance_id)
                        record = InstanceRecord.model_validate_json(raw)
                        change(record)
                        pipe.multi()
                        pipe.set(key, record.model_dump_json(), keepttl=True)
                        if record.state == "deleted":
                            pipe.expire(key, DELETED_RECORD_RETENTION_SECONDS)
                        await pipe.execute()
                        return record
                    except WatchError:
                        continue

    async def get_spec(self, instance_id: str) -> dict[str, Any] | None:
        """The create spec (with env values), or None once the instance exists on Novita."""
        async with _valkey_errors():
            raw = await self._client.get(_spec_key(instance_id))
        return json.loads(raw) if raw is not None else None

    async def drop_spec(self, instance_id: str) -> None:
        """Forget the create spec (and the secret env values in it)."""
        async with _valkey_errors():
            await self._client.delete(_spec_key(instance_id))

    async def claim_idempotency_key(
        self, key: str, entry: dict[str, str], ttl_seconds: int
    ) -> dict[str, str] | None:
        """Store `entry` under `key` unless the key is taken (SET NX); return the existing entry if it was taken."""
        async with _valkey_errors():
            if await self._client.set(_idempotency_key(key), json.dumps(entry), nx=True, ex=ttl_seconds):
                return None
            raw = await self._client.get(_idempotency_key(key))
        # The key may have expired between SET NX and GET: then nobody holds it and the caller may retry the claim.
        return json.loads(raw) if raw is not None else await self.claim_idempotency_key(key, entry, ttl_seconds)
