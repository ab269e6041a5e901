"""The dashboard in headless Chromium: sign in, create and watch an instance become ready, copy its SSH command, stop
and delete it, a 422 beside its field, CSRF refusals, sign out. axe-core runs on every screen."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from playwright.sync_api import Browser, expect

from app.core.config import Settings
from app.core.redis import RedisManager
from app.jobs.queue import JobQueue
from app.ui import views
from tests.app.conftest import StartServer
from tests.fakes.fixtures import FakeNovitaHandle
from tests.ui.conftest import Dashboard

PRODUCT = "4090-us-ca-6"  # RTX 4090 in us-ca-6, on sale in the fake
SECRET_ENV_VALUE = "do-not-show-me-7731"


def _state(dashboard: Dashboard) -> str:
    return dashboard.page.locator("#instance-state").inner_text()


def _wait_for_state(dashboard: Dashboard, *states: str, timeout: float = 20.0) -> str:
    """Wait until the live panel shows one of `states` (the page polls; nothing here reloads it)."""
    deadline = time.monotonic() + timeout
    seen = _state(dashboard)
    while seen not in states:
        assert time.monotonic() < deadline, f"the page never showed {states}; it shows {seen!r}"
        dashboard.page.wait_for_timeout(100)
        seen = _state(dashboard)
    return seen


def _fill_create_form(dashboard: Dashboard, name: str) -> None:
    page = dashboard.page
    page.get_by_label("Name", exact=True).fill(name)
    page.locator(f"#product-{PRODUCT}").check()
    page.get_by_label("Image").fill("docker.io/library/ubuntu:22.04")
    page.get_by_label("Ports").fill("8888/http")
    page.get_by_label("Environment variables").fill(f"HF_TOKEN={SECRET_ENV_VALUE}")


def test_sign_in_create_watch_it_get_ready_copy_ssh_stop_delete_sign_out(
    dashboard: Dashboard, fake_novita: FakeNovitaHandle
) -> None:
    page = dashboard.page
    dashboard.goto("/ui/instances")
    assert page.url.endswith("/ui/login")  # no session: sign in first
    dashboard.assert_accessible("sign-in")
    dashboard.screenshot("sign-in")

    dashboard.sign_in(key="not-the-key-" + "x" * 20)
    expect(page.get_by_role("alert")).to_contain_text("not valid")
    dashboard.sign_in()
    expect(page.get_by_role("heading", name="Instances")).to_be_visible()
    assert dashboard.server.api_key not in page.content() and dashboard.server.api_key not in page.url
    cookie = next(c for c in dashboard.context.cookies() if c["name"] == "ngpu_ui_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]  # plain HTTP here
    assert dashboard.server.api_key not in cookie["value"]

    fake_novita.set_step_seconds(None)  # hold Novita still, to see each state on the page
    dashboard.goto("/ui/instances/new")
    dashboard.assert_accessible("create")
    _fill_create_form(dashboard, "trainer")
    page.get_by_role("button", name="Create").click()
    expect(page.get_by_role("heading", name="Instance trainer")).to_be_visible()
    expect(page.get_by_role("status").first).to_contain_text("Create requested")
    page.evaluate("window.notReloaded = true")  # gone if anything below reloads the page
    first = _wait_for_state(dashboard, "pending", "provisioning")

    upstream_deadline = time.monotonic() + 20
    while not fake_novita.instances():
        assert time.monotonic() < upstream_deadline, "the create job never reached Novita"
        time.sleep(0.05)
    _wait_for_state(dashboard, "provisioning")
    dashboard.screenshot("instance-provisioning")
    fake_novita.advance(steps=3)  # toCreate -> creating -> pulling -> running
    _wait_for_state(dashboard, "running")
    expect(page.locator("#instance-ready")).not_to_contain_text("not ready", timeout=20_000)
    assert page.evaluate("window.notReloaded === true"), "the page was reloaded instead of updated"
    assert first in ("pending", "provisioning")
    assert SECRET_ENV_VALUE not in page.content()
    dashboard.assert_accessible("instance")
    dashboard.screenshot("instance-ready")

    upstream = fake_novita.instances()[0]
    page.get_by_role("button", name="Copy SSH command").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == upstream["connectComponentSSH"]["sshCommand"]
    assert upstream["connectComponentSSH"]["password"] not in page.content()

    fake_novita.set_step_seconds(0.2)
    page.get_by_role("button", name="Stop", exact=True).click()
    expect(page.get_by_role("status").first).to_contain_text("Stop requested")
    _wait_for_state(dashboard, "stopped")

    page.get_by_role("link", name="Delete…").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Delete instance trainer?")
    dashboard.assert_accessible("delete confirmation")
    page.get_by_role("button", name="Delete trainer").click()
    expect(page.get_by_role("status").first).to_contain_text("Delete requested")
    _wait_for_state(dashboard, "deleted")
    assert fake_novita.instances()[0]["status"] in ("removing", "removed")

    dashboard.goto("/ui/instances")
    dashboard.assert_accessible("instances")
    stale_cookie = next(c for c in dashboard.context.cookies() if c["name"] == "ngpu_ui_session")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("status").first).to_contain_text("signed out")
    dashboard.goto("/ui/instances")
    assert page.url.endswith("/ui/login")
    # The session is gone from Valkey, not only from the browser: the old cookie opens nothing.
    with httpx.Client(base_url=dashboard.base_url, cookies={"ngpu_ui_session": stale_cookie["value"]}) as client:
        assert client.get("/ui/instances").status_code == 303


def test_a_422_is_shown_beside_the_field_the_api_names(dashboard: Dashboard) -> None:
    page = dashboard.page
    dashboard.sign_in()
    dashboard.goto("/ui/instances/new")
    _fill_create_form(dashboard, "bad name!")
    page.get_by_label("Ports").fill("2222/tcp")

    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Create").click()

    assert answer.value.status == 422
    name_field = page.locator(".field", has=page.locator("#name"))
    expect(name_field.locator(".field-error")).to_contain_text("should match pattern")
    expect(page.locator("#name")).to_have_attribute("aria-invalid", "true")
    expect(page.locator(".field", has=page.locator("#ports")).locator(".field-error")).to_contain_text(
        "reserved by Novita"
    )
    expect(page.locator("#imageUrl")).not_to_have_attribute("aria-invalid", "true")
    # Env values are never shown back, their keys are.
    assert page.locator("#envs").input_value() == "HF_TOKEN="
    assert SECRET_ENV_VALUE not in page.content()
    # The same message the API's 422 gives for that field.
    with dashboard.server.client() as api:
        problem = api.post(
            "/api/instances",
            json={"name": "bad name!", "productId": PRODUCT, "imageUrl": "docker.io/library/ubuntu:22.04"},
        ).json()
    api_message = next(e["message"] for e in problem["errors"] if e["field"] == "body.name")
    expect(name_field.locator(".field-error")).to_have_text(api_message)
    dashboard.assert_accessible("create with errors")
    dashboard.screenshot("create-422")
    with dashboard.server.client() as api:
        assert api.get("/api/instances").json()["total"] == 0  # nothing was created


def test_a_form_without_the_session_csrf_token_is_refused(dashboard: Dashboard) -> None:
    page = dashboard.page
    dashboard.sign_in()
    with dashboard.server.client() as api:
        created = api.post(
            "/api/instances",
            json={"name": "target", "productId": PRODUCT, "imageUrl": "docker.io/library/ubuntu:22.04"},
        ).json()
    instance_id = created["instance"]["id"]
    dashboard.goto(f"/ui/instances/{instance_id}")
    token = page.locator("input[name=csrf_token]").first.input_value()

    # The browser's own cookies go along (as with a forged cross-site form that SameSite did not stop).
    forms: list[dict[str, str | float | bool]] = [{}, {"csrf_token": "forged-" + token[7:]}, {"csrf_token": ""}]
    for form in forms:
        refused = page.request.post(f"/ui/instances/{instance_id}/delete", form=form, max_redirects=0)
        assert refused.status == 403, (form, refused.status)
        assert "security token" in refused.text()
    refused = page.request.post("/ui/logout", form={}, max_redirects=0)
    assert refused.status == 403
    with dashboard.server.client() as api:
        assert api.get(f"/api/instances/{instance_id}").json()["state"] != "deleting"

    accepted = page.request.post(f"/ui/instances/{instance_id}/delete", form={"csrf_token": token}, max_redirects=0)
    assert accepted.status == 303
    with dashboard.server.client() as api:
        assert api.get(f"/api/instances/{instance_id}").json()["state"] in ("deleting", "deleted")


def test_instances_filter_sort_and_page(
    dashboard: Dashboard, fake_novita: FakeNovitaHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Thirty instances on the Novita account (made outside this service): the list shows them with our records.
    with httpx.Client(
        base_url=fake_novita.base_url, headers={"Authorization": f"Bearer {fake_novita.api_key}"}
    ) as novita:
        for number in range(30):
            name = f"{'beta' if number % 3 == 0 else 'alpha'}-{number:02d}"
            novita.post(
                "/gpu/instance/create",
                json={
                    "name": name,
                    "productId": PRODUCT,
                    "gpuNum": 1,
                    "rootfsSize": 20,
                    "imageUrl": "docker.io/library/ubuntu:22.04",
                    "kind": "gpu",
                },
            ).raise_for_status()
    fake_novita.advance(steps=3)  # all running
    stopped = fake_novita.instances(name="alpha-01")[0]
    fake_novita.set_state(stopped["id"], status="exited")
    page = dashboard.page
    dashboard.sign_in()

    dashboard.goto("/ui/instances?sort=name&pageSize=10")
    rows = page.locator("table.list tbody tr")
    expect(rows).to_have_count(10)
    expect(page.locator("table.list caption")).to_have_text("Instances 1–10 of 30")
    names = [rows.nth(i).get_attribute("data-instance-name") or "" for i in range(10)]
    assert names == sorted(names) and names[0] == "alpha-01"
    expect(rows.first).to_contain_text("$0.67")  # price per hour of one RTX 4090 on demand
    dashboard.screenshot("instances")
    page.get_by_role("link", name="Next").click()
    expect(page.locator("table.list caption")).to_have_text("Instances 11–20 of 30")

    page.get_by_label("Name contains").fill("beta")
    page.get_by_label("Status").select_option("running")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("table.list caption")).to_have_text("Instances 1–10 of 10")
    page.get_by_label("Name contains").fill("alpha")
    page.get_by_label("Status").select_option("stopped")
    page.get_by_role("button", name="Apply").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("alpha-01")
    expect(rows.first.locator(".badge")).to_have_text("stopped")

    # Name order comes sorted from the index in Valkey, within a filter too.
    dashboard.goto("/ui/instances?sort=name&name=beta&pageSize=10")
    expect(page.locator("table.list caption")).to_contain_text("Instances 1–10 of 10")
    assert [rows.nth(i).get_attribute("data-instance-name") for i in range(10)] == [
        f"beta-{n:02d}" for n in range(0, 30, 3)
    ]
    # Price order sorts the newest SORT_WINDOW matching instances and says so.
    monkeypatch.setattr(views, "SORT_WINDOW", 12)
    dashboard.goto("/ui/instances?sort=price&pageSize=10&page=2")
    expect(page.locator("table.list caption")).to_contain_text("Instances 11–12 of 12")
    expect(page.locator("#sort-window")).to_contain_text("sorted by price among the newest 12 of 30")
    expect(rows).to_have_count(2)

    bad = dashboard.goto("/ui/instances?status=sleeping")
    assert bad.status == 422
    expect(page.get_by_role("alert")).to_contain_text("unknown status")


def test_jobs_page_shows_a_job_and_the_dead_letters(api_server_factory: StartServer, browser: Browser) -> None:
    server = api_server_factory(job_max_attempts=1)
    # A job no handler knows: with one attempt it lands among the dead letters at once. (Its own thread: the sync
    # Playwright driver already runs an event loop in this one.)
    with ThreadPoolExecutor(max_workers=1) as thread:
        thread.submit(asyncio.run, _enqueue(server.settings, "report.unknown")).result(timeout=20)
    deadline = time.monotonic() + 20
    with server.client() as api:
        while not api.get("/api/jobs/dead-letters").json()["items"]:
            assert time.monotonic() < deadline, "the job never reached the dead letters"
            time.sleep(0.05)
        dead = api.get("/api/jobs/dead-letters").json()["items"][0]
    context = browser.new_context(base_url=server.base_url)
    page = context.new_page()
    try:
        page.goto("/ui/login")
        page.get_by_label("API key").fill(server.api_key)
        page.get_by_role("button", name="Sign in").click()
        page.goto("/ui/jobs")
        table = page.locator("#dead-letters")
        expect(table).to_contain_text(dead["id"])
        expect(table).to_contain_text("no handler registered for job kind 'report.unknown'")
        page.get_by_label("Job id").fill(dead["id"])
        page.get_by_role("button", name="Show").click()
        expect(page.locator("#job-heading")).to_contain_text(dead["id"])
        expect(page.locator(".card")).to_contain_text("dead")
        Dashboard(server, context, page).assert_accessible("jobs")
        Dashboard(server, context, page).screenshot("jobs")
    finally:
        context.close()


async def _enqueue(settings: Settings, kind: str) -> None:
    redis = RedisManager(settings)
    try:
        await JobQueue(redis).enqueue(kind, {})
    finally:
        await redis.close()
