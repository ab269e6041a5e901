"""The costs and budgets pages in headless Chromium: spend by team and by day after an instance ran (the same figures
as `GET /api/costs`, as a chart and a table), the date range and its errors, price and cost so far on the instance
pages, a budget set through the form and shown with its use, and a create refused by that budget shown on the create
form with the API's message. axe-core runs on every new screen."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from playwright.sync_api import expect

from app.billing.costs import day_start
from app.core.config import Settings
from app.core.redis import RedisManager
from app.fleet import meter
from app.fleet.schemas import InstanceRecord, InstanceState
from app.ui.forms import parse_cost_range
from app.ui.views import money
from tests.app.conftest import ApiServer
from tests.fakes.fixtures import FakeNovitaHandle
from tests.ui.conftest import Dashboard

PRODUCT = "4090-us-ca-6"  # RTX 4090 in us-ca-6, on sale in the fake: $0.67 per GPU-hour
IMAGE = "docker.io/library/ubuntu:22.04"
# Closed intervals of two teams on earlier days (days ago, team, USD): history the page shows next to today's run.
HISTORY = [(1, "research", "4.20"), (2, "research", "6.10"), (2, "vision", "2.75"), (4, "vision", "9.00")]


def _in_thread(coroutine: Any) -> None:
    """Run a coroutine in its own thread: the sync Playwright driver already runs an event loop in this one."""
    with ThreadPoolExecutor(max_workers=1) as thread:
        thread.submit(asyncio.run, coroutine).result(timeout=20)


async def _write_segments(settings: Settings, segments: list[meter.Segment]) -> None:
    """Closed intervals written by the meter's own writer, as if deleted instances had run then."""
    redis = RedisManager(settings)
    try:
        for segment in segments:
            record = InstanceRecord(
                id=segment.instance_id,
                name=segment.instance_id,
                upstream_name=segment.instance_id,
                team=segment.team,
                state=InstanceState.DELETED,
                gpu_num=1,
                rootfs_size=60,
                billing_mode="onDemand",
                created_at=segment.start,
                updated_at=segment.end,
            )
            async with redis.client.pipeline(transaction=True) as pipe:
                meter.queue_meter_writes(pipe, record, segment)
                await pipe.execute()
    finally:
        await redis.close()


def _segment(instance_id: str, team: str | None, start: float, cost: str) -> meter.Segment:
    """A one-hour compute interval from `start` costing `cost` USD."""
    return meter.Segment(instance_id, team, meter.BillingState.COMPUTE, start, start + 3600, Decimal(cost))


def _seed_history(server: ApiServer) -> None:
    today = day_start(time.time())
    _in_thread(
        _write_segments(
            server.settings,
            [
                _segment(f"old-{n}", team, today - days * 86400 + 9 * 3600, cost)
                for n, (days, team, cost) in enumerate(HISTORY)
            ],
        )
    )


def _wait(condition: Any, what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return found


def _run_then_stop(server: ApiServer, fake_novita: FakeNovitaHandle, name: str) -> str:
    """Create an instance through the API, let Novita run it for a moment, stop it; returns its id."""
    fake_novita.set_step_seconds(None)  # moved by hand, as the other dashboard tests do
    with server.client() as api:
        created = api.post("/api/instances", json={"name": name, "productId": PRODUCT, "imageUrl": IMAGE})
        assert created.status_code == 202, created.text
        instance_id: str = created.json()["instance"]["id"]
        _wait(lambda: fake_novita.instances(), "the create to reach Novita")
        _wait(lambda: api.get(f"/api/instances/{instance_id}").json()["state"] == "provisioning", "provisioning")
        fake_novita.advance(steps=3)  # toCreate -> creating -> pulling -> running: billed from pulling on
        _wait(lambda: api.get(f"/api/instances/{instance_id}").json()["state"] == "running", "running")
        time.sleep(1.0)
        fake_novita.set_step_seconds(0.2)
        assert api.post(f"/api/instances/{instance_id}/stop").status_code == 202
        _wait(lambda: api.get(f"/api/instances/{instance_id}").json()["state"] == "stopped", "stopped")

        # The view reads Novita's live status, so it can say `stopped` a moment before the status sync writes the
        # record and closes its meter: wait until the cost stops growing (storage is free on a 60 GB disk).
        def cost_settled() -> bool:
            before = api.get(f"/api/instances/{instance_id}").json()["costSoFar"]
            time.sleep(0.3)
            return bool(api.get(f"/api/instances/{instance_id}").json()["costSoFar"] == before)

        _wait(cost_settled, "the meter to close")
    return instance_id


def _cells(dashboard: Dashboard, table: str) -> list[list[str]]:
    rows = dashboard.page.locator(f"{table} tbody tr")
    return [[cell.strip() for cell in rows.nth(i).locator("th, td").all_inner_texts()] for i in range(rows.count())]


def test_costs_by_team_and_by_day_after_an_instance_ran(dashboard: Dashboard, fake_novita: FakeNovitaHandle) -> None:
    server, page = dashboard.server, dashboard.page
    _seed_history(server)
    instance_id = _run_then_stop(server, fake_novita, "trainer")  # stopped on a 60 GB disk: storage is free
    with server.client() as api:
        view = api.get(f"/api/instances/{instance_id}").json()
    assert Decimal(view["costSoFar"]) > 0 and view["pricePerHour"] == "0.67"

    dashboard.sign_in()
    dashboard.goto(f"/ui/instances/{instance_id}")
    expect(page.locator("#instance-price")).to_have_text("$0.67")
    expect(page.locator("#instance-cost")).to_have_text(money(view["costSoFar"]) or "")
    dashboard.goto("/ui/instances")
    row = page.locator("tr[data-instance-name=trainer]")
    expect(row.locator("td.cost")).to_have_text(money(view["costSoFar"]) or "")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Costs").click()
    expect(page.get_by_role("heading", name="Costs", level=1)).to_be_visible()
    today = datetime.now(UTC).date()
    first = today - timedelta(days=13)
    with server.client() as api:
        period = {"from": first.isoformat(), "to": (today + timedelta(days=1)).isoformat()}
        by_team = api.get("/api/costs", params={"groupBy": "team", **period}).json()
        by_day = api.get("/api/costs", params={"groupBy": "day", **period}).json()
    # The page's figures are the API's: each team, each day (every day of the period, zero or not), the total.
    assert [team for team, *_ in _cells(dashboard, "#cost-teams")] == [
        item["key"] or "no team (-)" for item in by_team["items"]
    ]
    assert {team for team, *_ in _cells(dashboard, "#cost-teams")} == {"research", "vision", "no team (-)"}
    assert [cells[:2] for cells in _cells(dashboard, "#cost-teams")] == [
        [item["key"] or "no team (-)", money(item["cost"])] for item in by_team["items"]
    ]
    spent = {item["key"]: item["cost"] for item in by_day["items"]}
    days = [(first + timedelta(days=n)).isoformat() for n in range(14)]
    assert _cells(dashboard, "#cost-days") == [[day, money(spent.get(day, "0"))] for day in days]
    assert spent[today.isoformat()] == view["costSoFar"]  # today: the one instance that ran
    assert spent[(today - timedelta(days=2)).isoformat()] == "8.850000"  # research 6.10 + vision 2.75
    expect(page.locator("#cost-total")).to_have_text(money(by_team["total"]) or "")
    # The chart: one column per day, named in the SVG for assistive technology, the tallest for the largest day.
    chart = page.locator("svg#chart-days")
    expect(chart).to_have_attribute("role", "img")
    expect(chart.locator("title").first).to_have_text("Spend by day")
    bars = chart.locator("rect.bar")
    expect(bars).to_have_count(14)
    heights = [float(bars.nth(i).get_attribute("height") or "nan") for i in range(14)]
    assert heights.index(max(heights)) == days.index((today - timedelta(days=4)).isoformat())  # vision's $9.00
    assert heights[days.index((today - timedelta(days=3)).isoformat())] == 0.0
    expect(bars.nth(13).locator("title")).to_have_text(f"{today.isoformat()[5:]}: {money(view['costSoFar'])}")
    expect(page.locator("svg#chart-teams rect.bar")).to_have_count(3)
    dashboard.assert_accessible("costs")
    dashboard.screenshot("costs")

    # A narrower period: only its days, and the API's total for it.
    page.get_by_label("From (UTC day)").fill((today - timedelta(days=4)).isoformat())
    page.get_by_label("To (UTC day, included)").fill((today - timedelta(days=2)).isoformat())
    page.get_by_role("button", name="Show").click()
    expect(page.locator("#cost-days tbody tr")).to_have_count(3)
    expect(page.locator("#cost-total")).to_have_text("$17.85")  # 9.00 + 6.10 + 2.75
    assert [team for team, *_ in _cells(dashboard, "#cost-teams")] == ["vision", "research"]

    # To before From: a 422, the error beside the To field, no figures.
    page.get_by_label("From (UTC day)").fill(today.isoformat())
    page.get_by_label("To (UTC day, included)").fill((today - timedelta(days=1)).isoformat())
    with page.expect_response(lambda r: "/ui/costs" in r.url) as answer:
        page.get_by_role("button", name="Show").click()
    assert answer.value.status == 422
    to_field = page.locator(".field", has=page.locator("#to"))
    expect(to_field.locator(".field-error")).to_have_text("To must be on or after From")
    expect(page.locator("#to")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#from")).not_to_have_attribute("aria-invalid", "true")
    expect(page.locator("#cost-total")).to_have_count(0)
    dashboard.assert_accessible("costs with an error")
    assert dashboard.goto("/ui/costs?from=2026-13-01").status == 422
    expect(page.locator("#error-from")).to_contain_text("is not a day like 2026-12-01")


def _budget_cells(dashboard: Dashboard, team: str) -> dict[str, list[str]]:
    """The budgets table's rows of one team, by limit name: [limit, in use, use]."""
    rows = dashboard.page.locator(f"#budgets tbody tr[data-team='{team}']")
    found = {}
    for i in range(rows.count()):
        cells = [cell.strip() for cell in rows.nth(i).locator("td").all_inner_texts()]
        found[cells[0]] = cells[1:]
    return found


def test_set_a_budget_see_its_use_and_a_create_refused_by_it(
    dashboard: Dashboard, fake_novita: FakeNovitaHandle
) -> None:
    server, page = dashboard.server, dashboard.page
    # Spend of another team today, so that a spend limit shows its use: 8.50 USD in the last hour (or since
    # midnight UTC, when that is nearer).
    now = time.time()
    start = max(day_start(now), now - 3600)
    if now - start < 60:  # just after midnight UTC: wait so the interval has a length
        time.sleep(60 - (now - start))
        now = time.time()
    end = now - 1
    rate = Decimal("8.50") * 3600 / Decimal(repr(end - start))
    _in_thread(
        _write_segments(
            server.settings, [meter.Segment("old-r", "research", meter.BillingState.COMPUTE, start, end, rate)]
        )
    )
    with server.client() as api:
        assert api.put("/api/budgets/research", json={"maxSpendPerDay": "10.00"}).status_code == 200

    dashboard.sign_in()
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Budgets").click()
    expect(page.get_by_role("heading", name="Budgets", level=1)).to_be_visible()
    research = _budget_cells(dashboard, "research")
    assert research["Spend today"][:2] == ["$10.00", "$8.50"]
    assert research["Spend today"][2] == "85 %"  # past the 80 % mark
    expect(page.locator("tr[data-team='research'][data-limit='Spend today'] svg.use")).to_have_class("use warn")

    # Set the budget of instances without a team: a wrong value first, then a good one.
    page.get_by_label("Team", exact=True).fill("-")
    page.get_by_label("Max GPUs at once").fill("one")
    page.get_by_label("Max spend per UTC day (USD)").fill("5.123456789")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Save budget").click()
    assert answer.value.status == 422
    with server.client() as api:
        problem = api.put("/api/budgets/-", json={"maxGpus": "one", "maxSpendPerDay": "5.123456789"}).json()
    api_messages = {error["field"]: error["message"] for error in problem["errors"]}
    expect(page.locator("#error-maxGpus")).to_have_text(api_messages["body.maxGpus"])
    expect(page.locator("#error-maxSpendPerDay")).to_have_text(api_messages["body.maxSpendPerDay"])
    expect(page.locator("#maxSpendPerMonth")).not_to_have_attribute("aria-invalid", "true")
    dashboard.assert_accessible("budgets with errors")
    with server.client() as api:
        assert api.get("/api/budgets/-").json()["maxGpus"] is None  # nothing was saved

    forged = page.request.post("/ui/budgets", form={"team": "-", "maxGpus": "0"}, max_redirects=0)
    assert forged.status == 403  # no CSRF token

    page.get_by_label("Max GPUs at once").fill("1")
    page.get_by_label("Max spend per UTC day (USD)").fill("")
    page.get_by_label("Max spend per UTC month (USD)").fill("100")
    page.get_by_role("button", name="Save budget").click()
    expect(page.get_by_role("status").first).to_have_text("Budget saved for -.")
    with server.client() as api:
        saved = api.get("/api/budgets/-").json()
    assert (saved["maxGpus"], saved["maxSpendPerDay"], saved["maxSpendPerMonth"]) == (1, None, "100")
    no_team = _budget_cells(dashboard, "-")
    assert no_team["GPUs at once"] == ["1", "0", "0 %"]
    assert no_team["Spend today"][0] == "no limit"
    assert no_team["Spend this month"][0] == "$100.00"

    # One instance takes the one GPU; the page shows it used up.
    fake_novita.set_step_seconds(0.2)
    with server.client() as api:
        first = api.post("/api/instances", json={"name": "first", "productId": PRODUCT, "imageUrl": IMAGE})
        assert first.status_code == 202
    dashboard.goto("/ui/budgets")
    assert _budget_cells(dashboard, "-")["GPUs at once"] == ["1", "1", "100 %"]
    expect(page.locator("tr[data-team='-'][data-limit='GPUs at once'] svg.use")).to_have_class("use bad")
    dashboard.assert_accessible("budgets")
    dashboard.screenshot("budgets")

    # A second create through the dashboard: refused by the budget, said on the create form with the API's words.
    dashboard.goto("/ui/instances/new")
    page.get_by_label("Name", exact=True).fill("second")
    page.locator(f"#product-{PRODUCT}").check()
    page.get_by_label("Image").fill(IMAGE)
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Create").click()
    assert answer.value.status == 409
    with server.client() as api:
        refused = api.post("/api/instances", json={"name": "second", "productId": PRODUCT, "imageUrl": IMAGE})
    assert refused.status_code == 409 and refused.json()["type"] == "/problems/budget_exceeded"
    expect(page.locator("#form-error")).to_have_text(
        f"The instance was not created: {refused.json()['detail']} (budgets)"
    )
    expect(page.locator("#form-error")).to_contain_text("limit 1, current 1")
    expect(page.locator("#name")).to_have_value("second")  # the form keeps what was typed
    dashboard.assert_accessible("create refused by a budget")
    with server.client() as api:
        assert [item["name"] for item in api.get("/api/instances").json()["items"]] == ["first"]


def test_the_period_defaults_to_the_last_14_days() -> None:
    start, end, shown = parse_cost_range("", "", date(2026, 12, 2))
    assert shown.values == {"from": "2026-11-19", "to": "2026-12-02"} and not shown.errors
    assert (start, end) == (
        datetime(2026, 11, 19, tzinfo=UTC).timestamp(),
        datetime(2026, 12, 3, tzinfo=UTC).timestamp(),
    )
    _, _, too_long = parse_cost_range("2025-01-01", "2026-12-02", date(2026, 12, 2))
    assert too_long.errors == {"from": "the period is at most 366 days"}
