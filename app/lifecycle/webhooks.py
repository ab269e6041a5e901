"""Signed webhooks with a durable outbox on Valkey, retries on 5xx and network errors only, and an SSRF guard.

Every state change and automatic action becomes a `WebhookEvent`, written to the outbox before anyone is told, so a
restart loses no notification. Delivery POSTs the JSON body signed per the Standard Webhooks specification
(https://www.standardwebhooks.com), so receivers verify it with that project's libraries (`standardwebhooks` on PyPI):

- `webhook-id`: the event id, the same on every retry of the event (receivers dedupe on it: delivery is
  at-least-once);
- `webhook-timestamp`: Unix seconds when this attempt was signed (receivers reject old ones: replays);
- `webhook-signature`: `v1,<base64 HMAC-SHA256 of f"{id}.{timestamp}.{body}">`, keyed with the decoded
  `whsec_` secret (or a plain secret's own bytes: `Settings.webhook_signing_key`).

Layout (under `ngpu:lifecycle:`): `webhook:<delivery id>` hash (body, url, attempts, state), `webhooks:due` sorted set
(delivery id -> due time), `webhooks:dead` sorted set, `webhook-lock:<delivery id>` (SET NX PX while sending, so two
replicas never send the same delivery at once, and a delivered one is never sent again).
Order is not promised (a retried event arrives after later ones): receivers order by the body's `occurredAt`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import httpx
from redis.asyncio import Redis

from app.core.clock import SYSTEM_CLOCK, WallClock
from app.core.redis import Lease, text_hash, texts
from app.lifecycle.keys import KEY_PREFIX

logger = logging.getLogger(__name__)

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"

DUE_KEY = f"{KEY_PREFIX}webhooks:due"
DEAD_KEY = f"{KEY_PREFIX}webhooks:dead"
# Delivered and dead deliveries stay readable for a week; a pending one too, in case delivery never runs.
DELIVERY_RETENTION_SECONDS = 7 * 24 * 3600


def _delivery_key(delivery_id: str) -> str:
    return f"{KEY_PREFIX}webhook:{delivery_id}"


def _target_key(instance_id: str) -> str:
    return f"{KEY_PREFIX}webhook-url:{instance_id}"


# Write the delivery and make it due in one step; an existing delivery (the same event to the same URL) is kept.
_ENQUEUE_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"""


@dataclass(frozen=True)
class WebhookEvent:
    """One notification: `type` like `instance.auto_stopped`, `data` its details (never a secret)."""

    type: str
    instance_id: str | None
    data: dict[str, Any]
    occurred_at: float
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def body(self) -> str:
        """The JSON body, exactly as signed and sent."""
        return json.dumps(
            {
                "id": self.id,
                "type": self.type,
                "occurredAt": self.occurred_at,
                "instanceId": self.instance_id,
                "data": self.data,
            },
            sort_keys=True,
            separators=(",", ":"),
        )


def sign(key: bytes, message_id: str, timestamp: int, body: str) -> str:
    """The `webhook-signature` value: `v1,` + base64 HMAC-SHA256 of `f"{message_id}.{timestamp}.{body}"`."""
    digest = hmac.new(key, f"{message_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return f"v1,{base64.b64encode(digest).decode()}"


# -- SSRF guard ------------------------------------------------------------------------------------------------------


class UnsafeWebhookUrl(ValueError):
    """The URL is not one we will send to; the message says why (and never contains the URL's credentials)."""


class UnresolvableWebhookUrl(UnsafeWebhookUrl):
    """The host does not resolve (may be temporary: delivery retries, registration refuses)."""


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve_host(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (system resolver, without blocking the event loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


class UrlGuard:
    """Checks webhook URLs: http(s) with a host, and, when `block_private`, no address that is not public.

    Every address the host resolves to is checked (a name with one public and one private address is refused).
    The check runs again before each delivery, so a name re-pointed at a private address later is caught too.
    """

    def __init__(self, *, block_private: bool, resolver: Resolver = resolve_host) -> None:
        self.block_private = block_private
        self._resolver = resolver

    async def check(self, url: str) -> None:
        """Raise `UnsafeWebhookUrl` naming the problem, or return when the URL may be used."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UnsafeWebhookUrl("webhook URL must be an http:// or https:// URL with a host")
        if parts.username or parts.password:
            raise UnsafeWebhookUrl("webhook URL must not contain credentials")
        if not self.block_private:
            return
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise UnsafeWebhookUrl("webhook URL has an invalid port") from None
        try:
            addresses = await self._resolver(parts.hostname, port)
        except OSError as error:
            raise UnresolvableWebhookUrl(f"webhook host {parts.hostname!r} does not resolve ({error})") from None
        if not addresses:
            raise UnresolvableWebhookUrl(f"webhook host {parts.hostname!r} does not resolve")
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            if not ip.is_global or ip.is_multicast:
                raise UnsafeWebhookUrl(
                    f"webhook host {parts.hostname!r} resolves to {ip} ({_address_kind(ip)}), which is refused in "
                    "production; set WEBHOOK_ALLOW_PRIVATE_TARGETS=true to allow it"
                )


def _address_kind(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    for kind in ("loopback", "link_local", "private", "multicast", "reserved", "unspecified"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    return "not public"


# -- outbox ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryPolicy:
    """How hard delivery tries: attempts, exponential backoff, per-request timeout, lock while sending."""

    max_attempts: int = 8
    backoff_base_seconds: float = 5.0
    backoff_max_seconds: float = 600.0
    timeout_seconds: float = 10.0
    lock_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.lock_seconds <= self.timeout_seconds:
            raise ValueError("lock_seconds must exceed timeout_seconds, or a slow send could be repeated")

    def backoff(self, failed_attempts: int) -> float:
        """Seconds before the next attempt after `failed_attempts` failures."""
        return min(self.backoff_max_seconds, self.backoff_base_seconds * 2.0 ** (failed_attempts - 1))


@dataclass
class DeliveryReport:
    """What one `deliver_due()` pass did."""

    delivered: int = 0
    retried: int = 0
    dead: int = 0


class WebhookOutbox:
    """Durable webhook deliveries on Valkey: `enqueue()` then, periodically, `deliver_due()` from any replica."""

    def __init__(
        self,
        redis: Redis,
        *,
        signing_key: bytes,
        guard: UrlGuard,
        policy: DeliveryPolicy | None = None,
        clock: WallClock = SYSTEM_CLOCK,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        if not signing_key:
            raise ValueError("a webhook signing key is required")
        self._redis = redis
        self._signing_key = signing_key
        self._guard = guard
        self._policy = policy or DeliveryPolicy()
        self._clock = clock
        # No redirects: a redirect could lead past the SSRF guard.
        self._http = http or httpx.AsyncClient(timeout=self._policy.timeout_seconds, follow_redirects=False)

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._http.aclose()

    async def enqueue(self, event: WebhookEvent, url: str) -> str | None:
        """Store a delivery of `event` to `url`, due now; returns its id, or None if it was already stored."""
        delivery_id = f"{event.id}-{hashlib.sha256(url.encode()).hexdigest()[:12]}"
        record = {
            "event_id": event.id,
            "event_type": event.type,
            "body": event.body(),
            "url": url,
            "attempts": "0",
            "state": "pending",
            "last_error": "",
        }
        fields = [item for pair in record.items() for item in pair]
        created = await self._redis.eval(
            _ENQUEUE_SCRIPT,
            2,
            _delivery_key(delivery_id),
            DUE_KEY,
            delivery_id,
            repr(self._clock()),
            str(DELIVERY_RETENTION_SECONDS),
            *fields,
        )
        return delivery_id if created else None

    async def deliver_due(self, limit: int = 100) -> DeliveryReport:
        """Send every delivery whose time has come (those another replica is sending are skipped)."""
        report = DeliveryReport()
        due = await self._redis.zrangebyscore(DUE_KEY, "-inf", repr(self._clock()), start=0, num=limit)
        for delivery_id in texts(due):
            outcome = await self._deliver_once(delivery_id)
            if outcome is not None:
                setattr(report, outcome, getattr(report, outcome) + 1)
        return report

    async def get(self, delivery_id: str) -> dict[str, str] | None:
        """A delivery's stored fields (`state`: pending, delivered or dead; `attempts`, `last_error`)."""
        raw = text_hash(await self._redis.hgetall(_delivery_key(delivery_id)))
        return raw or None

    async def dead_letters(self, limit: int = 100) -> list[dict[str, str]]:
        """Deliveries that gave up, most recent first."""
        ids = await self._redis.zrevrange(DEAD_KEY, 0, max(0, limit - 1))
        return [delivery for delivery_id in texts(ids) if (delivery := await self.get(delivery_id)) is not None]

    async def _deliver_once(self, delivery_id: str) -> str | None:
        lock = Lease(self._redis, f"{KEY_PREFIX}webhook-lock:{delivery_id}", self._policy.lock_seconds)
        if not await lock.acquire():
            return None
        try:
            # Re-check under the lock: another replica may have delivered or rescheduled it since we listed it.
            due_at = await self._redis.zscore(DUE_KEY, delivery_id)
            if due_at is None or due_at > self._clock():
                return None
            delivery = await self.get(delivery_id)
            if delivery is None or delivery.get("state") != "pending":
                await self._redis.zrem(DUE_KEY, delivery_id)
                return None
            return await self._attempt(delivery_id, delivery)
        finally:
            await lock.release()

    async def _attempt(self, delivery_id: str, delivery: dict[str, str]) -> str:
        attempts = int(delivery.get("attempts") or 0) + 1
        url = delivery["url"]
        try:
            await self._guard.check(url)
            response = await self._post(url, delivery)
        except UnresolvableWebhookUrl as error:
            return await self._failed(delivery_id, attempts, str(error), retryable=True)
        except UnsafeWebhookUrl as error:
            return await self._failed(delivery_id, attempts, str(error), retryable=False)
        except httpx.HTTPError as error:
            return await self._failed(delivery_id, attempts, f"network error ({type(error).__name__})", retryable=True)
        if response.is_success:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(
                    _delivery_key(delivery_id),
                    mapping={"state": "delivered", "attempts": str(attempts), "last_error": ""},
                )
                pipe.zrem(DUE_KEY, delivery_id)
                await pipe.execute()
            return "delivered"
        return await self._failed(
            delivery_id,
            attempts,
            f"receiver answered HTTP {response.status_code}",
            retryable=response.status_code >= 500,
        )

    async def _post(self, url: str, delivery: dict[str, str]) -> httpx.Response:
        body = delivery["body"]
        timestamp = int(self._clock())
        # The event id, not the delivery id: a receiver sees one id per event, however often it is retried.
        message_id = delivery["event_id"]
        headers = {
            "Content-Type": "application/json",
            ID_HEADER: message_id,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(self._signing_key, message_id, timestamp, body),
        }
        return await self._http.post(url, content=body.encode(), headers=headers)

    async def _failed(self, delivery_id: str, attempts: int, reason: str, *, retryable: bool) -> str:
        key = _delivery_key(delivery_id)
        give_up = not retryable or attempts >= self._policy.max_attempts
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={"attempts": str(attempts), "last_error": reason, "state": "dead" if give_up else "pending"},
            )
            if give_up:
                pipe.zrem(DUE_KEY, delivery_id)
                pipe.zadd(DEAD_KEY, {delivery_id: self._clock()})
            else:
                pipe.zadd(DUE_KEY, {delivery_id: self._clock() + self._policy.backoff(attempts)})
            await pipe.execute()
        logger.warning(
            "webhook delivery failed",
            extra={"deliveryId": delivery_id, "attempt": attempts, "reason": reason, "gaveUp": give_up},
        )
        return "dead" if give_up else "retried"


# -- who gets told ---------------------------------------------------------------------------------------------------


class EventSink(Protocol):
    """Where the automations report state changes and actions."""

    async def emit(self, event_type: str, instance_id: str | None, data: dict[str, Any]) -> WebhookEvent:
        """Record the event durably for every interested receiver."""
        ...


class WebhookNotifier:
    """Turns an event into outbox deliveries: to the global URL and to the instance's own URL, if any.

    Without an outbox (no signing secret configured) events are only logged, and per-instance URLs are refused.
    """

    def __init__(
        self,
        redis: Redis,
        outbox: WebhookOutbox | None,
        guard: UrlGuard,
        *,
        global_url: str | None,
        clock: WallClock = SYSTEM_CLOCK,
    ) -> None:
        if global_url is not None and outbox is None:
            raise ValueError("a global webhook URL needs a signing secret (an outbox)")
        self._redis = redis
        self._outbox = outbox
        self._guard = guard
        self._global_url = global_url
        self._clock = clock

    async def set_instance_url(self, instance_id: str, url: str | None) -> None:
        """Send this instance's events to `url` as well (None forgets it); `UnsafeWebhookUrl` if refused."""
        if url is None:
            await self._redis.delete(_target_key(instance_id))
            return
        if self._outbox is None:
            raise UnsafeWebhookUrl("webhooks are not configured on this service (no WEBHOOK_SECRET)")
        await self._guard.check(url)
        await self._redis.set(_target_key(instance_id), url, ex=DELIVERY_RETENTION_SECONDS * 8)

    async def emit(self, event_type: str, instance_id: str | None, data: dict[str, Any]) -> WebhookEvent:
        """Store one delivery per receiver of the event (none when no URL is configured)."""
        event = WebhookEvent(type=event_type, instance_id=instance_id, data=data, occurred_at=self._clock())
        urls = [self._global_url] if self._global_url else []
        if instance_id is not None and self._outbox is not None:
            own = cast(str | None, await self._redis.get(_target_key(instance_id)))
            if own and own not in urls:
                urls.append(own)
        for url in urls:
            assert self._outbox is not None
            await self._outbox.enqueue(event, url)
        logger.info(
            "lifecycle event",
            extra={"eventType": event_type, "instanceId": instance_id, "eventId": event.id, "receivers": len(urls)},
        )
        return event
