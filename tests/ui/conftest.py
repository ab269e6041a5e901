"""Browser tests of the dashboard: Debian's headless Chromium driven by Playwright, against the real app on a real
redis-server and the fake Novita (the fixtures of tests/app).

Fixtures:
- `browser` (session): Chromium from `/usr/bin/chromium`; the test fails, never skips, when it is missing.
- `dashboard` (function): a ready API server whose Novita instance reads are cached for 1 s only (so the page sees
  each status), and a `Dashboard` helper: a fresh browser context that may read the clipboard, sign-in, axe checks,
  screenshots into docs/screenshots/.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from tests.app.conftest import ApiServer, StartServer, api_server_factory  # noqa: F401  (fixture re-used here)

CHROMIUM = "/usr/bin/chromium"
AXE_VERSION = "4.14.1"  # tests/ui/vendor/README.md
AXE_SOURCE = (Path(__file__).parent / "vendor" / "axe.min.js").read_text()
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
BLOCKING_IMPACTS = ("serious", "critical")
TIMEOUT_MS = 20_000


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    """Debian's Chromium, headless; Playwright's own browser download cannot be fetched here."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail(
            f"{CHROMIUM} not found: the dashboard tests need Debian's browser. "
            "Install it with `apt-get install chromium` (.ci/run does)."
        )
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
    yield browser
    browser.close()


@dataclass
class Dashboard:
    """A signed-out browser on one running app, with the checks every screen gets."""

    server: ApiServer
    context: BrowserContext
    page: Page

    @property
    def base_url(self) -> str:
        """Where the app listens (loopback)."""
        return self.server.base_url

    def goto(self, path: str) -> Any:
        """Open a path of the app; returns the navigation's response."""
        return self.page.goto(self.base_url + path)

    def sign_in(self, key: str | None = None) -> None:
        """Sign in through the form with the server's key (or `key`)."""
        self.goto("/ui/login")
        self.page.get_by_label("API key").fill(self.server.api_key if key is None else key)
        self.page.get_by_role("button", name="Sign in").click()

    def assert_accessible(self, screen: str) -> None:
        """Run axe-core in the page: no serious or critical violation."""
        self.page.evaluate(AXE_SOURCE)  # evaluated by the driver, not injected: the page's CSP stays as served
        violations = self.page.evaluate(
            """async () => (await axe.run(document, {resultTypes: ['violations']})).violations.map(v => ({
                id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 3)}))"""
        )
        assert self.page.evaluate("axe.version") == AXE_VERSION
        blocking = [v for v in violations if v["impact"] in BLOCKING_IMPACTS]
        assert not blocking, f"accessibility violations on the {screen} screen: {blocking}"

    def screenshot(self, name: str) -> None:
        """Write docs/screenshots/<name>.png (shown in the README)."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@pytest.fixture
def dashboard(api_server_factory: StartServer, browser: Browser) -> Iterator[Dashboard]:  # noqa: F811
    server = api_server_factory(cache_ttl_instances_seconds=1)
    context = browser.new_context(
        base_url=server.base_url,
        viewport={"width": 1280, "height": 860},
        permissions=["clipboard-read", "clipboard-write"],
    )
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    try:
        yield Dashboard(server, context, page)
    finally:
        context.close()
