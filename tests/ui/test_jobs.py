"""Jobs in the dashboard, in headless Chromium: cancel a waiting job, requeue a dead letter and watch it run, a 409
shown on the page, and one instance's list of all its jobs updating live. axe-core runs on each new screen."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from playwright.sync_api import Browser, expect

from app.core.config import Settings
from app.core.redis import RedisManager
from app.jobs.queue import JobContext, JobFailed, JobQueue
from tests.app.conftest import ApiServer, StartServer
from tests.app.instances_client import create_running, wait_for_job
from tests.ui.conftest import TIMEOUT_MS, Dashboard

KIND = "report.flaky"


class FlakyReport:
    """A job handler that fails while `failing` is set, else runs until `release` is set and succeeds."""

    def __init__(self) -> None:
        self.failing = True
        self.release = threading.Event()

    async def __call__(self, context: JobContext) -> dict[str, Any]:
        if self.failing:
            raise ValueError("the report store said no")
        while not self.release.is_set():
            await asyncio.sleep(0.02)
        return {"ok": True}


def _enqueue(settings: Settings, delay_seconds: float = 0.0, kind: str = KIND) -> str:
    """Queue a job of `kind` from a thread of its own (the sync Playwright driver runs an event loop in this one)."""

    async def enqueue() -> str:
        redis = RedisManager(settings)
        try:
            return (await JobQueue(redis).enqueue(kind, {}, delay_seconds=delay_seconds)).id
        finally:
            await redis.close()

    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(asyncio.run, enqueue()).result(timeout=20)


def _job(server: ApiServer, job_id: str) -> dict[str, Any]:
    with server.client() as api:
        answer: dict[str, Any] = api.get(f"/api/jobs/{job_id}").json()
    return answer


def _wait_for_job_state(server: ApiServer, job_id: str, state: str) -> None:
    deadline = time.monotonic() + 20
    while (seen := _job(server, job_id)["state"]) != state:
        assert time.monotonic() < deadline, f"job {job_id} never became {state}; it is {seen}"
        time.sleep(0.05)


def _signed_in(dashboard: Dashboard) -> Dashboard:
    dashboard.sign_in()
    expect(dashboard.page.get_by_role("heading", name="Instances")).to_be_visible()
    return dashboard


@contextmanager
def _board(server: ApiServer, browser: Browser) -> Iterator[Dashboard]:
    """A signed-in browser on `server` (a server with settings of the test's own)."""
    context = browser.new_context(base_url=server.base_url, viewport={"width": 1280, "height": 860})
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield _signed_in(Dashboard(server, context, context.new_page()))
    finally:
        context.close()


def test_cancel_a_waiting_job_and_requeue_a_dead_letter_that_then_runs(
    api_server_factory: StartServer, browser: Browser
) -> None:
    server = api_server_factory(job_max_attempts=1)
    report = FlakyReport()
    server.container.worker.register(KIND, report)
    dead_id = _enqueue(server.settings)
    waiting_id = _enqueue(server.settings, delay_seconds=600)
    _wait_for_job_state(server, dead_id, "dead")
    with _board(server, browser) as board:
        _cancel_then_requeue(server, board, report, dead_id, waiting_id)


def _cancel_then_requeue(
    server: ApiServer, board: Dashboard, report: FlakyReport, dead_id: str, waiting_id: str
) -> None:
    page = board.page

    board.goto(f"/ui/jobs?id={waiting_id}")
    expect(page.locator("#job-state")).to_have_text("scheduled")
    expect(page.get_by_role("button", name="Requeue job", exact=True)).to_have_count(0)
    board.assert_accessible("jobs, a waiting job")
    page.get_by_role("button", name="Cancel job").click()
    expect(page.get_by_role("status").first).to_contain_text("Job cancelled")
    expect(page.locator("#job-state")).to_have_text("cancelled")
    expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
    assert _job(server, waiting_id)["state"] == "cancelled"

    board.goto(f"/ui/jobs?id={dead_id}")
    dead_row = page.locator(f'tr[data-job-id="{dead_id}"]')
    expect(dead_row).to_contain_text("the report store said no")
    board.assert_accessible("jobs, a dead letter")
    board.screenshot("jobs")
    report.failing = False
    dead_row.get_by_role("button", name=f"Requeue job {dead_id}").click()
    expect(page.get_by_role("status").first).to_contain_text("Job requeued")
    expect(page.locator("#job-state")).to_have_text(re.compile(r"^(queued|running)$"))  # held until released
    page.evaluate("window.notReloaded = true")  # gone if anything below reloads the page
    report.release.set()
    # The page polls its panel: the job is seen to succeed and to leave the dead letters without a reload.
    expect(page.locator("#job-state")).to_have_text("succeeded")
    expect(page.locator(f'tr[data-job-id="{dead_id}"]')).to_have_count(0)
    assert page.evaluate("window.notReloaded === true"), "the page was reloaded instead of updated"
    assert _job(server, dead_id)["attempts"] == 1


def test_a_refused_cancel_is_shown_on_the_page_with_the_apis_reason(
    api_server_factory: StartServer, browser: Browser
) -> None:
    server = api_server_factory()
    server.container.worker.register(KIND, FlakyReport())
    waiting_id = _enqueue(server.settings, delay_seconds=600)
    with _board(server, browser) as board:
        _refused_cancel(server, board, waiting_id)


def _refused_cancel(server: ApiServer, board: Dashboard, waiting_id: str) -> None:
    page = board.page
    # Hold the page's clock, so that its live refresh cannot replace the stale Cancel button before the click.
    page.clock.install()
    board.goto(f"/ui/jobs?id={waiting_id}")
    page.clock.pause_at(datetime.now() + timedelta(seconds=1))
    with server.client() as api:
        assert api.post(f"/api/jobs/{waiting_id}/cancel").status_code == 200  # someone else was quicker

    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Cancel job").click()

    assert answer.value.status == 409
    expect(page.get_by_role("alert")).to_have_text(
        f"job '{waiting_id}' is cancelled: only a queued or scheduled job can be cancelled"
    )
    expect(page.locator("#job-state")).to_have_text("cancelled")  # the page shows the job as it is now
    page.clock.resume()  # axe waits on timers of its own
    board.assert_accessible("jobs, a refused cancel")
    bad = page.request.post("/ui/jobs/no-such-job/requeue", form={"csrf_token": _token(board)}, max_redirects=0)
    assert bad.status == 404 and "no job with id" in bad.text()
    forged = page.request.post(f"/ui/jobs/{waiting_id}/requeue", form={}, max_redirects=0)
    assert forged.status == 403 and "security token" in forged.text()


def _token(board: Dashboard) -> str:
    return board.page.locator("input[name=csrf_token]").first.input_value()


def test_an_instance_page_lists_all_its_jobs_and_a_new_one_appears_live(dashboard: Dashboard) -> None:
    server = dashboard.server
    with server.client() as api:
        running = create_running(api)
        instance_id, create_job = running["id"], running["lastJobId"]
        wait_for_job(api, f"{create_job}-readiness")
    _signed_in(dashboard)
    page = dashboard.page
    dashboard.goto(f"/ui/instances/{instance_id}")
    rows = page.locator("#instance-jobs tbody tr")
    expect(rows).to_have_count(2)
    assert [rows.nth(i).get_attribute("data-job-id") for i in range(2)] == [f"{create_job}-readiness", create_job]
    expect(rows.nth(1)).to_contain_text("instance.create")
    page.evaluate("window.notReloaded = true")

    with server.client() as api:
        stop = api.post(f"/api/instances/{instance_id}/stop").json()  # from elsewhere: the page is not reloaded
    expect(rows).to_have_count(3)
    expect(rows.first).to_have_attribute("data-job-id", stop["jobId"])
    expect(rows.first).to_contain_text("instance.stop")
    expect(rows.first.locator(".badge")).to_have_text("succeeded")
    assert page.evaluate("window.notReloaded === true"), "the page was reloaded instead of updated"
    dashboard.assert_accessible("instance with its jobs")
    dashboard.screenshot("instance-jobs")
    rows.first.get_by_role("link", name="instance.stop").click()
    expect(page.locator("#job-heading")).to_contain_text(stop["jobId"])


REFUSED_KIND = "report.refused"


async def _refuse(context: JobContext) -> None:
    raise JobFailed("the report asks for a month that has not happened")


def test_jobs_page_lists_running_and_failed_jobs_live_and_only_to_whom_sees_them(
    api_server_factory: StartServer, browser: Browser
) -> None:
    server = api_server_factory()
    report = FlakyReport()
    report.failing = False  # runs until released
    server.container.worker.register(KIND, report)
    server.container.worker.register(REFUSED_KIND, _refuse)
    running_id = _enqueue(server.settings)
    failed_id = _enqueue(server.settings, kind=REFUSED_KIND)
    _wait_for_job_state(server, running_id, "running")
    _wait_for_job_state(server, failed_id, "failed")
    with _board(server, browser) as board:
        page = board.page
        board.goto("/ui/jobs")
        running_row = page.locator(f'#running-jobs tr[data-job-id="{running_id}"]')
        expect(running_row).to_contain_text(KIND)
        failed_row = page.locator(f'#failed-jobs tr[data-job-id="{failed_id}"]')
        expect(failed_row).to_contain_text("the report asks for a month that has not happened")
        board.assert_accessible("jobs, running and failed")
        page.evaluate("window.notReloaded = true")
        report.release.set()  # the panel's polling sees it finish without a reload
        expect(page.locator("#running-jobs tbody tr")).to_have_text("None.")
        assert page.evaluate("window.notReloaded === true"), "the page was reloaded instead of updated"
        failed_row.get_by_role("link", name=failed_id).click()
        expect(page.locator("#job-state")).to_have_text("failed")

    # Jobs of no instance are for admins only: a team's key sees neither list's entries (as with dead letters).
    report.release.clear()
    held_id = _enqueue(server.settings)
    _wait_for_job_state(server, held_id, "running")
    reader = server.dashboard(server.new_key("alpha", "read"))
    try:
        panel = reader.get("/ui/jobs/panel").text
    finally:
        reader.close()
        report.release.set()
    assert 'id="running-jobs"' in panel and held_id not in panel and failed_id not in panel
