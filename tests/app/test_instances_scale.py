"""Fleet scale (issue 15), on the real redis-server and the fake Novita: the list index answers pages, filters and
counts exactly like a brute-force scan of the records, cursor pages stay complete and stable while instances are
created and deleted, a Valkey that loses everything mid-sync loses nothing for good, and the readiness answer never
comes before the index is complete."""

from __future__ import annotations

import asyncio
import functools
import random
import time

from app.fleet.index import Cursor
from app.fleet.schemas import InstanceRecord, InstanceState
from app.fleet.views import upstream_name
from app.lifecycle.activity import ActivityStore
from app.lifecycle.reconcile import Reconciler
from tests.app.conftest import StartServer
from tests.app.instances_client import (
    create_instance,
    create_running,
    run_action,
    wait_for_job,
    wait_for_list,
)
from tests.app.lifecycle_helpers import LifecycleEnv, RecordingSink, make_record
from tests.fakes.fixtures import FakeNovitaHandle
from tests.fixtures_redis import RedisServer

NAMES = ("trainer", "Notebook", "gpu-box", "TRAINER-big", "infer")
NOVITA_STATUSES = (None, "pulling", "running", "running", "exited", "removed", "toStop")
BASE_TIME = 1_700_000_000.0


def _brute_force(records: list[InstanceRecord], state: InstanceState | None, name: str | None) -> list[str]:
    """What a list must return, computed from every record: newest first, ties by id descending (Valkey's order)."""
    needle = name.casefold() if name else None
    matching = [
        r for r in records if (state is None or r.state == state) and (needle is None or needle in r.name.casefold())
    ]
    return [r.id for r in sorted(matching, key=lambda r: (r.created_at, r.id), reverse=True)]


async def _seed(env: LifecycleEnv, count: int, seed: int = 15) -> list[InstanceRecord]:
    """`count` records with mixed states and names; creation times collide often, to exercise the tie-breaks."""
    rng = random.Random(seed)
    records = []
    for position in range(count):
        status = rng.choice(NOVITA_STATUSES)
        record = make_record(
            name=f"{rng.choice(NAMES)}-{position}",
            novita_status=status,
            novita_instance_id=f"nv{position:05d}" if status else None,
            created_at=BASE_TIME + rng.randint(0, count // 4),
        )
        assert await env.store.create(record, {})
        records.append(record)
    return records


async def _walk(
    env: LifecycleEnv, *, state: InstanceState | None, name: str | None, page_size: int, between_pages: object = None
) -> tuple[list[str], int]:
    """Every id of a cursor walk (and the first page's total); `between_pages` is awaited after each page."""
    seen: list[str] = []
    cursor: Cursor | None = None
    total = -1
    while True:
        page = await env.store.page(state=state, name=name, offset=0, count=page_size, cursor=cursor)
        total = page.total if total < 0 else total
        seen.extend(page.members)
        if len(page.members) < page_size:
            return seen, total
        cursor = Cursor(page.scores[-1], page.members[-1])
        if between_pages is not None:
            await between_pages()  # type: ignore[operator]


async def test_filters_pages_and_counts_agree_with_a_brute_force_scan(lifecycle_env: LifecycleEnv) -> None:
    env = lifecycle_env
    records = await _seed(env, 240)
    rng = random.Random(7)
    for record in rng.sample(records, 60):  # state changes move records between the state sets
        status = rng.choice(("running", "exited", "removed", "toStart"))
        await env.store.update(
            record.id, functools.partial(InstanceRecord.apply_novita, status=status, status_error=None)
        )
    current = await env.store.list_all()

    for state in (None, *InstanceState):
        for name in (None, "trainer", "GPU-", "-1", "nothing-matches"):
            expected = _brute_force(current, state, name)
            by_offset: list[str] = []
            for offset in range(0, len(expected) + 7, 7):
                page = await env.store.page(state=state, name=name, offset=offset, count=7)
                assert page.total == len(expected), (state, name)
                by_offset.extend(page.members)
            walked, total = await _walk(env, state=state, name=name, page_size=9)
            assert by_offset == expected and walked == expected and total == len(expected), (state, name)


async def test_a_page_shows_each_records_latest_write_though_pages_keep_records_parsed(
    lifecycle_env: LifecycleEnv,
) -> None:
    env = lifecycle_env
    record = make_record(novita_instance_id="nv1", novita_status="pulling", created_at=BASE_TIME)
    assert await env.store.create(record, {})
    first = await env.store.page(state=None, name=None, offset=0, count=10)
    again = await env.store.page(state=None, name=None, offset=0, count=10)
    assert first.records[0] is again.records[0]  # parsed once while unchanged

    def to_running(current: InstanceRecord) -> None:
        current.apply_novita("running", None)
        current.name = "renamed"

    await env.store.update(record.id, to_running)
    latest = (await env.store.page(state=None, name=None, offset=0, count=10)).records[0]
    assert (latest.state, latest.name) == (InstanceState.RUNNING, "renamed")
    assert (first.records[0].state, first.records[0].name) == (InstanceState.PROVISIONING, "trainer")


async def test_cursor_pages_stay_complete_and_stable_under_concurrent_creates_and_deletes(
    lifecycle_env: LifecycleEnv,
) -> None:
    env = lifecycle_env
    records = await _seed(env, 150)
    before = {r.id for r in records}
    running_before = {r.id for r in records if r.state == InstanceState.RUNNING}
    rng = random.Random(3)
    to_delete = rng.sample(sorted(before), 50)
    deleted: set[str] = set()

    async def churn() -> None:  # between two pages: two new instances, and one instance deleted
        for _ in range(2):
            fresh = make_record(
                name="late", novita_status="running", novita_instance_id=f"late{rng.random()}", created_at=time.time()
            )
            await env.store.create(fresh, {})
        if to_delete:
            victim = to_delete.pop()
            await env.store.update(victim, lambda r: r.apply_novita("removed", None))
            deleted.add(victim)

    everything, _ = await _walk(env, state=None, name=None, page_size=10, between_pages=churn)
    assert len(everything) == len(set(everything))  # no item twice
    assert set(everything) == before  # every instance that existed when the walk began, none created during it

    running, _ = await _walk(env, state=InstanceState.RUNNING, name=None, page_size=10, between_pages=churn)
    assert len(running) == len(set(running))
    assert running_before - deleted <= set(running)  # whatever stayed running all along is there
    assert not set(running) & (deleted - running_before)


async def test_nothing_is_lost_when_valkey_loses_everything_mid_sync(
    lifecycle_env: LifecycleEnv, redis_server: RedisServer
) -> None:
    env = lifecycle_env
    names = [upstream_name(f"box{i}", f"{i:016x}") for i in range(300)]
    env.fake.preload([{"name": name, "status": "running" if i % 3 else "exited"} for i, name in enumerate(names)])
    sync = Reconciler(env.novita, env.store, env.redis, ActivityStore(env.redis), RecordingSink(), lease_seconds=30)
    first = await sync.run()
    assert first is not None and len(first.rebuilt) == 300

    env.fake.add_faults({"path": "/gpu/instances", "kind": "slow", "delaySeconds": 1.0, "count": 1})
    interrupted = asyncio.create_task(sync.run())
    await asyncio.sleep(0.3)  # the sync is listing Novita now
    await asyncio.to_thread(redis_server.restart, save=False)  # Valkey comes back empty
    # The interrupted pass may finish against the empty Valkey or fail on the lost connection: either way, what
    # counts is that the records are all back after the next pass.
    await asyncio.gather(interrupted, return_exceptions=True)

    await sync.run()

    page = await env.store.page(state=None, name=None, offset=0, count=100)
    stopped = await env.store.page(state=InstanceState.STOPPED, name=None, offset=0, count=1)
    assert page.total == 300 and stopped.total == 100
    assert {r.upstream_name for r in await env.store.list_all()} == set(names)
    assert all(page.synced_at.get(member) for member in page.members)


def _old_format_record(position: int) -> InstanceRecord:
    record_id = f"{position:016x}"
    record = InstanceRecord(
        id=record_id,
        name=f"legacy{position}",
        upstream_name=upstream_name("legacy", record_id),
        gpu_num=1,
        rootfs_size=20,
        billing_mode="onDemand",
        created_at=BASE_TIME + position,
        updated_at=BASE_TIME + position,
    )
    record.apply_novita("running" if position % 2 else "exited", None)
    return record


def test_readyz_answers_200_only_once_older_records_are_indexed(
    api_server_factory: StartServer, redis_server: RedisServer
) -> None:
    records = [_old_format_record(position) for position in range(400)]
    with redis_server.client() as valkey:  # the fixture flushed it: now what a deployment from before the index left
        pipe = valkey.pipeline()
        for record in records:
            pipe.set(f"ngpu:instance:{record.id}", record.model_dump_json())
            pipe.zadd("ngpu:instances", {record.id: record.created_at})
        pipe.execute()

    server = api_server_factory(wait_ready=False)
    with server.client(timeout=5.0) as client:
        deadline = time.monotonic() + 15
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "never ready"
        everything = client.get("/api/instances", params={"pageSize": 1}).json()
        stopped = client.get("/api/instances", params={"pageSize": 1, "status": "stopped"}).json()
    assert everything["total"] == 400 and stopped["total"] == 200


def test_request_and_job_paths_never_scan_the_keyspace(
    api_server_factory: StartServer, redis_server: RedisServer
) -> None:
    server = api_server_factory()
    with server.client() as client:
        with redis_server.client() as valkey:
            valkey.config_resetstat()
        instance = create_running(client, name="noscan")
        client.get("/api/instances", params={"name": "nosc", "status": "running"})
        client.get(f"/api/instances/{instance['id']}")
        run_action(client, instance["id"], "stop")
        with redis_server.client() as valkey:
            stats = valkey.info("commandstats")
    assert "cmdstat_xadd" in stats  # the counters did see the work
    assert "cmdstat_scan" not in stats and "cmdstat_keys" not in stats


def test_a_create_costs_one_create_call_and_no_polling(
    api_server_factory: StartServer, fake_novita: FakeNovitaHandle
) -> None:
    server = api_server_factory()
    with server.client() as client:
        accepted = create_instance(client, name="cheap")
        assert wait_for_job(client, accepted["jobId"])["state"] == "succeeded"
        assert wait_for_job(client, accepted["jobId"] + "-readiness")["result"]["detail"] == "ready"
        calls = fake_novita.calls()
        page = wait_for_list(client, lambda page: page["items"][0]["syncedAt"] is not None)

    instance = accepted["instance"]
    assert calls.get("POST /gpu/instance/create") == 1
    assert calls.get("GET /gpu/instances?name", 0) == 0  # no lookup by name: no create answer was lost
    assert calls.get("GET /gpu/instance", 0) <= 1  # the readiness probe's read; the job itself never polls
    assert page["items"][0]["id"] == instance["id"] and page["novitaSynced"] is True
    assert page["nextCursor"] is None


def test_cursor_paging_over_http_and_a_bad_cursor_is_a_422(api_server_factory: StartServer) -> None:
    server = api_server_factory()
    with server.client() as client:
        ids = [
            client.post(
                "/api/instances", json={"name": f"pg{i}", "productName": "RTX 4090 24GB", "imageUrl": "ubuntu"}
            ).json()["instance"]["id"]
            for i in range(5)
        ]
        first = client.get("/api/instances", params={"pageSize": 2}).json()
        second = client.get("/api/instances", params={"pageSize": 2, "cursor": first["nextCursor"]}).json()
        third = client.get("/api/instances", params={"pageSize": 2, "cursor": second["nextCursor"]}).json()
        bad = client.get("/api/instances", params={"cursor": "not-a-cursor"})

    walked = [item["id"] for item in first["items"] + second["items"] + third["items"]]
    assert walked == list(reversed(ids)) and third["nextCursor"] is None
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "query.cursor"


def test_a_job_waiting_without_news_looks_less_often_as_it_waits_and_still_ends_at_its_deadline(
    api_server_factory: StartServer, fake_novita: FakeNovitaHandle
) -> None:
    """The sync wakes a watching job when it brings news; a status it does not wake for (a create stuck in
    `toCreate`) leaves the job to its fallback look, which must thin out (half the wait so far) instead of running
    every poll interval, and must not overshoot the provisioning deadline."""
    fake_novita.set_step_seconds(None)  # the instance stays `toCreate`: a status no job is woken for
    server = api_server_factory(instance_poll_interval_seconds=0.2, instance_provisioning_timeout_seconds=4.0)
    with server.client() as client:
        began = time.monotonic()
        accepted = create_instance(client, name="stuck")
        job = wait_for_job(client, accepted["jobId"], timeout=15)
        ended = time.monotonic() - began
        metrics = client.get("/metrics").text

    looks = _metric(metrics, 'jobs_processed_total{kind="instance.create",outcome="rescheduled"}')
    assert job["state"] == "failed" and "did not finish within 4 s" in job["lastError"]
    assert 4.0 <= ended < 5.5  # the last look is capped at the deadline, not half the wait past it
    # Every 0.2 s that would be about 20 looks; growing with the wait: 0.2, 0.2, 0.3, 0.45, ... about 9.
    assert 4 <= looks <= 12, looks


def _metric(text: str, sample: str) -> float:
    """The value of one Prometheus sample line (`name{labels} value`)."""
    return next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(sample + " "))
