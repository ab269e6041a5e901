"""One Novita call budget for the whole deployment: a token bucket in Valkey shared by every replica, with priorities.

Novita limits the account, not the process, so N replicas each with its own limiter would send N times the configured
rate. Every HTTP attempt of the client first takes a token from one bucket in Valkey (a Lua script, so the refill
and the take are one atomic step, timed by the Valkey server's clock so replicas' clocks do not matter):

- rate `NOVITA_RATE_LIMIT_PER_SECOND`, burst `NOVITA_RATE_LIMIT_BURST` (at least 3);
- priorities by reserve: a person's request may take the last token, a job step only while 1 more is left, the
  background sync only while 2 more are left. A lone caller of any priority still gets the full rate (it waits for
  its threshold, then the refill keeps pace); under contention the higher priority always finds a token first.
- a 429 from Novita pauses the bucket for every replica (`Retry-After`, else 1 s): nobody sends until it ends.

The caller's priority travels in a context variable (`novita_priority`): requests default to `PERSON`; the job worker's
handlers run as `JOB`, the lifecycle scheduler as `BACKGROUND`.

Fail-safe when Valkey is down or slow: each replica falls back to its own local bucket at
`NOVITA_RATE_LIMIT_FALLBACK_PER_SECOND` (default 1/s). Without Valkey no job or sync runs, so the only Novita calls
left are people's reads; a small local rate keeps N replicas well under the account's limit without stopping them.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from enum import IntEnum
from typing import Protocol, TypeVar

from redis.exceptions import RedisError

from app.core.redis import RedisManager
from app.novita.resilience import Clock, TokenBucket

logger = logging.getLogger(__name__)

KEY = "ngpu:novita:rate-budget"
MIN_BURST = 3
# The longest a waiter sleeps before asking the bucket again (a pause or a higher priority may have changed things).
_MAX_POLL_SECONDS = 0.25
# Past this a bucket answer counts as Valkey trouble and the local fallback decides.
_CHECK_TIMEOUT_SECONDS = 0.5
_DEFAULT_PAUSE_SECONDS = 1.0
# A Retry-After beyond this is not trusted to stop the whole deployment for longer (the next 429 pauses again).
_MAX_PAUSE_SECONDS = 60.0


class Priority(IntEnum):
    """Who is asking: lower values go first."""

    PERSON = 0
    JOB = 1
    BACKGROUND = 2


_PRIORITY: contextvars.ContextVar[Priority] = contextvars.ContextVar("novita_priority", default=Priority.PERSON)


def current_priority() -> Priority:
    """The priority of the code running now (`PERSON` unless a caller said otherwise)."""
    return _PRIORITY.get()


@contextmanager
def novita_priority(priority: Priority) -> Iterator[None]:
    """Run the block's Novita calls (and tasks it creates) at `priority`."""
    token = _PRIORITY.set(priority)
    try:
        yield
    finally:
        _PRIORITY.reset(token)


Result = TypeVar("Result")


def at_priority(priority: Priority, work: Callable[..., Awaitable[Result]]) -> Callable[..., Awaitable[Result]]:
    """`work` wrapped so that every call of it runs at `priority`."""

    async def run(*args: object, **kwargs: object) -> Result:
        with novita_priority(priority):
            return await work(*args, **kwargs)

    run.__name__ = getattr(work, "__name__", "run")
    return run


class RateBudget(Protocol):
    """What the client needs of a limiter."""

    async def acquire(self, priority: Priority) -> None:
        """Wait for the right to make one call."""
        ...

    async def slow_down(self, seconds: float | None) -> None:
        """Novita said 429: nobody calls for `seconds` (None: a default pause)."""
        ...


class LocalBudget:
    """One process's token bucket (tests, tools, and the shared budget's fallback); priorities are not needed."""

    def __init__(self, rate_per_second: float, clock: Clock, burst: int | None = None) -> None:
        self._bucket = TokenBucket(rate_per_second, clock, burst=burst)
        self._clock = clock
        self._paused_until = 0.0

    async def acquire(self, priority: Priority = Priority.PERSON) -> None:
        pause = self._paused_until - self._clock.monotonic()
        if pause > 0:
            await self._clock.sleep(pause)
        await self._bucket.acquire()

    async def slow_down(self, seconds: float | None) -> None:
        self._paused_until = max(self._paused_until, self._clock.monotonic() + _pause(seconds))


# KEYS[1] the bucket hash. ARGV: rate, burst, tokens that must be left before taking one (1, 2 or 3 by priority).
# Returns '0' when a token was taken, else the seconds to wait (as a string: Lua numbers would be truncated).
_TAKE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst, need = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at', 'paused_until')
local paused = tonumber(state[3]) or 0
if now < paused then return tostring(paused - now) end
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= need - 0.000001 then tokens = tokens - 1 else wait = (need - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'at', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 60000)
return string.format('%.6f', wait)
"""
# KEYS[1] the bucket hash. ARGV: pause seconds. Empties the bucket and pauses it (never shortens a longer pause).
_PAUSE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local until_at = now + tonumber(ARGV[1])
local current = tonumber(redis.call('HGET', KEYS[1], 'paused_until')) or 0
if until_at > current then
  redis.call('HSET', KEYS[1], 'paused_until', string.format('%.6f', until_at), 'tokens', '0',
             'at', string.format('%.6f', until_at))
end
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1]) * 1000) + 60000)
return 1
"""


class SharedRateBudget:
    """The deployment's Novita budget in Valkey; see the module docstring."""

    def __init__(
        self,
        redis: RedisManager,
        rate_per_second: float,
        *,
        burst: int | None = None,
        fallback: LocalBudget,
        key: str = KEY,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate_per_second <= 0:
            raise ValueError("rate_per_second must be positive")
        self._redis = redis
        self._rate = rate_per_second
        self._burst = max(MIN_BURST, burst if burst is not None else round(rate_per_second))
        self._fallback = fallback
        self._key = key
        self._sleep = sleep

    async def acquire(self, priority: Priority) -> None:
        need = 1 + int(priority)
        while True:
            if not self._redis.is_up:
                await self._fallback.acquire(priority)
                return
            try:
                async with asyncio.timeout(_CHECK_TIMEOUT_SECONDS):
                    answer = await self._redis.client.eval(
                        _TAKE_SCRIPT, 1, self._key, repr(self._rate), str(self._burst), str(need)
                    )
            except (RedisError, OSError, TimeoutError) as error:
                if not isinstance(error, TimeoutError):
                    self._redis.record_failure(error)
                logger.warning(
                    "shared Novita rate budget unavailable; using this replica's fallback budget",
                    extra={"error": type(error).__name__},
                )
                await self._fallback.acquire(priority)
                return
            wait = float(answer)
            if wait <= 0:
                return
            await self._sleep(min(wait, _MAX_POLL_SECONDS))

    async def slow_down(self, seconds: float | None) -> None:
        pause = _pause(seconds)
        await self._fallback.slow_down(pause)
        if not self._redis.is_up:
            return
        try:
            async with asyncio.timeout(_CHECK_TIMEOUT_SECONDS):
                await self._redis.client.eval(_PAUSE_SCRIPT, 1, self._key, repr(pause))
        except (RedisError, OSError, TimeoutError) as error:
            logger.warning("could not pause the shared Novita rate budget", extra={"error": type(error).__name__})


def _pause(seconds: float | None) -> float:
    return min(_MAX_PAUSE_SECONDS, seconds) if seconds and seconds > 0 else _DEFAULT_PAUSE_SECONDS
