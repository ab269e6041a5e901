"""The Valkey cache against a real redis-server: TTLs, single-flight in and across processes, invalidation, outage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.core.cache import CACHE_PREFIX, Cache
from app.core.metrics import Metrics
from app.core.redis import RedisManager
from tests.app.conftest import fast_settings
from tests.fixtures_redis import RedisServer


class CountingLoader:
    """A loader that counts its calls and can be slow or fail."""

    def __init__(self, value: Any = None, *, delay: float = 0.0, error: Exception | None = None) -> None:
        self.calls = 0
        self.value = value
        self.delay = delay
        self.error = error

    async def __call__(self) -> Any:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.value if self.value is not None else {"call": self.calls}


@pytest.fixture
async def managers(redis_server: RedisServer) -> AsyncIterator[list[RedisManager]]:
    """Connected RedisManagers; each one stands for an API replica."""
    redis_server.start()
    redis_server.flushall()
    created: list[RedisManager] = []
    for _ in range(2):
        manager = RedisManager(fast_settings(redis_server.url))
        await manager.wait_until_connected()
        created.append(manager)
    yield created
    for manager in created:
        await manager.close()


async def test_second_lookup_is_a_hit_and_every_key_has_a_ttl(
    managers: list[RedisManager], redis_server: RedisServer
) -> None:
    metrics = Metrics()
    cache = Cache(managers[0], metrics)
    loader = CountingLoader({"products": ["a", "b"]})
    first = await cache.get_or_load("products:all", 30, loader)
    second = await cache.get_or_load("products:all", 30, loader)
    assert first == second == {"products": ["a", "b"]}
    assert loader.calls == 1
    with redis_server.client() as raw:
        assert 0 < raw.pttl(CACHE_PREFIX + "products:all") <= 30_000
        assert all(raw.pttl(key) > 0 for key in raw.scan_iter("ngpu:cache*"))
    assert metrics.cache_requests.labels("hit")._value.get() == 1
    with pytest.raises(ValueError):
        await cache.get_or_load("no-ttl", 0, loader)


async def test_concurrent_misses_in_one_process_make_one_upstream_call(managers: list[RedisManager]) -> None:
    cache = Cache(managers[0], Metrics())
    loader = CountingLoader(delay=0.2)
    results = await asyncio.gather(*(cache.get_or_load("clusters", 30, loader) for _ in range(20)))
    assert loader.calls == 1
    assert all(result == {"call": 1} for result in results)


async def test_concurrent_misses_across_replicas_make_one_upstream_call(managers: list[RedisManager]) -> None:
    replica_a, replica_b = Cache(managers[0], Metrics()), Cache(managers[1], Metrics())
    loader = CountingLoader(delay=0.3)
    results = await asyncio.gather(
        *(replica.get_or_load("clusters", 30, loader) for replica in (replica_a, replica_b) for _ in range(5))
    )
    assert loader.calls == 1
    assert all(result == {"call": 1} for result in results)


async def test_invalidate_drops_exactly_the_named_keys(managers: list[RedisManager]) -> None:
    cache = Cache(managers[0], Metrics())
    loaders = {key: CountingLoader() for key in ("instances:novita:a", "instances:novita:b", "products")}
    for key, loader in loaders.items():
        await cache.get_or_load(key, 30, loader)

    await cache.invalidate(keys=["instances:novita:a", "products"])
    for key, loader in loaders.items():
        await cache.get_or_load(key, 30, loader)
    assert {key: loader.calls for key, loader in loaders.items()} == {
        "instances:novita:a": 2,
        "instances:novita:b": 1,
        "products": 2,
    }


async def test_invalidate_never_scans_the_keyspace(managers: list[RedisManager]) -> None:
    cache = Cache(managers[0], Metrics())
    client = managers[0].client
    await cache.get_or_load("products", 30, CountingLoader())
    await client.config_resetstat()

    await cache.invalidate(keys=["products", "clusters"])

    stats = await client.info("commandstats")
    assert "cmdstat_unlink" in stats and "cmdstat_scan" not in stats and "cmdstat_keys" not in stats


async def test_failed_load_stores_nothing_and_frees_the_key_at_once(managers: list[RedisManager]) -> None:
    cache = Cache(managers[0], Metrics(), lock_seconds=5.0)
    failing = CountingLoader(error=RuntimeError("upstream down"))
    with pytest.raises(RuntimeError):
        await cache.get_or_load("regions", 30, failing)

    other_replica = Cache(managers[1], Metrics(), lock_seconds=5.0)
    started = time.monotonic()
    assert await other_replica.get_or_load("regions", 30, CountingLoader({"ok": True})) == {"ok": True}
    assert time.monotonic() - started < 1.0  # did not wait out the 5 s load lock of the failed attempt


async def test_serves_uncached_while_valkey_is_down_and_caches_again_after(
    managers: list[RedisManager], redis_server: RedisServer
) -> None:
    metrics = Metrics()
    manager = managers[0]
    cache = Cache(manager, metrics)
    loader = CountingLoader()
    redis_server.stop()
    try:
        started = time.monotonic()
        # The manager still believes Valkey is up: the first failure is caught and served from the loader.
        assert await cache.get_or_load("products", 30, loader) == {"call": 1}
        assert manager.is_up is False
        assert await cache.get_or_load("products", 30, loader) == {"call": 2}  # straight to the loader now
        await cache.invalidate(keys=["products"])  # does not raise either
        assert time.monotonic() - started < 5
        assert metrics.cache_requests.labels("bypass")._value.get() == 2
    finally:
        redis_server.start()
    assert await manager.ping()
    await cache.get_or_load("products", 30, loader)
    await cache.get_or_load("products", 30, loader)
    assert loader.calls == 3  # cached again once Valkey is back
