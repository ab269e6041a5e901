"""Spot recovery: a reclaimed spot instance whose owner opted in (`autoMigrate`) is recovered at most once per
interval, the owner is told, failures are written on the record; stopped-on-purpose, not-opted-in and on-demand
instances are left alone; two replicas recover once.

The recovery action is injected; these tests pass the client's `migrate_instance`, as the app does, and count the
fake Novita's migrate calls.
"""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from app.lifecycle.activity import ActivityStore
from app.lifecycle.spot import SpotPolicy, SpotRecovery
from tests.app.lifecycle_helpers import LifecycleEnv, RecordingSink, managed_instance

POLICY = SpotPolicy(enabled=True, min_interval_seconds=4 * 3600, lock_seconds=30)
MIGRATE = "/gpu/instance/migrate"


def recovery(
    env: LifecycleEnv, sink: RecordingSink, policy: SpotPolicy = POLICY, redis: Redis | None = None
) -> SpotRecovery:
    redis = redis or env.redis
    return SpotRecovery(
        env.store,
        env.novita,
        redis,
        ActivityStore(redis),
        sink,
        policy,
        recover=env.novita.migrate_instance,
        clock=env.clock,
    )


async def test_a_reclaimed_spot_instance_is_recovered_at_most_once_per_interval(lifecycle_env: LifecycleEnv) -> None:
    env, sink = lifecycle_env, RecordingSink()
    record = await managed_instance(env, status="exited", billing_mode="spot", auto_migrate=True)
    assert record.novita_instance_id is not None
    spot = recovery(env, sink)

    [outcome] = await spot.run_once()
    assert outcome.error is None and env.fake.call_count("POST", MIGRATE) == 1
    stored = await env.store.get(record.id)
    assert stored is not None and stored.events[-1].action == "spot_recovery_started"
    assert sink.types() == ["instance.spot_recovery_started"]

    env.fake.set_state(record.novita_instance_id, status="exited")  # reclaimed again soon after
    env.clock.advance(4 * 3600 - 1)
    assert await spot.run_once() == []
    assert env.fake.call_count("POST", MIGRATE) == 1
    env.clock.advance(1)
    assert len(await spot.run_once()) == 1
    assert env.fake.call_count("POST", MIGRATE) == 2


async def test_a_failed_recovery_is_visible_on_the_record_and_sent(lifecycle_env: LifecycleEnv) -> None:
    env, sink = lifecycle_env, RecordingSink()
    record = await managed_instance(env, status="exited", billing_mode="spot", auto_migrate=True)
    env.fake.add_faults(
        {
            "path": MIGRATE,
            "kind": "error",
            "status": 400,
            "reason": "MIGRATE_INSUFFICIENT_RESOURCE",
            "message": "no spare hardware",
        }
    )

    [outcome] = await recovery(env, sink).run_once()

    assert outcome.error is not None and "no spare hardware" in outcome.error
    stored = await env.store.get(record.id)
    assert stored is not None and stored.events[-1].action == "spot_recovery_failed"
    assert "no spare hardware" in stored.events[-1].detail
    assert sink.types() == ["instance.spot_recovery_failed"]
    assert await recovery(env, sink).run_once() == []  # the interval applies to failures too


async def test_instances_stopped_on_purpose_or_not_spot_are_left_alone(lifecycle_env: LifecycleEnv) -> None:
    env, sink = lifecycle_env, RecordingSink()
    user_stopped = await managed_instance(env, status="exited", billing_mode="spot", name="paused", auto_migrate=True)
    await env.store.update(user_stopped.id, lambda record: record.add_event("stop_requested"))
    await managed_instance(env, status="exited", billing_mode="onDemand", name="ondemand")
    await managed_instance(env, status="running", billing_mode="spot", name="busy", auto_migrate=True)

    assert await recovery(env, sink).run_once() == []
    assert await recovery(env, sink, SpotPolicy(enabled=False)).run_once() == []
    assert env.fake.call_count("POST", MIGRATE) == 0


async def test_a_spot_instance_is_migrated_only_when_its_owner_opted_in(lifecycle_env: LifecycleEnv) -> None:
    """Migration loses the data on the instance's own disks: enabling recovery for the deployment is not enough."""
    env, sink = lifecycle_env, RecordingSink()
    await managed_instance(env, status="exited", billing_mode="spot", name="keep-my-disk")
    opted_in = await managed_instance(env, status="exited", billing_mode="spot", name="expendable", auto_migrate=True)

    outcomes = await recovery(env, sink).run_once()

    assert [outcome.record_id for outcome in outcomes] == [opted_in.id]
    assert env.fake.call_count("POST", MIGRATE) == 1


async def test_disabled_by_default(lifecycle_env: LifecycleEnv) -> None:
    env, sink = lifecycle_env, RecordingSink()
    await managed_instance(env, status="exited", billing_mode="spot", auto_migrate=True)
    assert await recovery(env, sink, SpotPolicy()).run_once() == []
    assert env.fake.call_count("POST", MIGRATE) == 0


async def test_two_replicas_recover_once(lifecycle_env: LifecycleEnv) -> None:
    env = lifecycle_env
    for index in range(3):
        await managed_instance(env, status="exited", billing_mode="spot", name=f"spot{index}", auto_migrate=True)
    replica_redis = [Redis.from_url(env.redis_server.url, decode_responses=True) for _ in range(2)]
    sinks = [RecordingSink(), RecordingSink()]

    passes = [recovery(env, sink, redis=redis).run_once() for sink, redis in zip(sinks, replica_redis, strict=True)]
    await asyncio.gather(*passes)

    assert env.fake.call_count("POST", MIGRATE) == 3
    assert len(sinks[0].events) + len(sinks[1].events) == 3
    for redis in replica_redis:
        await redis.aclose()
