"""What the automations remember per instance besides its record: last use, status since when, last spot migration.

Kept apart from the instance record (one Valkey hash per record id, `ngpu:lifecycle:activity:<id>`) so that the
frequent heartbeat never races with the record's optimistic updates. Losing it with Valkey is safe: every missing
time counts from the first time an automation sees the instance again, so a guard fires later, never earlier.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from app.core.redis import text_hash
from app.lifecycle.keys import KEY_PREFIX

# An instance's activity outlives a stopped period of Novita's data retention (7 days) with a margin.
ACTIVITY_TTL_SECONDS = 14 * 24 * 3600


def _key(record_id: str) -> str:
    return f"{KEY_PREFIX}activity:{record_id}"


def _float(value: str | None) -> float | None:
    return float(value) if value else None


@dataclass(frozen=True)
class Activity:
    """Times (Unix seconds) the automations decide on; None when not known."""

    last_used_at: float | None = None
    status: str | None = None
    status_since: float | None = None
    last_spot_migration_at: float | None = None


class ActivityStore:
    """Reads and writes `Activity` on Valkey."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def get(self, record_id: str) -> Activity:
        """The instance's activity (all None when nothing is known)."""
        return _activity(text_hash(await self._redis.hgetall(_key(record_id))))

    async def heartbeat(self, record_id: str, at: float) -> None:
        """Note that the instance was used at `at` (a later heartbeat never moves it back)."""
        await self._set_max(record_id, "last_used_at", at)

    async def observe_status(self, record_id: str, status: str, at: float) -> float:
        """Note Novita's status; returns since when the instance has had it (`at` if it just changed)."""
        key = _key(record_id)
        current, since = await self._redis.hmget(key, ["status", "status_since"])
        if current == status and since:
            return float(since)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"status": status, "status_since": repr(at)})
            pipe.expire(key, ACTIVITY_TTL_SECONDS)
            await pipe.execute()
        return at

    async def observe_many(self, statuses: dict[str, str], at: float, batch: int = 500) -> None:
        """`observe_status` for many instances (the sync's whole listing): two round trips per `batch`, and a
        write only for the instances whose status changed or was never recorded."""
        record_ids = list(statuses)
        for start in range(0, len(record_ids), batch):
            chunk = record_ids[start : start + batch]
            async with self._redis.pipeline(transaction=False) as pipe:
                for record_id in chunk:
                    pipe.hmget(_key(record_id), ["status", "status_since"])
                current = await pipe.execute()
            changed = [
                r for r, (status, since) in zip(chunk, current, strict=True) if status != statuses[r] or not since
            ]
            if not changed:
                continue
            async with self._redis.pipeline(transaction=False) as pipe:
                for record_id in changed:
                    pipe.hset(_key(record_id), mapping={"status": statuses[record_id], "status_since": repr(at)})
                    pipe.expire(_key(record_id), ACTIVITY_TTL_SECONDS)
                await pipe.execute()

    async def get_many(self, record_ids: list[str]) -> list[Activity]:
        """`get` for many instances in one round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for record_id in record_ids:
                pipe.hgetall(_key(record_id))
            raws = await pipe.execute()
        return [_activity(raw) for raw in raws]

    async def mark_spot_migration(self, record_id: str, at: float) -> None:
        """Remember when a spot recovery was last attempted."""
        await self._set_max(record_id, "last_spot_migration_at", at)

    async def forget(self, record_id: str) -> None:
        """Drop the activity of a deleted instance."""
        await self._redis.delete(_key(record_id))

    async def _set_max(self, record_id: str, field: str, at: float) -> None:
        key = _key(record_id)
        await self._redis.eval(_SET_MAX_SCRIPT, 1, key, field, repr(at), str(ACTIVITY_TTL_SECONDS))


def _activity(raw: dict[str, str]) -> Activity:
    return Activity(
        last_used_at=_float(raw.get("last_used_at")),
        status=raw.get("status") or None,
        status_since=_float(raw.get("status_since")),
        last_spot_migration_at=_float(raw.get("last_spot_migration_at")),
    )


# Keep the larger of the stored and the new time, atomically (heartbeats from several replicas arrive out of order).
_SET_MAX_SCRIPT = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current or tonumber(current) < tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""
