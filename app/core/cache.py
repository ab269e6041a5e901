"""A read-through cache on Valkey: TTL on every key, one loader call per key at a time, and no outage of its own.

When Valkey is down the cache steps aside and every lookup calls the loader (the API serves uncached), because a
cache must never be the reason a request fails. Values must be JSON-serialisable (dicts, lists, strings, numbers).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.core.metrics import Metrics
from app.core.redis import RELEASE_LOCK_SCRIPT, RedisManager

logger = logging.getLogger(__name__)

CACHE_PREFIX = "ngpu:cache:"
_LOCK_PREFIX = "ngpu:cache-lock:"
_CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
# While another replica loads a key, poll for its value this often (the lock bounds the total wait).
_PEER_POLL_SECONDS = 0.05

Loader = Callable[[], Awaitable[Any]]


class Cache:
    """`get_or_load` with single-flight, `invalidate` by key; keys are namespaced under `ngpu:cache:`.

    There is deliberately no invalidation by prefix: it needs a keyspace SCAN, whose cost grows with everything in
    Valkey and which once made every create O(keys). Callers name the keys they changed.
    """

    def __init__(self, redis: RedisManager, metrics: Metrics, *, lock_seconds: float = 5.0) -> None:
        self._redis = redis
        self._metrics = metrics
        self._lock_seconds = lock_seconds
        self._inflight: dict[str, asyncio.Future[Any]] = {}

    async def get_or_load(self, key: str, ttl_seconds: float, loader: Loader) -> Any:
        """The cached value of `key`, or the loader's result, stored for `ttl_seconds`.

        Concurrent misses of one key in this process share one loader call; across replicas a short Valkey lock
        makes the others wait for the first one's value (up to the lock time, then they load themselves).
        Loader errors propagate and nothing is stored.
        """
        if ttl_seconds <= 0:
            raise ValueError("every cache entry needs a positive TTL")
        inflight = self._inflight.get(key)
        if inflight is not None:
            return await asyncio.shield(inflight)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value = await self._lookup_or_load(key, ttl_seconds, loader)
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # mark retrieved: no "exception never retrieved" when nobody else waited
            raise
        else:
            future.set_result(value)
            return value
        finally:
            del self._inflight[key]

    async def invalidate(self, *, keys: Iterable[str]) -> None:
        """Drop `keys`; a no-op when Valkey is down (entries expire anyway)."""
        doomed = [CACHE_PREFIX + key for key in keys]
        if not doomed or not self._redis.is_up:
            return
        try:
            await self._redis.client.unlink(*doomed)
        except _CONNECTION_ERRORS as error:
            self._redis.record_failure(error)

    async def _lookup_or_load(self, key: str, ttl_seconds: float, loader: Loader) -> Any:
        if not self._redis.is_up:
            self._metrics.cache_requests.labels("bypass").inc()
            return await loader()
        client = self._redis.client
        lock_key, token = _LOCK_PREFIX + key, uuid.uuid4().hex
        try:
            cached = await client.get(CACHE_PREFIX + key)
            if cached is not None:
                self._metrics.cache_requests.labels("hit").inc()
                return json.loads(cached)
            self._metrics.cache_requests.labels("miss").inc()
            holds_lock = bool(await client.set(lock_key, token, nx=True, px=int(self._lock_seconds * 1000)))
            if not holds_lock:
                cached = await self._wait_for_peer(key)
                if cached is not None:
                    return json.loads(cached)
        except _CONNECTION_ERRORS as error:
            self._redis.record_failure(error)
            self._metrics.cache_requests.labels("bypass").inc()
            return await loader()
        try:
            value = await loader()
        except BaseException:
            if holds_lock:
                await self._release_lock(lock_key, token)
            raise
        await self._store(key, value, ttl_seconds)
        return value

    async def _wait_for_peer(self, key: str) -> str | None:
        """Wait for the replica holding the load lock to store the value; None means: load it yourself."""
        client = self._redis.client
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._lock_seconds
        while loop.time() < deadline:
            await asyncio.sleep(_PEER_POLL_SECONDS)
            cached = await client.get(CACHE_PREFIX + key)
            if cached is not None:
                return str(cached)
            if not await client.exists(_LOCK_PREFIX + key):
                return None  # the other loader failed without storing
        return None

    async def _release_lock(self, lock_key: str, token: str) -> None:
        try:
            await self._redis.client.eval(RELEASE_LOCK_SCRIPT, 1, lock_key, token)
        except _CONNECTION_ERRORS as error:
            self._redis.record_failure(error)

    async def _store(self, key: str, value: Any, ttl_seconds: float) -> None:
        try:
            async with self._redis.client.pipeline(transaction=True) as pipe:
                pipe.set(CACHE_PREFIX + key, json.dumps(value), px=int(ttl_seconds * 1000))
                pipe.delete(_LOCK_PREFIX + key)
                await pipe.execute()
        except _CONNECTION_ERRORS as error:
            self._redis.record_failure(error)
