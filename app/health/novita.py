"""What `/health` says about Novita, without a Novita call per request.

Two sources of evidence; the most recent observation wins:
- this replica's own calls: the client's `UpstreamStatus` (last success, last failure and its kind);
- a background check shared by every replica: once per `NOVITA_HEALTH_CHECK_INTERVAL_SECONDS`, one replica (the
  lifecycle scheduler's claim in Valkey) stores in Valkey (`ngpu:health:novita`) what it knows of Novita: its own
  latest call when that is recent (e.g. the start-up reconciliation, or traffic), else the outcome of one cheap call
  (`GET /clusters`) made for the purpose. So a deployment without traffic still learns within one interval that
  Novita refuses its key or is down, and N replicas make at most one extra call per interval between them.
An open circuit breaker always means down. A 429 is Novita answering (throttling us), not Novita down.
Reasons never hold a secret: the client strips its key from every error text.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.core.clock import SYSTEM_CLOCK, WallClock
from app.novita.client import NovitaClient, UpstreamStatus
from app.novita.errors import NovitaError

logger = logging.getLogger(__name__)

CHECK_KEY = "ngpu:health:novita"
CHECK_TASK = "novita-check"
_THROTTLED_KIND = "rate_limited"
_AUTH_KIND = "auth"
_TIMEOUT_KIND = "timeout"
# A hung Valkey must not hang /health (Valkey's own state is reported by its own check).
_READ_TIMEOUT_SECONDS = 1.0


@dataclass(frozen=True)
class NovitaState:
    """Novita as `/health` reports it: up, or down with the reason."""

    up: bool
    reason: str | None = None


@dataclass(frozen=True)
class _Observation:
    up: bool
    at: float  # Unix seconds
    source: str
    problem: str | None = None


class NovitaHealth:
    """Judges Novita's health from recent evidence; `check()` is the periodic background call."""

    def __init__(
        self,
        novita: NovitaClient,
        redis: Redis,
        *,
        check_interval_seconds: float,
        check_timeout_seconds: float,
        clock: WallClock = SYSTEM_CLOCK,
    ) -> None:
        self._novita = novita
        self._redis = redis
        self._check_interval_seconds = check_interval_seconds
        self._check_timeout_seconds = check_timeout_seconds
        self._clock = clock

    async def check(self) -> None:
        """Share with every replica what this one knows of Novita: its latest call if recent, else one (bounded) call."""
        now = self._clock()
        local = _latest(_local_observations(self._novita.status()))
        if local is not None and now - local.at < self._check_interval_seconds:
            at, problem = local.at, local.problem
        else:
            at, problem = now, await self._ask_novita()
        # Kept for a few intervals: should the checks stop (Valkey trouble), an old verdict expires.
        expiry = int(self._check_interval_seconds * 3) + 60
        await self._redis.set(CHECK_KEY, json.dumps({"at": at, "problem": problem}), ex=expiry)

    async def _ask_novita(self) -> str | None:
        """One cheap call; the problem it shows, or None."""
        try:
            async with asyncio.timeout(self._check_timeout_seconds):
                await self._novita.list_clusters()
        except NovitaError as error:
            problem = _describe(error.kind, error.reason)
        except TimeoutError:
            problem = _describe(_TIMEOUT_KIND, f"no answer within {self._check_timeout_seconds:g} s")
        else:
            return None
        logger.warning("background Novita check failed", extra={"problem": problem})
        return problem

    async def state(self) -> NovitaState:
        """Down with a reason when the breaker is open or the latest observation failed; up otherwise."""
        status = self._novita.status()
        if status.breaker_state == "open":
            return NovitaState(
                False,
                f"circuit breaker open after {status.consecutive_failures} consecutive failed "
                f"calls (last: {status.last_error_reason})",
            )
        observations = _local_observations(status)
        shared = await self._shared_observation()
        if shared is not None:
            observations.append(shared)
        latest = _latest(observations)
        if latest is None:
            return NovitaState(True)  # nothing seen yet: the first check runs at start-up
        if latest.up:
            return NovitaState(True)
        seen = datetime.fromtimestamp(latest.at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        return NovitaState(False, f"{latest.problem} (seen by {latest.source} at {seen})")

    async def _shared_observation(self) -> _Observation | None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT_SECONDS):
                raw = await self._redis.get(CHECK_KEY)
        except (RedisError, OSError, TimeoutError):
            return None  # Valkey's own health is reported separately
        if not raw:
            return None
        try:
            stored = json.loads(raw)
            return _Observation(
                up=stored["problem"] is None,
                at=float(stored["at"]),
                source="the background check",
                problem=stored["problem"],
            )
        except (ValueError, KeyError, TypeError):
            return None


def _local_observations(status: UpstreamStatus) -> list[_Observation]:
    observations = []
    if status.last_success_at is not None:
        observations.append(_Observation(True, status.last_success_at.timestamp(), "this replica's calls"))
    if status.last_failure_at is not None and status.last_error_kind != _THROTTLED_KIND:
        observations.append(
            _Observation(
                False,
                status.last_failure_at.timestamp(),
                "this replica's calls",
                _describe(status.last_error_kind, status.last_error_reason),
            )
        )
    return observations


def _latest(observations: list[_Observation]) -> _Observation | None:
    return max(observations, key=lambda observation: observation.at, default=None)


def _describe(kind: str | None, reason: str | None) -> str:
    if kind == _AUTH_KIND:
        return f"Novita refused our API key ({reason})"
    return f"Novita call failed ({reason or kind})"
