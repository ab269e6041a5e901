"""The admins' keys page in headless Chromium: the list (never key material), the create form with the API's 422 and
409 messages beside their fields, the new key shown once with a copy button (in no URL, gone from every page after),
and a revocation confirmed by name that the API honours at once. axe-core runs on every screen of it."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.ui.conftest import Dashboard


def test_an_admin_creates_copies_and_revokes_a_key(dashboard: Dashboard) -> None:
    server, page = dashboard.server, dashboard.page
    existing = server.new_key("vision", "read", name="vision-reader")
    dashboard.sign_in()
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Keys").click()
    expect(page.get_by_role("heading", name="API keys", level=1)).to_be_visible()
    reader_row = page.locator("#keys tbody tr", has_text="vision-reader")
    expect(reader_row).to_contain_text("vision")
    expect(reader_row).to_contain_text("read")
    assert existing not in page.content()  # a listed key never shows its key material
    dashboard.assert_accessible("keys")

    # The API's messages, beside the fields they name: a bad name, then an operate key without a team.
    page.get_by_label("Name").fill("has spaces")
    page.get_by_label("Team").fill("Research")
    page.get_by_role("button", name="Create key").click()
    expect(page.locator("#error-name")).to_contain_text("should match pattern")
    expect(page.locator("#error-team")).to_contain_text("should match pattern")
    expect(page.get_by_label("Name")).to_have_attribute("aria-invalid", "true")
    dashboard.assert_accessible("keys, a refused form")
    page.get_by_label("Name").fill("trainer")
    page.get_by_label("Team").fill("")
    page.get_by_label("Scope").select_option("operate")
    page.get_by_role("button", name="Create key").click()
    expect(page.locator("#error-team")).to_have_text("a 'operate' key needs a team (only admin keys may have none)")
    expect(page.locator("#error-name")).to_have_count(0)
    page.get_by_label("Name").fill("vision-reader")
    page.get_by_label("Team").fill("research")
    page.get_by_role("button", name="Create key").click()
    expect(page.locator("#error-name")).to_contain_text("a key named 'vision-reader' exists")

    # A valid form: the key, once, with a copy button; the answer to the POST, so no URL carries it.
    page.get_by_label("Name").fill("trainer")
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_role("heading", name="Key trainer created")).to_be_visible()
    key = page.locator("#key-value").inner_text()
    assert re.fullmatch(r"ngpu_[A-Za-z0-9_-]{43}", key), key
    assert key not in page.url
    page.get_by_role("button", name="Copy key").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == key
    dashboard.assert_accessible("key created")
    with server.client(key=key) as as_trainer:
        assert as_trainer.get("/api/instances").status_code == 200  # the key shown is the key created

    page.get_by_role("link", name="Back to the keys").click()
    trainer_row = page.locator("#keys tbody tr", has_text="trainer")
    expect(trainer_row).to_contain_text("research")
    expect(trainer_row).to_contain_text("operate")
    assert key not in page.content()  # shown once, never again
    dashboard.screenshot("keys")

    # Revoke, confirmed by name; the API refuses the key from the next request on.
    trainer_row.get_by_role("link", name="Revoke key trainer").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Revoke key trainer?")
    dashboard.assert_accessible("revoke a key")
    token = page.locator("input[name=csrf_token]").first.input_value()
    forged = page.request.post(page.url, form={}, max_redirects=0)
    assert forged.status == 403 and "security token" in forged.text()  # no CSRF token, no revocation
    page.get_by_role("button", name="Revoke trainer").click()
    expect(page.get_by_role("status").first).to_contain_text("Key revoked")
    expect(page.locator("#keys tbody tr", has_text="trainer")).to_have_count(0)
    expect(page.locator("#keys tbody tr", has_text="vision-reader")).to_have_count(1)
    with server.client(key=key) as as_trainer:
        assert as_trainer.get("/api/instances").status_code == 401
    again = page.request.post(f"/ui/keys/{'f' * 16}/revoke", form={"csrf_token": token})
    assert again.status == 404 and "no API key with id" in again.text()


def test_keys_page_is_for_admins_only(dashboard: Dashboard) -> None:
    server, page = dashboard.server, dashboard.page
    dashboard.sign_in(server.new_key("vision", "operate"))
    expect(page.get_by_role("heading", name="Instances")).to_be_visible()
    expect(page.get_by_role("navigation", name="Main").get_by_role("link", name="Keys")).to_have_count(0)
    token = page.locator("input[name=csrf_token]").first.input_value()
    answer = dashboard.goto("/ui/keys")
    assert answer.status == 403
    expect(page.get_by_role("alert")).to_contain_text("this needs the 'admin' scope")
    forged = page.request.post("/ui/keys", form={"csrf_token": token, "name": "mine", "scope": "admin"})
    assert forged.status == 403
    with server.client() as api:
        assert "mine" not in {item["name"] for item in api.get("/api/keys").json()["items"]}
