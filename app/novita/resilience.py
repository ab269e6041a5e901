"""Retry policy, circuit breaker and client-side rate limiter of the Novita client.

All three read time from an injectable ``Clock`` so that tests drive them with a manual clock instead of
waiting for real backoff. They are small on purpose: each is a few lines of state that the client combines per
HTTP attempt, which a general-purpose retry library would not make simpler.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum

from app.novita.errors import NovitaCircuitOpen


@dataclass(frozen=True)
class Clock:
    """Where the resilience helpers read time and how they wait; tests pass a manual one."""

    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with "equal jitter" (half fixed, half random) and a capped ``Retry-After``."""

    max_attempts: int = 4
    backoff_base_seconds: float = 0.5
    backoff_max_seconds: float = 10.0
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.backoff_base_seconds < 0 or self.backoff_max_seconds < 0:
            raise ValueError("backoff durations must not be negative")

    def delay_before_retry(self, failed_attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after attempt number ``failed_attempt`` (1-based) failed."""
        if retry_after is not None:
            return min(retry_after, self.backoff_max_seconds)
        exponential = min(self.backoff_max_seconds, self.backoff_base_seconds * 2 ** (failed_attempt - 1))
        return exponential / 2 + self.rng.uniform(0, exponential / 2)


class BreakerState(StrEnum):
    """States of the circuit breaker."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive failures; after ``reset_seconds`` lets one trial call through.

    A successful trial closes it, a failed one opens it again. If a trial never reports back (cancelled), another
    trial is allowed once ``reset_seconds`` have passed again, so the breaker cannot stay stuck half-open.
    """

    def __init__(self, failure_threshold: int, reset_seconds: float, clock: Clock) -> None:
        if failure_threshold < 1:
            raise ValueError("breaker_failure_threshold must be at least 1")
        self._threshold = failure_threshold
        self._reset_seconds = reset_seconds
        self._clock = clock
        self._consecutive_failures = 0
        self._opened_at: float | None = None
        self._trial_started_at: float | None = None

    @property
    def state(self) -> BreakerState:
        """The current state, as a caller about to make a call would see it."""
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock.monotonic() - self._opened_at >= self._reset_seconds:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    @property
    def consecutive_failures(self) -> int:
        """Failures since the last success."""
        return self._consecutive_failures

    def before_call(self) -> None:
        """Raise ``NovitaCircuitOpen`` unless a call may go out now."""
        state = self.state
        if state is BreakerState.CLOSED:
            return
        now = self._clock.monotonic()
        trial_running = self._trial_started_at is not None and now - self._trial_started_at < self._reset_seconds
        if state is BreakerState.OPEN or trial_running:
            raise NovitaCircuitOpen()
        self._trial_started_at = now

    def record_success(self) -> None:
        """Novita answered: close the breaker."""
        self._consecutive_failures = 0
        self._opened_at = None
        self._trial_started_at = None

    def record_failure(self) -> None:
        """Novita failed (5xx, timeout, network): count it, and open (again) at the threshold or after a trial."""
        self._consecutive_failures += 1
        was_trial = self._trial_started_at is not None
        self._trial_started_at = None
        if was_trial or self._consecutive_failures >= self._threshold:
            self._opened_at = self._clock.monotonic()


class TokenBucket:
    """Async token bucket: at most ``burst`` calls at once, refilled at ``rate_per_second``; waiters queue FIFO."""

    def __init__(self, rate_per_second: float, clock: Clock, burst: int | None = None) -> None:
        if rate_per_second <= 0:
            raise ValueError("rate_limit_per_second must be positive")
        self._rate = rate_per_second
        self._capacity = float(burst if burst is not None else max(1, math.ceil(rate_per_second)))
        if self._capacity < 1:
            raise ValueError("rate limit burst must be at least 1")
        self._clock = clock
        self._tokens = self._capacity
        self._refilled_at = clock.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait until a token is available and take it."""
        async with self._lock:
            while True:
                now = self._clock.monotonic()
                self._tokens = min(self._capacity, self._tokens + (now - self._refilled_at) * self._rate)
                self._refilled_at = now
                # The tolerance keeps float rounding from leaving 0.9999999 tokens and an endless tiny wait.
                if self._tokens >= 1 - 1e-9:
                    self._tokens = max(0.0, self._tokens - 1)
                    return
                await self._clock.sleep((1 - self._tokens) / self._rate)
