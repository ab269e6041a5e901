"""Cost guards: each fires at its time and not a second before, dry run acts not, and of two replicas only one acts."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from app.fleet.schemas import InstanceState
from app.lifecycle.activity import Activity, ActivityStore
from app.lifecycle.cost_guards import (
    CostGuardExecutor,
    CostGuardPolicy,
    Guard,
    decide,
    idle_stop,
    max_lifetime,
    provisioning_timeout,
)
from tests.app.lifecycle_helpers import LifecycleEnv, RecordingSink, make_record, managed_instance

T0 = 1_800_000_000.0
POLICY = CostGuardPolicy(
    provisioning_timeout_seconds=600, idle_timeout_seconds=1800, startup_grace_seconds=2700, action_lock_seconds=30
)
STOP_PATH = "/gpu/instance/stop"
DELETE_PATH = "/gpu/instance/delete"


# -- the pure decisions ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["toCreate", "creating", "pulling"])
def test_provisioning_timeout_fires_at_the_limit_not_before(status: str) -> None:
    record = make_record(novita_instance_id="n1", novita_status=status, created_at=T0)
    assert provisioning_timeout(record, Activity(), T0 + 599.9, POLICY) is None
    decision = provisioning_timeout(record, Activity(), T0 + 600, POLICY)
    assert decision is not None and decision.action == "delete" and decision.guard == Guard.PROVISIONING_TIMEOUT
    assert status in decision.reason


def test_provisioning_timeout_also_deletes_a_failed_pull_but_not_a_running_instance() -> None:
    failed = make_record(novita_instance_id="n1", novita_status="pulling", created_at=T0)
    failed.apply_novita("pulling", "failed to pull image")
    assert failed.state == InstanceState.FAILED
    assert decide(failed, Activity(), T0 + 600, POLICY) is not None
    running = make_record(novita_instance_id="n1", novita_status="running", created_at=T0)
    assert provisioning_timeout(running, Activity(), T0 + 10**6, POLICY) is None
    never_created = make_record(created_at=T0)
    assert decide(never_created, Activity(), T0 + 10**6, POLICY) is None


def test_idle_stop_without_heartbeat_waits_for_the_start_up_grace() -> None:
    record = make_record(novita_instance_id="n1", novita_status="running", created_at=T0)
    activity = Activity(status="running", status_since=T0 + 100)
    assert idle_stop(record, activity, T0 + 100 + 2699, POLICY) is None
    decision = idle_stop(record, activity, T0 + 100 + 2700, POLICY)
    assert decision is not None and decision.action == "stop" and "no heartbeat" in decision.reason


def test_idle_stop_counts_from_the_last_heartbeat() -> None:
    record = make_record(novita_instance_id="n1", novita_status="running", created_at=T0)
    activity = Activity(status="running", status_since=T0, last_used_at=T0 + 2600)
    assert idle_stop(record, activity, T0 + 2700, POLICY) is None  # grace over, but used 100 s ago
    assert idle_stop(record, activity, T0 + 2600 + 1799, POLICY) is None
    decision = idle_stop(record, activity, T0 + 2600 + 1800, POLICY)
    assert decision is not None and "last heartbeat 1800 s ago" in decision.reason


def test_idle_stop_leaves_alone_what_it_cannot_judge_or_must_not_touch() -> None:
    late = T0 + 10**6
    running = make_record(novita_instance_id="n1", novita_status="running", created_at=T0)
    assert idle_stop(running, Activity(), late, POLICY) is None  # since when it runs is unknown
    since = Activity(status="running", status_since=T0)
    monthly = make_record(novita_instance_id="n1", novita_status="running", created_at=T0, billing_mode="monthly")
    assert idle_stop(monthly, since, late, POLICY) is None
    starting = make_record(novita_instance_id="n1", novita_status="starting", created_at=T0)
    assert idle_stop(starting, Activity(status="starting", status_since=T0), late, POLICY) is None
    disabled = CostGuardPolicy(idle_stop_enabled=False)
    assert idle_stop(running, since, late, disabled) is None
    stopping = make_record(novita_instance_id="n1", novita_status="running", created_at=T0)
    stopping.state = InstanceState.STOPPING  # a stop was already requested
    assert decide(stopping, since, late, POLICY) is None


def test_max_lifetime_is_off_by_default_and_fires_at_its_limit() -> None:
    record = make_record(novita_instance_id="n1", novita_status="running", created_at=T0)
    activity = Activity(status="running", status_since=T0, last_used_at=T0 + 10**6)
    assert max_lifetime(record, activity, T0 + 10**6, POLICY) is None
    capped = CostGuardPolicy(max_lifetime_seconds=3600)
    assert max_lifetime(record, activity, T0 + 3599, capped) is None
    decision = decide(record, activity, T0 + 3600, capped)
    assert decision is not None and decision.guard == Guard.MAX_LIFETIME and decision.action == "stop"


# -- the executor against the fake Novita and a real Valkey ------------------------------------------------------------


def executor(
    env: LifecycleEnv, sink: RecordingSink, policy: CostGuardPolicy = POLICY, redis: Redis | None = None
) -> CostGuardExecutor:
    redis = redis or env.redis
    return CostGuardExecutor(env.store, env.novita, redis, ActivityStore(redis), sink, policy, clock=env.clock)


async def test_provisioning_timeout_deletes_the_stuck_instance_and_records_why(lifecycle_env: LifecycleEnv) -> None:
    env, sink = lifecycle_env, RecordingSink()
    record = await managed_instance(env, status="pulling")
    guards = executor(env, sink)

    env.clock.advance(599)
    assert await guards.run_once() == []
    assert env.fake.call_count("POST", DELETE_PATH) == 0

    env.clock.advance(1)
    [outcome] = await guards.run_once()

    assert outcome.performed and outcome.decision.guard == Guard.PROVISIONING_TIMEOUT
    assert env.fake.instances(record.upstream_name)[0]["status"] == "toRemove"
    stored = await env.store.get(record.id)
    assert stored is not None and stored.state == InstanceState.DELETING
    assert stored.events[-1].action == "auto_delete" and "provisioning_timeout" in stored.events[-1].detail
    assert sink.types() == ["instance.auto_deleted"]
    assert sink.events[0].data["guard"] == "provisioning_timeout"


async def test_idle_instance_is_stopped_at_its_time(lifecycle_env: LifecycleEnv) -> None:
    env, sink = lifecycle_env, RecordingSink()
    record = await managed_instance(env, status="running")
    await env.activity.observe_status(record.id, "running", env.clock())
    guards = executor(env, sink)

    env.clock.advance(2000)
    await env.activity.heartbeat(record.id, env.clock())  # used at +2000: idle until +3800
    env.clock.advance(1799)
    assert await guards.run_once() == []
    assert env.fake.instances(record.upstream_name)[0]["status"] == "running"

    env.clock.advance(1)
    [outcome] = await guards.run_once()

    assert outcome.performed and outcome.decision.guard == Guard.IDLE_STOP
    assert env.fake.instances(record.upstream_name)[0]["status"] == "toStop"
    stored = await env.store.get(record.id)
    assert stored is not None and stored.state == InstanceState.STOPPING
    assert stored.events[-1].action == "auto_stop"
    assert sink.types() == ["instance.auto_stopped"]
    assert await guards.run_once() == []  # a stop is under way: nothing more to do
    assert env.fake.call_count("POST", STOP_PATH) == 1


async def test_dry_run_decides_but_does_not_act(lifecycle_env: LifecycleEnv) -> None:
    env, sink = lifecycle_env, RecordingSink()
    record = await managed_instance(env, status="running")
    await env.activity.observe_status(record.id, "running", env.clock())
    guards = executor(env, sink, CostGuardPolicy(idle_timeout_seconds=60, startup_grace_seconds=60, dry_run=True))
    env.clock.advance(61)

    [outcome] = await guards.run_once()

    assert not outcome.performed and outcome.decision.action == "stop"
    assert env.fake.call_count("POST", STOP_PATH) == 0
    assert env.fake.instances(record.upstream_name)[0]["status"] == "running"
    stored = await env.store.get(record.id)
    assert stored is not None and stored.state == InstanceState.RUNNING
    assert [event.action for event in stored.events] == []
    assert sink.events == []


async def test_a_stale_record_is_checked_against_novita_before_acting(lifecycle_env: LifecycleEnv) -> None:
    env, sink = lifecycle_env, RecordingSink()
    record = await managed_instance(env, status="running")
    await env.activity.observe_status(record.id, "running", env.clock())
    assert record.novita_instance_id is not None
    env.fake.set_state(record.novita_instance_id, status="exited")  # stopped outside this service
    env.clock.advance(10**5)

    assert await executor(env, sink).run_once() == []

    assert env.fake.call_count("POST", STOP_PATH) == 0
    stored = await env.store.get(record.id)
    assert stored is not None and stored.state == InstanceState.STOPPED and stored.novita_status == "exited"


async def test_two_replicas_never_both_stop_the_same_instance(lifecycle_env: LifecycleEnv) -> None:
    env = lifecycle_env
    records = [await managed_instance(env, status="running", name=f"idle{index}") for index in range(5)]
    for record in records:
        await env.activity.observe_status(record.id, "running", env.clock())
    replica_redis = [Redis.from_url(env.redis_server.url, decode_responses=True) for _ in range(2)]
    sinks = [RecordingSink(), RecordingSink()]
    replicas = [executor(env, sink, redis=redis) for sink, redis in zip(sinks, replica_redis, strict=True)]
    env.clock.advance(POLICY.startup_grace_seconds)

    results = await asyncio.gather(*(replica.run_once() for replica in replicas))
    results += await asyncio.gather(*(replica.run_once() for replica in replicas))

    assert env.fake.call_count("POST", STOP_PATH) == len(records)
    acted = sorted(outcome.record_id for outcomes in results for outcome in outcomes)
    assert acted == sorted(record.id for record in records)
    assert len(sinks[0].events) + len(sinks[1].events) == len(records)
    for record in records:
        stored = await env.store.get(record.id)
        assert stored is not None and [e.action for e in stored.events].count("auto_stop") == 1
    for redis in replica_redis:
        await redis.aclose()
