"""Cost accounting: the meter bills each second in the right billing state, at the price fixed at create, exactly,
through create, running, stop, start and delete, across an app restart; reports split days at midnight UTC; the
create job fixes on-demand and spot prices from the catalogue; the API's costs and their 422s."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from pydantic import SecretStr

from app.billing.costs import CostService
from app.core.config import Settings
from app.core.redis import RedisManager
from app.fleet import meter
from app.fleet.schemas import InstanceRecord, InstanceState, InstanceView
from app.fleet.store import InstanceStore
from tests.app.conftest import ApiServer
from tests.app.instances_client import create_running, run_action
from tests.app.lifecycle_helpers import LifecycleEnv, make_record

PER_GPU_RAW = 67000  # the fake's on-demand RTX 4090 in us-ca-6 (1/100000 USD per GPU-hour)


def _priced(record: InstanceRecord, *, gpus: int, rootfs: int, raw_price: int = PER_GPU_RAW, team: str = "ml") -> None:
    record.team = team
    record.gpu_num = gpus
    record.rootfs_size = rootfs
    record.price_per_hour = str(meter.hourly_gpu_price(raw_price, gpus))
    record.storage_price_per_hour = str(meter.hourly_storage_price(rootfs))


def _status(status: str, error: str | None = None) -> object:
    def apply(record: InstanceRecord) -> None:
        if record.novita_instance_id is None:
            record.novita_instance_id = "novita-1"
        record.apply_novita(status, error)

    return apply


def _state(state: InstanceState) -> object:
    def apply(record: InstanceRecord) -> None:
        record.state = state

    return apply


def test_prices_convert_novitas_units_exactly() -> None:
    assert meter.hourly_gpu_price(67000, 1) == Decimal("0.67")
    assert meter.hourly_gpu_price(67000.0, 2) == Decimal("1.34")
    assert meter.hourly_gpu_price("34000", 1) == Decimal("0.34")  # Novita's spotPrice is a string
    assert meter.hourly_gpu_price(None, 1) is None
    assert meter.hourly_storage_price(60) == 0  # the free container disk
    assert meter.hourly_storage_price(100) * 24 == Decimal("0.2")  # 40 GB x 0.005 USD per GB-day


async def test_the_meter_is_exact_through_a_lifecycle_and_a_restart(lifecycle_env: LifecycleEnv) -> None:
    env, clock = lifecycle_env, lifecycle_env.clock
    store = InstanceStore(env.redis_manager, clock=clock)
    record = make_record(created_at=clock())
    _priced(record, gpus=2, rootfs=100)
    assert await store.create(record, {})

    async def at(seconds: float, change: object) -> InstanceRecord:
        clock.advance(seconds)
        return await current.update(record.id, change)  # type: ignore[arg-type]

    current = store
    await at(10, _status("creating"))  # not billed before pulling
    await at(30, _status("pulling"))  # compute from here
    await at(60, _status("running"))
    await at(3600, _state(InstanceState.STOPPING))  # our stop request: Novita still runs it
    await at(20, _status("toStop"))
    await at(40, _status("exited"))  # compute ends: 3720 s; storage from here

    # The app restarts while the instance is stopped: a new process, a new connection, nothing kept in memory.
    await env.redis_manager.close()
    manager = RedisManager(Settings(redis_url=SecretStr(env.redis_server.url), novita_api_key=SecretStr("unused")))
    current = InstanceStore(manager, clock=clock)
    try:
        clock.advance(86400)  # a day stopped, half of it while no process ran
        await at(0, _status("toStart"))  # still storage
        await at(30, _status("starting"))  # compute again
        await at(60, _status("running"))
        await at(1740, _state(InstanceState.DELETING))
        await at(20, _status("removing"))  # billing ends
        done = await at(5, _status("removed"))
        clock.advance(3600)  # time after the delete costs nothing

        compute, storage = 3720 + 60 + 1740 + 20, 86400 + 30  # toStart is still storage
        assert done.billed_seconds == {"compute": compute, "storage": storage}
        expected = Decimal("1.34") * compute / 3600 + Decimal("0.005") * 40 * (compute + storage) / 86400
        view = InstanceView.from_record(done, now=clock())
        assert view.cost_so_far == str(expected.quantize(Decimal("0.000001")))
        assert Decimal(view.cost_so_far).quantize(Decimal("0.01")) == Decimal("2.28")
        assert view.price_per_hour == "1.34"

        costs = CostService(manager, current, clock=clock)
        report = await costs.report("instance", 0, clock())
        assert report.items[0].key == record.id and report.items[0].team == "ml"
        assert report.items[0].billed_seconds == {"compute": compute, "storage": storage}
        assert Decimal(report.total) == Decimal(view.cost_so_far)
    finally:
        await manager.close()


async def test_an_open_interval_counts_until_now_without_any_write(lifecycle_env: LifecycleEnv) -> None:
    env, clock = lifecycle_env, lifecycle_env.clock
    store = InstanceStore(env.redis_manager, clock=clock)
    record = make_record(created_at=clock())
    _priced(record, gpus=1, rootfs=60)
    await store.create(record, {})
    await store.update(record.id, _status("running"))  # type: ignore[arg-type]
    clock.advance(7200)
    stored = await store.get(record.id)
    assert stored is not None
    view = InstanceView.from_record(stored, now=clock())
    assert view.billed_seconds == {"compute": 7200} and view.cost_so_far == "1.340000"
    costs = CostService(env.redis_manager, store, clock=clock)
    assert await costs.spend("ml", 0) == Decimal("1.34")
    assert await costs.spend("other-team", 0) == 0


async def test_day_buckets_split_an_interval_at_midnight_utc(lifecycle_env: LifecycleEnv) -> None:
    env = lifecycle_env
    env.clock.now = datetime(2026, 12, 1, 23, 30, tzinfo=UTC).timestamp()
    store = InstanceStore(env.redis_manager, clock=env.clock)
    record = make_record(created_at=env.clock())
    _priced(record, gpus=1, rootfs=60, raw_price=360000)  # 3.60 USD/h: 0.001 USD a second
    await store.create(record, {})
    await store.update(record.id, _status("running"))  # type: ignore[arg-type]
    env.clock.advance(3600)  # until 00:30 on the 2nd
    await store.update(record.id, _status("exited"))  # type: ignore[arg-type]
    env.clock.advance(600)
    costs = CostService(env.redis_manager, store, clock=env.clock)

    by_day = await costs.report("day", 0, env.clock())
    assert [(item.key, item.cost, item.billed_seconds) for item in by_day.items] == [
        ("2026-12-01", "1.800000", {"compute": 1800.0}),
        ("2026-12-02", "1.800000", {"compute": 1800.0, "storage": 600.0}),  # stopped: disk within the free 60 GB
    ]
    second_day = datetime(2026, 12, 2, tzinfo=UTC).timestamp()
    only_second = await costs.report("team", second_day, env.clock())
    assert [(item.key, item.cost) for item in only_second.items] == [("ml", "1.800000")]
    assert only_second.total == "1.800000"


def test_the_create_job_fixes_on_demand_and_spot_prices(api_server: ApiServer) -> None:
    with api_server.client() as client:
        on_demand = create_running(client, name="od", gpuNum=2)
        spot = create_running(client, name="sp", billingMode="spot")
        assert on_demand["pricePerHour"] == "1.34"  # 2 x 67000 / 100000
        assert spot["pricePerHour"] == "0.34"  # the fake's spot price for the same product
        assert on_demand["billedSeconds"].get("compute", 0) > 0  # running: billed since pulling
        run_action(client, spot["id"], "stop")
        stopped = client.get(f"/api/instances/{spot['id']}").json()
        assert stopped["billedSeconds"]["compute"] > 0 and Decimal(stopped["costSoFar"]) > 0

        report = client.get("/api/costs", params={"groupBy": "instance"}).json()
        assert {item["key"] for item in report["items"]} == {on_demand["id"], spot["id"]}
        metrics = client.get("/metrics").text
        assert 'novita_spend_usd_total{team="-"}' in metrics  # the stop closed a billed interval


def test_costs_name_the_bad_parameter(api_server: ApiServer) -> None:
    with api_server.client() as client:
        bad_from = client.get("/api/costs", params={"from": "yesterday"})
        assert bad_from.status_code == 422
        assert bad_from.headers["content-type"].startswith("application/problem+json")
        assert bad_from.json()["errors"][0]["field"] == "query.from"
        backwards = client.get("/api/costs", params={"from": "2026-12-02", "to": "2026-12-01T12:00:00Z"})
        assert backwards.status_code == 422 and backwards.json()["errors"][0]["field"] == "query.to"
        bad_group = client.get("/api/costs", params={"groupBy": "cluster"})
        assert bad_group.status_code == 422 and "groupBy" in bad_group.json()["errors"][0]["field"]
        fine = client.get(
            "/api/costs", params={"groupBy": "day", "from": "2026-12-01", "to": "2026-12-02T00:00:00+01:00"}
        )
        assert fine.status_code == 200 and fine.json()["total"] == "0.000000"
