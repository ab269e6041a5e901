"""The deployment's one Novita budget (app/novita/ratebudget.py) on the real redis-server: several replicas' limiters
together stay within the configured rate, a person's call goes before a job step before the background sync, a 429
seen by one replica pauses all of them, and without Valkey each replica falls back to its small local budget."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from app.core.redis import RedisManager
from app.novita.ratebudget import LocalBudget, Priority, SharedRateBudget
from app.novita.resilience import Clock
from tests.app.conftest import fast_settings
from tests.fixtures_redis import RedisServer

RATE = 20.0
BURST = 4


@pytest.fixture
async def replicas(redis_server: RedisServer) -> AsyncIterator[list[SharedRateBudget]]:
    """Three replicas' budgets, each with its own Valkey connection, sharing one bucket."""
    redis_server.start()
    redis_server.flushall()
    managers = [RedisManager(fast_settings(redis_server.url)) for _ in range(3)]
    for manager in managers:
        assert await manager.ping(2.0)
    yield [SharedRateBudget(manager, RATE, burst=BURST, fallback=LocalBudget(1.0, Clock())) for manager in managers]
    for manager in managers:
        await manager.close()


async def _take_for(
    budget: SharedRateBudget, priority: Priority, seconds: float, grants: Counter[str], label: str
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        await budget.acquire(priority)
        if loop.time() >= deadline:
            return
        grants[label] += 1


async def test_replicas_together_never_exceed_the_shared_rate(replicas: list[SharedRateBudget]) -> None:
    grants: Counter[str] = Counter()
    seconds = 2.0
    await asyncio.gather(
        *(
            _take_for(budget, Priority.PERSON, seconds, grants, f"replica{index}")
            for index, budget in enumerate(replicas)
            for _ in range(4)  # 4 callers per replica, 12 in all
        )
    )
    total = sum(grants.values())
    assert total <= RATE * seconds + BURST  # one budget: not three times the rate
    assert total >= RATE * seconds * 0.75  # and the budget is used, not starved by the coordination
    assert len(grants) == 3  # every replica got its share of calls


async def test_a_person_goes_before_a_job_before_the_background_sync(replicas: list[SharedRateBudget]) -> None:
    grants: Counter[str] = Counter()
    seconds = 1.5
    await asyncio.gather(
        _take_for(replicas[0], Priority.PERSON, seconds, grants, "person"),
        _take_for(replicas[1], Priority.JOB, seconds, grants, "job"),
        _take_for(replicas[2], Priority.BACKGROUND, seconds, grants, "sync"),
        _take_for(replicas[2], Priority.BACKGROUND, seconds, grants, "sync"),
    )
    assert grants["person"] >= RATE * seconds * 0.6  # a person is never kept waiting by the others
    assert grants["person"] > grants["job"] >= grants["sync"]
    assert sum(grants.values()) <= RATE * seconds + BURST


async def test_a_lone_background_caller_still_gets_the_whole_rate(replicas: list[SharedRateBudget]) -> None:
    grants: Counter[str] = Counter()
    seconds = 1.5
    await _take_for(replicas[0], Priority.BACKGROUND, seconds, grants, "sync")
    assert RATE * seconds * 0.8 <= grants["sync"] <= RATE * seconds + BURST


async def test_a_429_seen_by_one_replica_pauses_every_replica(replicas: list[SharedRateBudget]) -> None:
    loop = asyncio.get_running_loop()
    await replicas[0].slow_down(0.6)
    began = loop.time()
    await asyncio.gather(replicas[1].acquire(Priority.PERSON), replicas[2].acquire(Priority.PERSON))
    assert loop.time() - began >= 0.5


async def test_without_valkey_each_replica_falls_back_to_its_small_local_budget(redis_server: RedisServer) -> None:
    manager = RedisManager(fast_settings("redis://127.0.0.1:1"))  # nothing listens: Valkey is down
    budget = SharedRateBudget(manager, 1000.0, fallback=LocalBudget(10.0, Clock(), burst=1))
    loop = asyncio.get_running_loop()
    began = loop.time()
    for _ in range(6):
        await budget.acquire(Priority.PERSON)
    assert loop.time() - began >= 0.45  # 10 per second, not the shared 1000
    await manager.close()
