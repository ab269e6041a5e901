"""The only place that opens Valkey connections: TLS, timeouts, retries and the up/down state the app reports."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections.abc import AsyncIterator
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError, WatchError

from app.core.config import Settings
from app.core.errors import ServiceUnavailable

logger = logging.getLogger(__name__)

# The blocking client's socket must outlive the longest XREADGROUP BLOCK, or every idle read would time out.
_BLOCKING_READ_MARGIN_SECONDS = 5.0
# Delete a lock only if it still holds our token (it may have expired and been taken by someone else).
RELEASE_LOCK_SCRIPT = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
_EXTEND_LOCK_SCRIPT = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
)


class Lease:
    """A named lease on Valkey (SET NX PX with a random token): how a piece of work is done once across replicas.

    Whoever sets the key first owns the work until it expires or is released. Release and extend act only while the
    key still holds our token, so a lease that expired and was taken over by another replica is never touched.
    """

    def __init__(self, redis: Redis, key: str, ttl_seconds: float) -> None:
        if ttl_seconds <= 0:
            raise ValueError("a lease needs a positive ttl_seconds")
        self.key = key
        self._redis = redis
        self._ttl_ms = max(1, int(ttl_seconds * 1000))
        self._token = secrets.token_hex(16)

    @property
    def token(self) -> str:
        """What the key holds while the lease is ours (for a script that takes the lease as part of a larger step)."""
        return self._token

    @property
    def ttl_ms(self) -> int:
        """The lease's time to live in milliseconds."""
        return self._ttl_ms

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it; True when we now hold it."""
        return bool(await self._redis.set(self.key, self._token, nx=True, px=self._ttl_ms))

    async def extend(self) -> bool:
        """Restart the lease's time to live; False when it is no longer ours."""
        return bool(await self._redis.eval(_EXTEND_LOCK_SCRIPT, 1, self.key, self._token, str(self._ttl_ms)))

    async def release(self) -> None:
        """Give the lease back early (a no-op if it expired and someone else holds it now)."""
        await self._redis.eval(RELEASE_LOCK_SCRIPT, 1, self.key, self._token)


class RedisManager:
    """Owns the Valkey clients and knows whether Valkey answered lately.

    Two clients share one URL: `client` for ordinary commands (short socket timeout) and `blocking_client` for the
    queue consumer's blocking reads. Neither connects until first used, so the app can start while Valkey is down.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.uses_tls = settings.redis_uses_tls
        self.is_up = False
        self.last_error: str | None = "not connected yet"
        self._client = self._build_client(socket_timeout=settings.redis_socket_timeout_seconds)
        self._blocking_client = self._build_client(
            socket_timeout=settings.job_read_block_seconds + _BLOCKING_READ_MARGIN_SECONDS
        )

    def _build_client(self, *, socket_timeout: float) -> Redis:
        settings = self._settings
        options: dict[str, Any] = {
            "decode_responses": True,
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": settings.redis_connect_timeout_seconds,
            "socket_keepalive": True,
            "health_check_interval": settings.redis_health_check_interval_seconds,
            # Bounded, jittered retries of one command on a dropped connection (Aiven restarts nodes in maintenance).
            "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), settings.redis_command_retries),
        }
        if self.uses_tls:
            options["ssl_cert_reqs"] = "required"
            if settings.redis_ca_cert is not None:
                options["ssl_ca_certs"] = str(settings.redis_ca_cert)
        return Redis.from_url(settings.redis_connection_url, **options)

    @property
    def client(self) -> Redis:
        """Client for ordinary commands."""
        return self._client

    @property
    def blocking_client(self) -> Redis:
        """Client for blocking reads (XREADGROUP BLOCK); its socket timeout exceeds the block time."""
        return self._blocking_client

    def record_failure(self, error: BaseException) -> None:
        """Note that a command failed for a connection reason, so health and the cache react before the next ping."""
        self.is_up = False
        self.last_error = _describe(error)

    async def ping(self, timeout_seconds: float = 1.0) -> bool:
        """Check Valkey now, bounded by `timeout_seconds`; updates `is_up`."""
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation (and hang a shutdown).
            async with asyncio.timeout(timeout_seconds):
                await self._client.ping()
        except (RedisError, OSError, TimeoutError) as error:
            if self.is_up:
                logger.warning("valkey unreachable", extra={"error": _describe(error)})
            self.record_failure(error)
            return False
        if not self.is_up:
            logger.info("valkey reachable", extra={"tls": self.uses_tls})
        self.is_up = True
        self.last_error = None
        return True

    async def wait_until_connected(self) -> None:
        """Ping until Valkey answers, with capped exponential backoff; each attempt is bounded by the timeouts.

        It never gives up: a service that cannot reach Valkey stays not-ready (so a deploy with a wrong Valkey never
        turns healthy) and logs why, instead of exiting into a restart loop that hides the reason.
        """
        delay = 0.2
        attempt = 0
        while not await self.ping(timeout_seconds=self._settings.redis_connect_timeout_seconds + 1):
            attempt += 1
            logger.warning(
                "valkey not reachable yet, retrying",
                extra={"attempt": attempt, "error": self.last_error, "retryInSeconds": round(delay, 2)},
            )
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self._settings.redis_startup_retry_max_delay_seconds)

    async def monitor(self, interval_seconds: float) -> None:
        """Ping forever so `is_up` follows Valkey going down and coming back (health, cache bypass)."""
        while True:
            await self.ping()
            await asyncio.sleep(interval_seconds)

    async def close(self) -> None:
        """Close both connection pools."""
        for client in (self._client, self._blocking_client):
            with contextlib.suppress(RedisError, OSError):  # closing: nothing left to do about a dead connection
                await client.aclose()


@contextlib.asynccontextmanager
async def valkey_errors() -> AsyncIterator[None]:
    """Turn a Valkey failure inside the block into `ServiceUnavailable` (503, never a 500); a `WatchError` goes
    through untouched, for the optimistic transaction that retries on it."""
    try:
        yield
    except WatchError:
        raise
    except (RedisError, OSError) as exc:
        raise ServiceUnavailable(f"Valkey is unavailable ({type(exc).__name__})") from exc


# Every client here decodes answers (decode_responses=True), so Valkey answers text; redis-py's types cannot know that.
def texts(answer: Any) -> list[str]:
    """A list answer (ZRANGE, SMEMBERS...) as the list of str it is."""
    return cast(list[str], answer)


def text_hash(answer: Any) -> dict[str, str]:
    """An HGETALL answer as the dict of str it is."""
    return cast(dict[str, str], answer)


def _describe(error: BaseException) -> str:
    """Error text for logs and health: the class and message, which for redis-py hold host:port, not passwords."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
