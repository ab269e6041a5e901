"""Webhooks: signed per Standard Webhooks (checked with an independent HMAC and with the `standardwebhooks` library
that receivers use), retries on 5xx and network errors only, a durable
outbox that survives a restart, one delivery per event across replicas, and the SSRF guard."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import pytest
from redis.asyncio import Redis
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from app.lifecycle.webhooks import (
    DeliveryPolicy,
    UnsafeWebhookUrl,
    UrlGuard,
    WebhookEvent,
    WebhookNotifier,
    WebhookOutbox,
)
from tests.app.lifecycle_helpers import LifecycleEnv, WebhookReceiver
from tests.loopback import free_port

SIGNING_KEY = b"test-signing-key-0123456789abcdef"
WHSEC_SECRET = "whsec_" + base64.b64encode(SIGNING_KEY).decode()  # the same key, in the standard's form
POLICY = DeliveryPolicy(
    max_attempts=3, backoff_base_seconds=10.0, backoff_max_seconds=100.0, timeout_seconds=2.0, lock_seconds=5.0
)
ALLOW_LOOPBACK = UrlGuard(block_private=False)


def outbox_for(env: LifecycleEnv, redis: Redis | None = None, guard: UrlGuard = ALLOW_LOOPBACK) -> WebhookOutbox:
    return WebhookOutbox(redis or env.redis, signing_key=SIGNING_KEY, guard=guard, policy=POLICY, clock=env.clock)


def event(env: LifecycleEnv, kind: str = "instance.auto_stopped", instance_id: str = "rec1") -> WebhookEvent:
    return WebhookEvent(type=kind, instance_id=instance_id, data={"reason": "idle"}, occurred_at=env.clock())


async def test_delivery_is_signed_over_id_timestamp_and_body(
    lifecycle_env: LifecycleEnv, webhook_receiver: WebhookReceiver
) -> None:
    outbox = outbox_for(lifecycle_env)
    sent = event(lifecycle_env)
    await outbox.enqueue(sent, webhook_receiver.url)
    lifecycle_env.clock.advance(3.7)

    report = await outbox.deliver_due()

    assert report.delivered == 1
    [received] = webhook_receiver.received
    assert received.headers["webhook-id"] == sent.id
    timestamp = received.headers["webhook-timestamp"]
    assert timestamp == str(int(lifecycle_env.clock()))  # when this attempt was signed, not when the event happened
    signed = f"{sent.id}.{timestamp}.".encode() + received.body
    expected = base64.b64encode(hmac.new(SIGNING_KEY, signed, hashlib.sha256).digest()).decode()
    assert received.headers["webhook-signature"] == f"v1,{expected}"
    assert json.loads(received.body) == {
        "id": sent.id,
        "type": "instance.auto_stopped",
        "instanceId": "rec1",
        "occurredAt": sent.occurred_at,
        "data": {"reason": "idle"},
    }
    wrong = base64.b64encode(hmac.new(b"another-key", signed, hashlib.sha256).digest()).decode()
    assert received.headers["webhook-signature"] != f"v1,{wrong}"
    await outbox.aclose()


async def test_the_standardwebhooks_library_verifies_every_attempt_under_one_id(
    lifecycle_env: LifecycleEnv, webhook_receiver: WebhookReceiver
) -> None:
    """Real deliveries, a first one refused with 503 and its retry, checked the way a receiver would."""
    webhook_receiver.statuses = [503]
    quick_retry = DeliveryPolicy(max_attempts=3, backoff_base_seconds=0.01, timeout_seconds=2.0, lock_seconds=5.0)
    # The library compares the timestamp with the real time, so this outbox signs with the real clock.
    outbox = WebhookOutbox(
        lifecycle_env.redis, signing_key=SIGNING_KEY, guard=ALLOW_LOOPBACK, policy=quick_retry, clock=time.time
    )
    sent = event(lifecycle_env)
    await outbox.enqueue(sent, webhook_receiver.url)

    assert (await outbox.deliver_due()).retried == 1
    await asyncio.sleep(0.05)
    assert (await outbox.deliver_due()).delivered == 1

    first, retry = webhook_receiver.received
    assert first.headers["webhook-id"] == retry.headers["webhook-id"] == sent.id  # receivers dedupe on it
    for received in (first, retry):
        assert Webhook(WHSEC_SECRET).verify(received.body, received.headers)["id"] == sent.id
        assert Webhook(SIGNING_KEY).verify(received.body, received.headers)["id"] == sent.id  # a plain secret's bytes
    with pytest.raises(WebhookVerificationError):
        Webhook(base64.b64encode(b"another-key").decode()).verify(retry.body, retry.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(WHSEC_SECRET).verify(retry.body.replace(b"idle", b"busy"), retry.headers)
    with pytest.raises(WebhookVerificationError):  # a captured delivery replayed with another timestamp
        Webhook(WHSEC_SECRET).verify(retry.body, {**retry.headers, "webhook-timestamp": str(int(time.time()) - 120)})
    await outbox.aclose()


async def test_5xx_is_retried_with_backoff_until_delivered(
    lifecycle_env: LifecycleEnv, webhook_receiver: WebhookReceiver
) -> None:
    webhook_receiver.statuses = [500, 503]
    outbox = outbox_for(lifecycle_env)
    sent = event(lifecycle_env)
    delivery_id = await outbox.enqueue(sent, webhook_receiver.url)
    assert delivery_id is not None

    assert (await outbox.deliver_due()).retried == 1
    assert (await outbox.deliver_due()).retried == 0  # not due before its backoff (10 s)
    lifecycle_env.clock.advance(9.9)
    assert (await outbox.deliver_due()).retried == 0
    lifecycle_env.clock.advance(0.2)
    assert (await outbox.deliver_due()).retried == 1  # second failure: next backoff 20 s
    lifecycle_env.clock.advance(20.1)
    assert (await outbox.deliver_due()).delivered == 1

    assert [item.headers["webhook-id"] for item in webhook_receiver.received] == [sent.id] * 3
    stored = await outbox.get(delivery_id)
    assert stored is not None and stored["state"] == "delivered" and stored["attempts"] == "3"
    lifecycle_env.clock.advance(1000)
    await outbox.deliver_due()
    assert len(webhook_receiver.received) == 3  # delivered once: never sent again
    await outbox.aclose()


async def test_4xx_is_not_retried(lifecycle_env: LifecycleEnv, webhook_receiver: WebhookReceiver) -> None:
    webhook_receiver.statuses = [404]
    outbox = outbox_for(lifecycle_env)
    delivery_id = await outbox.enqueue(event(lifecycle_env), webhook_receiver.url)

    assert (await outbox.deliver_due()).dead == 1
    lifecycle_env.clock.advance(10_000)
    await outbox.deliver_due()

    assert len(webhook_receiver.received) == 1
    [dead] = await outbox.dead_letters()
    assert dead["state"] == "dead" and dead["attempts"] == "1" and "HTTP 404" in dead["last_error"]
    assert delivery_id is not None and (await outbox.get(delivery_id)) == dead
    await outbox.aclose()


async def test_network_errors_are_retried_then_the_delivery_is_dead(lifecycle_env: LifecycleEnv) -> None:
    outbox = outbox_for(lifecycle_env)
    delivery_id = await outbox.enqueue(event(lifecycle_env), f"http://127.0.0.1:{free_port()}/hooks")  # refused
    assert delivery_id is not None

    assert (await outbox.deliver_due()).retried == 1
    stored = await outbox.get(delivery_id)
    assert stored is not None and stored["state"] == "pending" and "network error" in stored["last_error"]
    lifecycle_env.clock.advance(10.1)
    assert (await outbox.deliver_due()).retried == 1
    lifecycle_env.clock.advance(20.1)
    assert (await outbox.deliver_due()).dead == 1  # third attempt of max_attempts=3
    await outbox.aclose()


async def test_a_restart_loses_no_notification(lifecycle_env: LifecycleEnv, webhook_receiver: WebhookReceiver) -> None:
    before_restart = outbox_for(lifecycle_env)
    sent = event(lifecycle_env)
    await before_restart.enqueue(sent, webhook_receiver.url)
    await before_restart.aclose()  # the process goes away before delivering
    lifecycle_env.redis_server.restart(save=True)  # and Valkey restarts too (SHUTDOWN SAVE, like a snapshot)

    fresh_redis = Redis.from_url(lifecycle_env.redis_server.url, decode_responses=True)
    after_restart = outbox_for(lifecycle_env, redis=fresh_redis)
    assert (await after_restart.deliver_due()).delivered == 1

    assert [item.headers["webhook-id"] for item in webhook_receiver.received] == [sent.id]
    await after_restart.aclose()
    await fresh_redis.aclose()


async def test_two_replicas_never_send_the_same_webhook_twice(
    lifecycle_env: LifecycleEnv, webhook_receiver: WebhookReceiver
) -> None:
    replica_redis = [Redis.from_url(lifecycle_env.redis_server.url, decode_responses=True) for _ in range(2)]
    replicas = [outbox_for(lifecycle_env, redis=redis) for redis in replica_redis]
    sent = [event(lifecycle_env, instance_id=f"rec{index}") for index in range(20)]
    for item in sent:
        await replicas[0].enqueue(item, webhook_receiver.url)
        assert await replicas[1].enqueue(item, webhook_receiver.url) is None  # the same event twice: stored once

    for _ in range(3):
        reports = await asyncio.gather(*(replica.deliver_due() for replica in replicas))
    assert sum(report.delivered for report in reports) == 0  # everything went in the first round

    ids = [item.headers["webhook-id"] for item in webhook_receiver.received]
    assert sorted(ids) == sorted(item.id for item in sent)
    for replica in replicas:
        await replica.aclose()
    for redis in replica_redis:
        await redis.aclose()


async def test_notifier_sends_to_the_global_and_the_instance_url(
    lifecycle_env: LifecycleEnv, webhook_receiver: WebhookReceiver
) -> None:
    other = WebhookReceiver()
    try:
        outbox = outbox_for(lifecycle_env)
        notifier = WebhookNotifier(
            lifecycle_env.redis, outbox, ALLOW_LOOPBACK, global_url=webhook_receiver.url, clock=lifecycle_env.clock
        )
        await notifier.set_instance_url("rec1", other.url)

        emitted = await notifier.emit("instance.state_changed", "rec1", {"from": "provisioning", "to": "running"})
        await notifier.emit("instance.state_changed", "rec2", {"from": "running", "to": "stopped"})
        await outbox.deliver_due()

        assert [body["id"] for body in other.bodies()] == [emitted.id]
        # Order is not promised (a retried event arrives after later ones): receivers sort by occurredAt.
        assert sorted(body["instanceId"] for body in webhook_receiver.bodies()) == ["rec1", "rec2"]
        await outbox.aclose()
    finally:
        other.close()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hooks",
        "http://10.1.2.3/hooks",
        "https://169.254.169.254/latest/meta-data",
        "http://192.168.0.10/",
        "http://[::1]/hooks",
        "http://[::ffff:10.0.0.1]/hooks",
        "http://localhost/hooks",
    ],
)
async def test_production_guard_refuses_private_addresses(url: str) -> None:
    guard = UrlGuard(block_private=True)
    with pytest.raises(UnsafeWebhookUrl, match="refused in production"):
        await guard.check(url)
    await UrlGuard(block_private=False).check(url)  # the explicit allow switch (and development) accept it


async def test_guard_checks_every_address_a_name_resolves_to() -> None:
    answers = {"mixed.example": ["93.184.216.34", "10.0.0.7"], "public.example": ["93.184.216.34"]}

    async def resolver(host: str, port: int) -> list[str]:
        return answers[host]

    guard = UrlGuard(block_private=True, resolver=resolver)
    with pytest.raises(UnsafeWebhookUrl, match=r"10\.0\.0\.7 \(private\)"):
        await guard.check("https://mixed.example/hooks")
    await guard.check("https://public.example/hooks")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://example.com/x", "http:// or https://"),
        ("http:///no-host", "http:// or https://"),
        ("https://user:secret@example.com/x", "credentials"),
    ],
)
async def test_guard_refuses_malformed_urls_everywhere(url: str, problem: str) -> None:
    with pytest.raises(UnsafeWebhookUrl, match=problem) as raised:
        await UrlGuard(block_private=False).check(url)
    assert "secret" not in str(raised.value)


async def test_guard_is_enforced_again_at_delivery(
    lifecycle_env: LifecycleEnv, webhook_receiver: WebhookReceiver
) -> None:
    outbox = outbox_for(lifecycle_env, guard=UrlGuard(block_private=True))
    delivery_id = await outbox.enqueue(event(lifecycle_env), webhook_receiver.url)

    assert (await outbox.deliver_due()).dead == 1

    assert webhook_receiver.received == []
    assert delivery_id is not None
    stored = await outbox.get(delivery_id)
    assert stored is not None and "loopback" in stored["last_error"]
    await outbox.aclose()


async def test_notifier_refuses_a_private_instance_url_in_production(lifecycle_env: LifecycleEnv) -> None:
    guard = UrlGuard(block_private=True)
    outbox = outbox_for(lifecycle_env, guard=guard)
    notifier = WebhookNotifier(lifecycle_env.redis, outbox, guard, global_url=None, clock=lifecycle_env.clock)
    with pytest.raises(UnsafeWebhookUrl):
        await notifier.set_instance_url("rec1", "http://169.254.169.254/")
    await notifier.emit("instance.state_changed", "rec1", {})
    assert await lifecycle_env.redis.zcard("ngpu:lifecycle:webhooks:due") == 0
    await outbox.aclose()


async def test_without_a_secret_events_are_only_logged(
    lifecycle_env: LifecycleEnv, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = WebhookNotifier(lifecycle_env.redis, None, ALLOW_LOOPBACK, global_url=None, clock=lifecycle_env.clock)
    with pytest.raises(UnsafeWebhookUrl, match="WEBHOOK_SECRET"):
        await notifier.set_instance_url("rec1", "https://hooks.example/x")
    with caplog.at_level("INFO", logger="app.lifecycle.webhooks"):
        await notifier.emit("instance.auto_stopped", "rec1", {})
    assert "lifecycle event" in caplog.text
    with pytest.raises(ValueError, match="signing secret"):
        WebhookNotifier(lifecycle_env.redis, None, ALLOW_LOOPBACK, global_url="https://hooks.example/x")
