"""Per-client rate limit: a fixed window per API-key name, counted in Valkey so every replica shares the budget.

Each key name may make `RATE_LIMIT_REQUESTS` requests per `RATE_LIMIT_WINDOW_SECONDS` window; the next one gets a
429 with `Retry-After` (seconds until the window ends). The limit protects the Novita account from a runaway
client, not the service from overload, so it fails open: when Valkey is down or slow the request goes through
(the routes that need Valkey answer 503 by themselves) and the metric `rate_limit_decisions_total` says so.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.exceptions import RedisError

from app.core.errors import RateLimited
from app.core.metrics import Metrics
from app.core.redis import RedisManager

logger = logging.getLogger(__name__)

KEY_PREFIX = "ngpu:ratelimit:"
# The count must never delay a request much: past this, the request goes through uncounted.
CHECK_TIMEOUT_SECONDS = 0.5


@dataclass(frozen=True)
class RateLimitDecision:
    """The outcome of one check: whether the request may go on, and in how many seconds the window resets."""

    allowed: bool
    reset_after_seconds: float


class RateLimiter:
    """Counts requests per key name in the current window; `limit=0` turns the limit off."""

    def __init__(
        self,
        redis: RedisManager,
        metrics: Metrics,
        *,
        limit: int,
        window_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._metrics = metrics
        self.limit = limit
        self.window_seconds = window_seconds
        self._clock = clock

    async def check(self, key_name: str) -> RateLimitDecision | None:
        """Count one request of `key_name`; None when the limit is off or Valkey could not count it (fail open)."""
        if self.limit <= 0:
            return None
        if not self._redis.is_up:
            self._metrics.rate_limit_decisions.labels("failed_open").inc()
            return None
        now = self._clock()
        window = int(now // self.window_seconds)
        key = f"{KEY_PREFIX}{key_name}:{window}"
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
                async with self._redis.client.pipeline(transaction=True) as pipe:
                    # The first request of a window creates the counter with its expiry: no key outlives its window.
                    pipe.set(key, 0, ex=self.window_seconds + 1, nx=True)
                    pipe.incr(key)
                    _, count = await pipe.execute()
        except TimeoutError:  # slow, not necessarily down: leave `is_up` to the monitor
            self._fail_open("TimeoutError")
            return None
        except (RedisError, OSError) as error:
            self._redis.record_failure(error)
            self._fail_open(type(error).__name__)
            return None
        reset_after = (window + 1) * self.window_seconds - now
        allowed = int(count) <= self.limit
        self._metrics.rate_limit_decisions.labels("allowed" if allowed else "limited").inc()
        return RateLimitDecision(allowed, reset_after)

    def _fail_open(self, error: str) -> None:
        logger.warning(
            "rate limit not counted: Valkey unavailable, letting the request through", extra={"error": error}
        )
        self._metrics.rate_limit_decisions.labels("failed_open").inc()

    async def enforce(self, key_name: str) -> None:
        """Raise `RateLimited` (429 with Retry-After) when `key_name` has used up its window."""
        decision = await self.check(key_name)
        if decision is not None and not decision.allowed:
            raise RateLimited(
                f"rate limit of {self.limit} requests per {self.window_seconds} s exceeded for this API key",
                retry_after=max(1, math.ceil(decision.reset_after_seconds)),
            )
