"""Budgets: limits set by admins (and the stack's defaults), creates and starts refused with a problem naming the
budget, the limit and the current figure; GPUs reserved atomically and released on stop, delete or a failed create;
reservations a killed process left are reconciled; the budget guard's signed webhooks at 80 % and 100 % (once each)
and its auto-stop, dry run and real."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from decimal import Decimal
from unittest.mock import patch

from app.billing.budgets import (
    STALE_RESERVATION_SECONDS,
    BudgetExceeded,
    BudgetLimits,
    BudgetService,
    DefaultBudget,
    release_hook,
)
from app.billing.costs import CostService
from app.fleet import meter
from app.fleet.schemas import InstanceRecord, InstanceState
from app.fleet.store import InstanceStore
from app.lifecycle.budget_guard import BudgetGuard, BudgetGuardPolicy
from app.lifecycle.webhooks import DeliveryPolicy, UrlGuard, WebhookNotifier, WebhookOutbox
from tests.app.conftest import ApiServer, StartServer
from tests.app.instances_client import create_body, create_running, run_action, wait_for_job
from tests.app.lifecycle_helpers import LifecycleEnv, RecordingSink, WebhookReceiver, create_on_novita, make_record

STOP_PATH = "/gpu/instance/stop"
SIGNING_KEY = b"budget-signing-key-0123456789abcd"


# -- over HTTP: the API refuses what would break a budget --------------------------------------------------------------


def test_admins_set_and_read_budgets_and_bad_limits_are_named(api_server: ApiServer) -> None:
    with api_server.client() as client:
        put = client.put("/api/budgets/ml", json={"maxGpus": 4, "maxSpendPerDay": "25.50"})
        assert put.status_code == 200, put.text
        assert put.json() | {} == {
            "team": "ml",
            "maxGpus": 4,
            "maxSpendPerDay": "25.50",
            "maxSpendPerMonth": None,
            "defaults": [],
            "gpusInUse": 0,
            "spendToday": "0.00",
            "spendThisMonth": "0.00",
        }
        assert client.get("/api/budgets/ml").json()["maxGpus"] == 4
        assert [item["team"] for item in client.get("/api/budgets").json()] == ["ml"]
        bad = client.put("/api/budgets/ml", json={"maxSpendPerDay": "lots"})
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "body.maxSpendPerDay"
        negative = client.put("/api/budgets/ml", json={"maxGpus": -1})
        assert negative.status_code == 422 and negative.json()["errors"][0]["field"] == "body.maxGpus"
        assert client.put("/api/budgets/bad team!", json={}).status_code == 422
        assert client.get("/api/budgets/ml", headers={"X-API-Key": "wrong-key-0123456789"}).status_code == 401


def test_a_create_or_start_beyond_the_gpu_cap_is_refused_and_a_stop_gives_gpus_back(api_server: ApiServer) -> None:
    with api_server.client() as client:
        # Instances created without a principal have no team (`-`) until keys carry teams.
        assert client.put("/api/budgets/-", json={"maxGpus": 2}).status_code == 200
        first = create_running(client, name="first", gpuNum=2)
        refused = client.post("/api/instances", json=create_body(name="second"))
        assert refused.status_code == 409
        assert refused.headers["content-type"].startswith("application/problem+json")
        problem = refused.json()
        assert problem["type"] == "/problems/budget_exceeded"
        assert (problem["budget"], problem["limit"], problem["current"]) == ("maxGpus", "2", "2")
        assert "maxGpus" in problem["detail"] and "limit 2" in problem["detail"]

        run_action(client, first["id"], "stop")  # exited: the GPUs go back in the same write
        assert client.get("/api/budgets/-").json()["gpusInUse"] == 0
        second = create_running(client, name="second")
        assert client.get("/api/budgets/-").json()["gpusInUse"] == 1
        start = client.post(f"/api/instances/{first['id']}/start")
        assert start.status_code == 409 and start.json()["current"] == "1"  # 1 held + 2 asked > 2
        run_action(client, second["id"], "delete")
        assert client.get("/api/budgets/-").json()["gpusInUse"] == 0
        assert client.post(f"/api/instances/{first['id']}/start").status_code == 202


def test_reassigning_an_instance_carries_its_gpus_to_the_new_team(api_server: ApiServer) -> None:
    with api_server.client(key=api_server.new_key("alpha", "operate")) as alpha:
        running = create_running(alpha, name="moving", gpuNum=2)
    with api_server.client() as admin:
        assert admin.get("/api/budgets/alpha").json()["gpusInUse"] == 2
        assert admin.put("/api/budgets/bravo", json={"maxGpus": 2}).status_code == 200
        moved = admin.put(f"/api/instances/{running['id']}/owner", json={"team": "bravo"})
        assert moved.status_code == 200, moved.text
        assert admin.get("/api/budgets/alpha").json()["gpusInUse"] == 0
        assert admin.get("/api/budgets/bravo").json()["gpusInUse"] == 2
    with api_server.client(key=api_server.new_key("bravo", "operate")) as bravo:
        refused = bravo.post("/api/instances", json=create_body(name="one-more"))
    assert refused.status_code == 409 and refused.json()["current"] == "2"  # the moved GPUs count for bravo now


def test_the_stacks_default_applies_to_teams_without_limits(api_server_factory: StartServer) -> None:
    server = api_server_factory(budget_default_max_gpus=0, budget_default_max_spend_per_month=Decimal("100"))
    with server.client() as client:
        refused = client.post("/api/instances", json=create_body())
        assert refused.status_code == 409 and refused.json()["limit"] == "0"
        view = client.get("/api/budgets/-").json()
        assert view["defaults"] == ["maxGpus", "maxSpendPerMonth"] and view["maxSpendPerMonth"] == "100"
        assert client.put("/api/budgets/-", json={"maxGpus": 1}).json()["defaults"] == ["maxSpendPerMonth"]
        accepted = client.post("/api/instances", json=create_body())
        assert accepted.status_code == 202
        wait_for_job(client, accepted.json()["jobId"])


def test_a_create_that_fails_for_good_releases_its_gpus(api_server: ApiServer) -> None:
    with api_server.client() as client:
        client.put("/api/budgets/-", json={"maxGpus": 1})
        accepted = client.post("/api/instances", json=create_body(productName="No Such GPU"))
        assert accepted.status_code == 202
        assert wait_for_job(client, accepted.json()["jobId"])["state"] == "failed"
        assert client.get("/api/budgets/-").json()["gpusInUse"] == 0


# -- below HTTP, on a manual clock -------------------------------------------------------------------------------------


class Budgeted:
    """A store, costs and budgets on the manual clock, with the release hook as the app wires it."""

    def __init__(self, env: LifecycleEnv) -> None:
        self.env = env
        self.store = InstanceStore(env.redis_manager, clock=env.clock)
        self.store.on_transition(release_hook)
        self.costs = CostService(env.redis_manager, self.store, clock=env.clock)
        self.budgets = BudgetService(env.redis_manager, self.store, self.costs, DefaultBudget())

    async def running(self, team: str, *, raw_price: int = 100000, name: str = "trainer") -> InstanceRecord:
        """A running 1-GPU instance of `team` on the fake Novita, its GPU reserved, billed at raw_price/100000 $/h."""
        record = make_record(name=name, created_at=self.env.clock())
        record.team = team
        record.price_per_hour = str(meter.hourly_gpu_price(raw_price, 1))
        record.storage_price_per_hour = "0"
        await self.budgets.reserve(team, record.id, 1)
        assert await self.store.create(record, {})
        novita_id = await create_on_novita(self.env, record.upstream_name)
        self.env.fake.set_state(novita_id, status="running", frozen=True)

        def run(current: InstanceRecord) -> None:
            current.novita_instance_id = novita_id
            current.apply_novita("running", None)

        return await self.store.update(record.id, run)


async def test_spend_limits_refuse_once_reached(lifecycle_env: LifecycleEnv) -> None:
    kit = Budgeted(lifecycle_env)
    await kit.budgets.set_limits("ml", BudgetLimits(max_spend_per_day="2.00"))
    await kit.running("ml")  # 1.00 USD an hour
    lifecycle_env.clock.advance(7199)
    await kit.budgets.check_spend("ml")  # 1.9997: still under
    lifecycle_env.clock.advance(1)
    try:
        await kit.budgets.reserve("ml", "next-record", 1)
        raise AssertionError("a reservation past the day's limit was granted")
    except BudgetExceeded as refused:
        assert refused.extra == {
            "team": "ml",
            "budget": "maxSpendPerDay",
            "limit": "2.00",
            "current": "2.00",
            "requested": "more spend",
        }
    assert await kit.budgets.gpus_in_use("ml") == 1  # the refused one reserved nothing
    await kit.budgets.check_spend("another-team")  # budgets are per team


async def test_concurrent_reservations_never_pass_the_cap(lifecycle_env: LifecycleEnv) -> None:
    kit = Budgeted(lifecycle_env)
    await kit.budgets.set_limits("ml", BudgetLimits(max_gpus=5))

    async def attempt(i: int) -> bool:
        try:
            await kit.budgets.reserve("ml", f"record-{i}", 1 + i % 2)
            return True
        except BudgetExceeded:
            return False

    results = await asyncio.gather(*(attempt(i) for i in range(30)))
    assert sum(1 + i % 2 for i, ok in enumerate(results) if ok) <= 5
    assert await kit.budgets.gpus_in_use("ml") == sum(1 + i % 2 for i, ok in enumerate(results) if ok)
    assert await kit.budgets.gpus_in_use("ml") >= 4  # it filled up: only a 2-GPU ask can be left out at 4
    await kit.budgets.reserve("ml", "record-0", 1)  # a replay of a granted reservation is granted again


async def test_reservations_left_by_a_killed_process_are_reconciled(lifecycle_env: LifecycleEnv) -> None:
    kit = Budgeted(lifecycle_env)
    await kit.budgets.reserve("ml", "never-written", 2)  # the process died before writing its record
    kept = await kit.running("ml")
    assert await kit.budgets.gpus_in_use("ml") == 3
    assert await kit.budgets.release_stale() == []  # too young: its create may still be writing
    released = await kit.budgets.release_stale(time.time() + STALE_RESERVATION_SECONDS + 1)
    assert released == ["never-written"]
    assert await kit.budgets.gpus_in_use("ml") == 1 and kept.state == InstanceState.RUNNING


async def test_spend_alerts_are_signed_and_sent_once_at_80_and_100_percent(
    lifecycle_env: LifecycleEnv, webhook_receiver: WebhookReceiver
) -> None:
    kit = Budgeted(lifecycle_env)
    guard_url = UrlGuard(block_private=False)
    outbox = WebhookOutbox(
        lifecycle_env.redis,
        signing_key=SIGNING_KEY,
        guard=guard_url,
        policy=DeliveryPolicy(),
        clock=lifecycle_env.clock,
    )
    receiver = webhook_receiver
    events = WebhookNotifier(lifecycle_env.redis, outbox, guard_url, global_url=receiver.url, clock=lifecycle_env.clock)
    guard = BudgetGuard(
        kit.budgets,
        kit.store,
        lifecycle_env.novita,
        lifecycle_env.redis,
        events,
        BudgetGuardPolicy(),
        lifecycle_env.clock,
    )
    await kit.budgets.set_limits("ml", BudgetLimits(max_spend_per_month="10.00"))
    await kit.running("ml", raw_price=1000000)  # 10.00 USD an hour

    crossed = []
    for seconds in (2879, 1, 60, 600, 59, 1, 600):  # 79.97 %, 80 %, ..., 100 %, beyond
        lifecycle_env.clock.advance(seconds)
        crossed.append([alert for outcome in await guard.run_once() for alert in outcome.alerts])
    assert crossed == [[], [("maxSpendPerMonth", 80)], [], [], [], [("maxSpendPerMonth", 100)], []]
    await outbox.deliver_due()
    bodies = [json.loads(item.body) for item in receiver.received]
    assert [(b["type"], b["data"]["threshold"], b["data"]["limit"]) for b in bodies] == [
        ("budget.threshold_crossed", 80, "10.00"),
        ("budget.threshold_crossed", 100, "10.00"),
    ]
    assert bodies[0]["data"]["current"] == "8.000000" and bodies[1]["data"]["team"] == "ml"
    for item in receiver.received:
        headers = item.headers
        signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + item.body
        digest = base64.b64encode(hmac.new(SIGNING_KEY, signed, hashlib.sha256).digest()).decode()
        assert headers["webhook-signature"] == f"v1,{digest}"  # Standard Webhooks, as every event of the service
    await outbox.aclose()


async def _over_budget(kit: Budgeted, policy: BudgetGuardPolicy) -> tuple[BudgetGuard, RecordingSink, InstanceRecord]:
    sink = RecordingSink()
    env = kit.env
    guard = BudgetGuard(kit.budgets, kit.store, env.novita, env.redis, sink, policy, env.clock)
    await kit.budgets.set_limits("ml", BudgetLimits(max_spend_per_day="1.00"))
    ours = await kit.running("ml")
    await kit.running("other", name="theirs")
    env.clock.advance(3600)  # 1.00 USD: the limit
    return guard, sink, ours


async def test_auto_stop_in_dry_run_only_says_what_it_would_stop(lifecycle_env: LifecycleEnv) -> None:
    kit = Budgeted(lifecycle_env)
    guard, sink, ours = await _over_budget(kit, BudgetGuardPolicy(auto_stop=True, dry_run=True))
    [outcome] = await guard.run_once()
    assert outcome.stopped == [ours.id] and not outcome.performed
    assert lifecycle_env.fake.call_count("POST", STOP_PATH) == 0
    assert (await kit.store.get(ours.id)).state == InstanceState.RUNNING  # type: ignore[union-attr]
    assert "instance.auto_stopped" not in sink.types()


async def test_auto_stop_stops_the_teams_instances_at_100_percent(lifecycle_env: LifecycleEnv) -> None:
    kit = Budgeted(lifecycle_env)
    guard, sink, ours = await _over_budget(kit, BudgetGuardPolicy(auto_stop=True))
    [outcome] = await guard.run_once()
    assert outcome.stopped == [ours.id] and outcome.performed
    assert lifecycle_env.fake.call_count("POST", STOP_PATH) == 1  # only the team's instance, not "other"'s
    stopped = await kit.store.get(ours.id)
    assert stopped is not None and stopped.state == InstanceState.STOPPING
    assert sink.types().count("instance.auto_stopped") == 1
    assert [e.data["guard"] for e in sink.events if e.type == "instance.auto_stopped"] == ["budget"]
    await guard.run_once()  # stopping already: not stopped twice
    assert lifecycle_env.fake.call_count("POST", STOP_PATH) == 1


async def test_off_by_default(lifecycle_env: LifecycleEnv) -> None:
    kit = Budgeted(lifecycle_env)
    guard, sink, _ = await _over_budget(kit, BudgetGuardPolicy())
    await guard.run_once()
    assert lifecycle_env.fake.call_count("POST", STOP_PATH) == 0
    assert sink.types() == ["budget.threshold_crossed", "budget.threshold_crossed"]  # 80 % and 100 %, no stop


async def test_the_guard_checkpoints_only_intervals_open_for_over_an_hour(lifecycle_env: LifecycleEnv) -> None:
    kit = Budgeted(lifecycle_env)
    closed: list[meter.Segment] = []
    kit.store.on_segment(closed.append)  # what the app's spend counter listens to
    guard = BudgetGuard(
        kit.budgets,
        kit.store,
        lifecycle_env.novita,
        lifecycle_env.redis,
        RecordingSink(),
        BudgetGuardPolicy(),
        lifecycle_env.clock,
    )
    record = await kit.running("ml")  # 1.00 USD an hour
    others = [await kit.running("ops", name=f"other-{n}") for n in range(2)]
    await lifecycle_env.redis.sadd(meter.OPEN_KEY, "0000expired0000")  # its record expired with the meter open
    lifecycle_env.clock.advance(3599)
    await guard.checkpoint_meters()
    assert closed == []
    lifecycle_env.clock.advance(1)
    with patch("app.lifecycle.budget_guard.METER_READ_BATCH", 2):  # the open ids span batches
        await guard.checkpoint_meters()
    assert sorted((s.instance_id, s.seconds, s.cost()) for s in closed) == sorted(
        (each.id, 3600.0, Decimal(1)) for each in [record, *others]
    )
    assert not await lifecycle_env.redis.sismember(meter.OPEN_KEY, "0000expired0000")
    lifecycle_env.clock.advance(1800)
    assert await kit.costs.spend("ml", 0) == Decimal("1.5")  # the closed hour and the half hour open since
