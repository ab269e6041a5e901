"""The automations assembled as the app runs them, two replicas over one Valkey: after Valkey lost everything,
reconciliation rebuilds the records, the idle instance is stopped once, and each event reaches the receiver once."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from redis.asyncio import Redis

from app.fleet.schemas import InstanceState
from app.fleet.store import InstanceStore
from app.lifecycle.automation import LifecycleAutomation, LifecycleConfig
from app.lifecycle.cost_guards import CostGuardPolicy
from app.lifecycle.webhooks import DeliveryPolicy
from tests.app.lifecycle_helpers import LifecycleEnv, WebhookReceiver, managed_instance

STOP = "/gpu/instance/stop"


def config(receiver: WebhookReceiver) -> LifecycleConfig:
    return LifecycleConfig(
        webhook_url=receiver.url,
        webhook_signing_key=b"system-test-signing-key",
        webhook_block_private=False,
        delivery=DeliveryPolicy(timeout_seconds=2.0, lock_seconds=5.0),
        guards=CostGuardPolicy(idle_timeout_seconds=60, startup_grace_seconds=60, action_lock_seconds=30),
        cost_guard_interval_seconds=30,
        reconcile_interval_seconds=300,
        webhook_delivery_interval_seconds=5,
    )


async def test_two_replicas_after_a_valkey_flush(
    lifecycle_env: LifecycleEnv, webhook_receiver: WebhookReceiver
) -> None:
    env = lifecycle_env
    record = await managed_instance(env, status="running")
    env.redis_server.flushall()  # Valkey lost every record while the instance keeps running (and billing)
    replica_redis = [Redis.from_url(env.redis_server.url, decode_responses=True) for _ in range(2)]
    novita_clients = [env.new_novita_client() for _ in range(2)]
    replicas = [
        LifecycleAutomation(config(webhook_receiver), redis, novita, env.store, clock=env.clock)
        for redis, novita in zip(replica_redis, novita_clients, strict=True)
    ]

    async def tick() -> None:
        await asyncio.gather(*(replica.scheduler.run_due() for replica in replicas))

    await tick()
    rebuilt = await env.store.get(record.id)
    assert rebuilt is not None and rebuilt.state == InstanceState.RUNNING
    assert env.fake.call_count("POST", STOP) == 0  # just seen running: not idle yet

    await replicas[1].activity.heartbeat(record.id, env.clock())
    env.clock.advance(59)
    await tick()
    assert env.fake.call_count("POST", STOP) == 0
    env.clock.advance(60)
    await tick()

    assert env.fake.call_count("POST", STOP) == 1
    stopped = await env.store.get(record.id)
    assert stopped is not None and stopped.state == InstanceState.STOPPING
    for _ in range(3):
        env.clock.advance(5)
        await tick()
    event_ids = Counter(item.headers["webhook-id"] for item in webhook_receiver.received)
    assert set(event_ids.values()) == {1}
    assert sorted(body["type"] for body in webhook_receiver.bodies()) == ["instance.auto_stopped", "instance.rebuilt"]
    for replica, redis, novita in zip(replicas, replica_redis, novita_clients, strict=True):
        await replica.stop()
        await redis.aclose()
        await novita.aclose()


async def test_start_reconciles_at_once_and_keeps_ticking(
    lifecycle_env: LifecycleEnv, webhook_receiver: WebhookReceiver
) -> None:
    env = lifecycle_env
    record = await managed_instance(env, status="running")
    await env.redis.delete(f"ngpu:instance:{record.id}")  # the last writes were lost
    automation = LifecycleAutomation(
        config(webhook_receiver), env.redis, env.novita, InstanceStore(env.redis_manager), clock=env.clock
    )

    await automation.start()
    assert automation.startup_reconcile is not None
    await asyncio.wait_for(automation.startup_reconcile, 5)  # start() returned at once; this runs in the background

    assert await env.store.get(record.id) is not None
    assert automation.running
    await automation.stop()
    assert not automation.running


async def test_a_long_startup_reconciliation_goes_on_in_the_background_with_visible_progress(
    lifecycle_env: LifecycleEnv, caplog: pytest.LogCaptureFixture
) -> None:
    env = lifecycle_env
    env.fake.add_faults({"path": "/gpu/instances", "kind": "timeout", "delaySeconds": 5, "count": None})
    bounded = LifecycleConfig(startup_reconcile_timeout_seconds=0.5, scheduler_tick_seconds=0.05)
    automation = LifecycleAutomation(bounded, env.redis, env.novita, env.store, clock=env.clock)
    loop = asyncio.get_running_loop()
    began = loop.time()

    await automation.start()
    assert loop.time() - began < 0.1 and automation.running  # start-up never waits on Novita or the fleet
    await asyncio.sleep(1.0)

    assert automation.startup_reconcile is not None and not automation.startup_reconcile.done()
    assert (await env.store.sync_status())["state"] == "listing"  # what /health shows
    assert await env.redis.exists("ngpu:lifecycle:next-run:cost-guards")  # past the bound, the periodic work runs
    assert "start-up reconciliation is taking longer than its bound" in caplog.text
    await automation.stop()
    env.fake.clear_faults()
