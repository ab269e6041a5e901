"""Periodic lifecycle work (cost guards, reconciliation, webhook delivery, spot checks), once per period across
replicas, surviving restarts.

Each task has two keys in Valkey:
- `ngpu:lifecycle:next-run:<task>`: when the task is next due (clock time). A Lua script reads it and moves it one
  period ahead in one step, so of several replicas ticking at once exactly one gets the run; a restarted replica
  finds the key and does not run early; after a Valkey flush the task is simply due at once.
- `ngpu:lifecycle:lease:task:<task>` (SET NX PX): held while the task runs, so a run longer than its period never
  overlaps the next one on another replica.
A failing task is logged and runs again next period; it never stops the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.core.clock import SYSTEM_CLOCK, WallClock
from app.core.redis import Lease
from app.lifecycle.keys import KEY_PREFIX

logger = logging.getLogger(__name__)

# Claim the run if it is due: set the next due time one period ahead. Returns 1 for the replica that gets the run.
_CLAIM_SCRIPT = """
local due = redis.call('GET', KEYS[1])
if due and tonumber(due) > tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""


@dataclass(frozen=True)
class PeriodicTask:
    """Work to run every `period_seconds`; `lease_seconds` bounds one run (default: the period)."""

    name: str
    period_seconds: float
    run: Callable[[], Awaitable[Any]]
    lease_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.period_seconds <= 0:
            raise ValueError(f"task {self.name}: period_seconds must be positive")


class LifecycleScheduler:
    """Ticks every `tick_seconds` and runs the tasks that are due; safe to run on every replica."""

    def __init__(
        self,
        redis: Redis,
        tasks: Sequence[PeriodicTask],
        *,
        tick_seconds: float = 1.0,
        clock: WallClock = SYSTEM_CLOCK,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        names = [task.name for task in tasks]
        if len(names) != len(set(names)):
            raise ValueError("periodic task names must be unique")
        self._redis = redis
        self._tasks = list(tasks)
        self._tick_seconds = tick_seconds
        self._clock = clock
        self._sleep = sleep

    async def run_due(self) -> list[str]:
        """Run every task that is due and not running elsewhere; returns the names this replica ran."""
        ran: list[str] = []
        for task in self._tasks:
            if await self._run_if_due(task):
                ran.append(task.name)
            _raise_if_cancelled()
        return ran

    async def run_forever(self) -> None:
        """Tick until cancelled; Valkey outages are logged and waited out."""
        while True:
            try:
                await self.run_due()
            except (RedisError, OSError) as error:
                logger.warning("lifecycle scheduler: Valkey unavailable", extra={"error": type(error).__name__})
            _raise_if_cancelled()
            await self._sleep(self._tick_seconds)

    async def record_run(self, name: str) -> None:
        """Count a run of task `name` done outside the ticks (the start-up reconciliation), so that the first tick
        does not repeat it; a no-op when the task is not due."""
        await self._claim(next(task for task in self._tasks if task.name == name))

    async def _run_if_due(self, task: PeriodicTask) -> bool:
        lease = Lease(self._redis, f"{KEY_PREFIX}lease:task:{task.name}", task.lease_seconds or task.period_seconds)
        if not await lease.acquire():
            return False
        try:
            if not await self._claim(task):
                return False
            try:
                await task.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("lifecycle task failed", extra={"task": task.name})
            return True
        finally:
            await lease.release()

    async def _claim(self, task: PeriodicTask) -> bool:
        """Take this period's run of `task` if it is due: True for the one replica that gets it."""
        now = self._clock()
        # The next-run key expires (real time) a little after it is due, so a stale one never blocks forever.
        expiry_ms = int(task.period_seconds * 2000) + 60_000
        claimed = await self._redis.eval(
            _CLAIM_SCRIPT,
            1,
            f"{KEY_PREFIX}next-run:{task.name}",
            repr(now),
            repr(now + task.period_seconds),
            str(expiry_ms),
        )
        return bool(claimed)


def _raise_if_cancelled() -> None:
    """Stop when this task was asked to, even if the request got lost on the way.

    redis-py 8.1's asyncio client can swallow a cancellation that lands inside a command (the command returns
    normally and `Task.cancelling()` stays set); without this check a cancelled scheduler would keep ticking and
    shutdown would hang.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
