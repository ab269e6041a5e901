"""Reconciliation: Novita is the truth. A create whose answer was lost is adopted (not duplicated), records lost with
Valkey are rebuilt, vanished instances are marked, changed statuses are refreshed, once across replicas."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from app.fleet.schemas import InstanceRecord, InstanceState
from app.lifecycle.activity import ActivityStore
from app.lifecycle.reconcile import Reconciler, parse_upstream_name
from app.novita.errors import NovitaCreateOutcomeUnknown, NovitaError
from app.novita.models import CreateInstanceRequest
from tests.app.lifecycle_helpers import LifecycleEnv, RecordingSink, create_on_novita, make_record, managed_instance

CREATE = "/gpu/instance/create"
ADOPT_AFTER = 600.0


def reconciler(env: LifecycleEnv, sink: RecordingSink, redis: Redis | None = None) -> Reconciler:
    redis = redis or env.redis
    return Reconciler(
        env.novita,
        env.store,
        redis,
        ActivityStore(redis),
        sink,
        lease_seconds=30,
        adopt_pending_after_seconds=ADOPT_AFTER,
        clock=env.clock,
    )


def test_upstream_names_are_recognised_only_in_our_format() -> None:
    assert parse_upstream_name("trainer-0123456789abcdef") == ("trainer", "0123456789abcdef")
    assert parse_upstream_name("my-llm-box-0123456789abcdef") == ("my-llm-box", "0123456789abcdef")
    assert parse_upstream_name("trainer") is None
    assert parse_upstream_name("trainer-0123456789ABCDEF") is None  # our ids are lowercase hex
    assert parse_upstream_name("-0123456789abcdef") is None


async def test_a_create_whose_answer_was_lost_is_adopted_not_duplicated(lifecycle_env: LifecycleEnv) -> None:
    env, sink = lifecycle_env, RecordingSink()
    record = make_record(created_at=env.clock())
    assert await env.store.create(record, {"name": record.name})
    # Novita creates the instance but the answer is lost, and the client's lookup by name fails too.
    env.fake.add_faults(
        {"path": CREATE, "kind": "lost_response", "status": 500},
        {"path": "/gpu/instances", "kind": "server_error", "count": 2},
    )
    with pytest.raises(NovitaCreateOutcomeUnknown):
        await env.novita.create_instance(
            CreateInstanceRequest(
                name=record.upstream_name,
                product_id="4090-us-ca-6",
                gpu_num=1,
                rootfs_size=20,
                image_url="docker.io/library/ubuntu:22.04",
            )
        )
    [created] = env.fake.instances(record.upstream_name)
    env.clock.advance(ADOPT_AFTER - 1)
    early = await reconciler(env, sink).run()  # the create job may still find it itself: leave it alone
    assert early is not None and early.adopted == [] and early.rebuilt == []
    env.clock.advance(1)

    report = await reconciler(env, sink).run()

    assert report is not None and report.adopted == [record.id]
    stored = await env.store.get(record.id)
    assert stored is not None and stored.novita_instance_id == created["id"]
    assert stored.state != InstanceState.PENDING and stored.events[-1].action == "adopted"
    assert env.fake.call_count("POST", CREATE) == 1
    assert len(env.fake.instances(record.upstream_name)) == 1
    assert sink.types() == ["instance.adopted"]
    again = await reconciler(env, sink).run()
    assert again is not None and again.adopted == [] and len(env.fake.instances(record.upstream_name)) == 1


async def test_records_lost_with_valkey_are_rebuilt_from_novita(lifecycle_env: LifecycleEnv) -> None:
    env, sink = lifecycle_env, RecordingSink()
    running = await managed_instance(env, status="running", name="trainer")
    stopped = await managed_instance(env, status="exited", name="notebook", billing_mode="spot")
    external_id = await create_on_novita(env, "made-by-someone-else")
    env.redis_server.flushall()  # Valkey lost everything

    report = await reconciler(env, sink).run()

    assert report is not None and sorted(report.rebuilt) == sorted([running.id, stopped.id])
    for original, state in ((running, InstanceState.RUNNING), (stopped, InstanceState.STOPPED)):
        rebuilt = await env.store.get(original.id)
        assert rebuilt is not None
        assert (rebuilt.name, rebuilt.upstream_name, rebuilt.novita_instance_id) == (
            original.name,
            original.upstream_name,
            original.novita_instance_id,
        )
        assert rebuilt.state == state and rebuilt.billing_mode == original.billing_mode
        assert rebuilt.events[-1].action == "rebuilt"
        assert await env.store.get_spec(original.id) is None
    assert all(r.novita_instance_id != external_id for r in await env.store.list_all())
    assert len(await env.store.list_all()) == 2
    second = await reconciler(env, sink).run()
    assert second is not None and second.rebuilt == []


async def test_vanished_instances_are_marked_deleted(lifecycle_env: LifecycleEnv) -> None:
    env, sink = lifecycle_env, RecordingSink()
    gone = await managed_instance(env, status="running")
    kept = await managed_instance(env, status="running", name="kept")
    assert gone.novita_instance_id is not None
    env.fake.vanish(gone.novita_instance_id)

    report = await reconciler(env, sink).run()

    assert report is not None and report.vanished == [gone.id]
    stored = await env.store.get(gone.id)
    assert stored is not None and stored.state == InstanceState.DELETED and stored.events[-1].action == "vanished"
    other = await env.store.get(kept.id)
    assert other is not None and other.state == InstanceState.RUNNING
    assert sink.types() == ["instance.vanished"]


async def test_changed_statuses_are_refreshed_with_one_event_each(lifecycle_env: LifecycleEnv) -> None:
    env, sink = lifecycle_env, RecordingSink()
    record = await managed_instance(env, status="running")
    assert record.novita_instance_id is not None
    env.fake.set_state(record.novita_instance_id, status="exited")
    env.clock.advance(42)

    first = await reconciler(env, sink).run()
    second = await reconciler(env, sink).run()

    assert first is not None and first.refreshed == [record.id]
    assert second is not None and second.refreshed == []
    stored = await env.store.get(record.id)
    assert stored is not None and stored.state == InstanceState.STOPPED
    assert sink.types() == ["instance.state_changed"]
    assert sink.events[0].data == {"from": "running", "to": "stopped", "novitaStatus": "exited", "statusError": None}
    activity = await env.activity.get(record.id)
    assert activity.status == "exited" and activity.status_since == env.clock()


async def test_a_failed_novita_list_changes_nothing(lifecycle_env: LifecycleEnv) -> None:
    env, sink = lifecycle_env, RecordingSink()
    record = await managed_instance(env, status="running")
    env.fake.add_faults({"path": "/gpu/instances", "kind": "server_error", "count": None})

    with pytest.raises(NovitaError):
        await reconciler(env, sink).run()

    stored = await env.store.get(record.id)
    assert stored is not None and stored.state == InstanceState.RUNNING
    env.fake.clear_faults()
    assert await reconciler(env, sink).run() is not None  # the lease was given back


async def test_reconciliation_runs_once_across_replicas(lifecycle_env: LifecycleEnv) -> None:
    env = lifecycle_env
    records = [await managed_instance(env, status="running", name=f"box{index}") for index in range(3)]
    env.redis_server.flushall()
    replica_redis = [Redis.from_url(env.redis_server.url, decode_responses=True) for _ in range(2)]
    sinks = [RecordingSink(), RecordingSink()]

    passes = [reconciler(env, sink, redis).run() for sink, redis in zip(sinks, replica_redis, strict=True)]
    reports = await asyncio.gather(*passes)

    assert sorted(report is None for report in reports) == [False, True]
    assert len(sinks[0].events) + len(sinks[1].events) == len(records)
    assert sorted(r.id for r in await env.store.list_all()) == sorted(r.id for r in records)
    for redis in replica_redis:
        await redis.aclose()


async def test_a_new_novita_error_is_taken_but_our_own_failure_reason_is_kept(lifecycle_env: LifecycleEnv) -> None:
    env, sink = lifecycle_env, RecordingSink()
    ours = await managed_instance(env, status="pulling", name="timedout")
    await env.store.update(ours.id, lambda r: r.apply_novita("pulling", "create did not finish within 1800 s"))
    theirs = await managed_instance(env, status="pulling", name="badimage")
    assert theirs.novita_instance_id is not None
    env.fake.set_state(theirs.novita_instance_id, status_error={"state": "pulling", "message": "image not found"})

    report = await reconciler(env, sink).run()

    assert report is not None and report.refreshed == [theirs.id]
    kept = await env.store.get(ours.id)
    assert kept is not None and kept.status_error == "create did not finish within 1800 s"
    failed = await env.store.get(theirs.id)
    assert failed is not None and failed.state == InstanceState.FAILED and failed.status_error == "image not found"


async def test_a_pages_news_wakes_its_jobs_and_marks_it_synced_before_the_next_page_is_read(
    lifecycle_env: LifecycleEnv,
) -> None:
    env, sink = lifecycle_env, RecordingSink()
    records = [await managed_instance(env, status="pulling", name=f"box-{n}") for n in range(3)]
    for position, record in enumerate(records):
        assert record.novita_instance_id is not None
        env.fake.set_state(record.novita_instance_id, status="running", frozen=True)

        def watched_by(current: InstanceRecord, job: str = f"job-{position}") -> None:
            current.last_job_id = job

        await env.store.update(record.id, watched_by)
    env.fake.configure(pageCap=1, pageBase=0)  # one instance per page, in creation order
    woken: list[tuple[list[str], int, float | None]] = []

    async def wake(job_ids: list[str]) -> None:
        if job_ids:
            listings = env.fake.call_count("GET", "/gpu/instances")
            woken.append((job_ids, listings, await env.store.synced_at(records[int(job_ids[0][-1])].id)))

    listed_at = env.clock()
    pass_ = Reconciler(
        env.novita, env.store, env.redis, ActivityStore(env.redis), sink, wake_jobs=wake, clock=env.clock
    )
    assert await pass_.run() is not None

    # Each job was woken right after its own page (the listing had read pages 0..n), its instance already synced.
    assert woken == [(["job-0"], 1, listed_at), (["job-1"], 2, listed_at), (["job-2"], 3, listed_at)]
