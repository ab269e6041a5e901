"""Leases on Valkey (SET NX PX): how the lifecycle automations do a piece of work once across replicas.

A lease is a key holding a random token with an expiry. Whoever sets it first owns the work until it expires or is
released; release deletes the key only while it still holds our token, so an expired lease taken over by another
replica is never released by mistake.
"""
from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from redis.asyncio import Redis

from app.core.redis import RELEASE_LOCK_SCRIPT

KEY_PREFIX = "ngpu:lifecycle:"

# Wall-clock time in Unix seconds. Records carry `time.time()` timestamps, so decisions compare against the same
# scale; tests pass a manual clock so that nothing waits for minutes.
WallClock = Callable[[], float]
SYSTEM_CLOCK: WallClock = time.time


class Lease:
    """One named lease; `acquire()` is SET NX PX, `release()` deletes only our own token."""

    def __init__(self, redis: Redis, key: str, ttl_seconds: float) -> None:
        if ttl_seconds <= 0:
            raise ValueError("a lease needs a positive ttl_seconds")
        self.key = key
        self._redis = redis
        self._ttl_ms = max(1, int(ttl_seconds * 1000))
        self._token = secrets.token_hex(16)

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it; True when we now hold it."""
        return bool(await self._redis.set(self.key, self._token, nx=True, px=self._ttl_ms))

    async def release(self) -> None:
        """Give the lease back early (a no-op if it expired and someone else holds it now)."""
        await self._redis.eval(RELEASE_LOCK_SCRIPT, 1, self.key, self._token)
