"""Dashboard sign-in over real HTTP (no browser needed): the session cookie's flags, the session in Valkey and its
expiry, key rotation, the key's identity and rate limit, and the key kept out of pages, Valkey and the log."""

from __future__ import annotations

import io
import re
import time

import httpx
import pytest

from app.core.config import ConfigError, load_settings
from tests.app.conftest import ApiServer, StartServer
from tests.app.test_hardening_secrets import _app_log_into
from tests.fixtures_redis import RedisServer

SESSION_KEYS = "ngpu:ui:session:*"


def _sign_in(
    server: ApiServer, client: httpx.Client, key: str | None = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    """The two steps a browser takes: fetch the form (its CSRF cookie and token), post the key. The cookie is sent
    back by hand: behind TLS it is `Secure`, which an HTTP client keeps to itself on this plain-HTTP loopback."""
    form = client.get("/ui/login", headers=headers)
    assert form.status_code == 200
    field = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert field, "the sign-in form has no CSRF token"
    token = field.group(1)
    sign_in_cookie = _set_cookie_header(form, "ngpu_ui_signin").split(";")[0]
    return client.post(
        "/ui/login",
        data={"csrf_token": token, "api_key": server.api_key if key is None else key},
        headers={**(headers or {}), "Cookie": sign_in_cookie},
    )


def _set_cookie_header(response: httpx.Response, name: str) -> str:
    return next(value for value in response.headers.get_list("set-cookie") if value.startswith(f"{name}="))


@pytest.fixture
def server(api_server_factory: StartServer) -> ApiServer:
    return api_server_factory(ui_session_ttl_seconds=120)


def test_the_session_cookie_is_httponly_strict_and_secure_behind_tls(server: ApiServer) -> None:
    with httpx.Client(base_url=server.base_url) as client:
        plain = _sign_in(server, client)
    with httpx.Client(base_url=server.base_url) as client:
        behind_tls = _sign_in(server, client, headers={"X-Forwarded-Proto": "https"})

    assert plain.status_code == behind_tls.status_code == 303
    assert plain.headers["location"] == "/ui/instances"
    for response, secure in ((plain, False), (behind_tls, True)):
        cookie = _set_cookie_header(response, "ngpu_ui_session").lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie
        assert "max-age=120" in cookie
        assert ("secure" in cookie.split("; ")) is secure


def test_the_session_lives_in_valkey_with_an_expiry_and_holds_no_key(
    server: ApiServer, redis_server: RedisServer
) -> None:
    with httpx.Client(base_url=server.base_url) as client:
        _sign_in(server, client)
        token = client.cookies["ngpu_ui_session"]
        assert client.get("/ui/instances").status_code == 200

        with redis_server.client() as valkey:
            (key,) = list(valkey.scan_iter(SESSION_KEYS))
            assert 110 <= valkey.ttl(key) <= 120
            stored = valkey.get(key) + key
            assert server.api_key not in stored and token not in stored  # only digests of both
            valkey.pexpire(key, 1)  # what the expiry does after ui_session_ttl_seconds
        time.sleep(0.05)

        assert client.get("/ui/instances").headers.get("location") == "/ui/login"


def test_a_session_ends_when_its_key_is_rotated(api_server_factory: StartServer) -> None:
    before = api_server_factory(api_keys="ops:" + "a" * 24)
    after = api_server_factory(api_keys="ops:" + "b" * 24)  # same name, new key, same Valkey
    with httpx.Client(base_url=before.base_url) as client:
        _sign_in(before, client)
        assert client.get("/ui/instances").status_code == 200
        cookie = client.cookies["ngpu_ui_session"]

    with httpx.Client(base_url=after.base_url, cookies={"ngpu_ui_session": cookie}) as client:
        assert client.get("/ui/instances").headers.get("location") == "/ui/login"


def test_the_keys_rate_limit_applies_to_the_dashboard(api_server_factory: StartServer) -> None:
    server = api_server_factory(rate_limit_requests=3)
    with httpx.Client(base_url=server.base_url) as client:
        _sign_in(server, client)
        statuses = [client.get("/ui/jobs").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


def test_a_wrong_key_is_refused_and_no_key_reaches_the_page_or_the_log(server: ApiServer) -> None:
    wrong = "wrong-key-" + "z" * 24
    log = io.StringIO()
    with _app_log_into(log), httpx.Client(base_url=server.base_url) as client:
        refused = _sign_in(server, client, key=wrong)
        accepted = _sign_in(server, client)
        page = client.get("/ui/instances")

    assert refused.status_code == 401 and "not valid" in refused.text
    assert accepted.status_code == 303 and page.status_code == 200
    assert '"apiKeyName": "tests"' in log.getvalue()  # the key's name is the identity, as on the API
    for text in (refused.text, page.text, str(page.url), log.getvalue()):
        assert wrong not in text and server.api_key not in text


def test_sign_in_needs_the_forms_own_csrf_token(server: ApiServer) -> None:
    with httpx.Client(base_url=server.base_url) as client:
        forged = client.post("/ui/login", data={"csrf_token": "made-up", "api_key": server.api_key})
    assert forged.status_code == 403 and "ngpu_ui_session" not in forged.headers.get("set-cookie", "")


def test_without_configured_keys_anyone_on_the_open_dev_server_signs_in(api_server_factory: StartServer) -> None:
    server = api_server_factory(api_keys=None)
    with httpx.Client(base_url=server.base_url) as client:
        assert "No API keys are configured" in client.get("/ui/login").text
        assert _sign_in(server, client, key="").status_code == 303
        assert "anonymous" in client.get("/ui/instances").text


def test_dashboard_routes_stay_out_of_the_openapi_schema(server: ApiServer) -> None:
    with server.client() as client:
        paths = client.get("/openapi.json").json()["paths"]
    assert paths and not [path for path in paths if path.startswith("/ui")]


def test_a_bad_session_lifetime_is_a_config_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOVITA_API_KEY", "sk_novita_0123456789abcdef")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("UI_SESSION_TTL_SECONDS", "5")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "UI_SESSION_TTL_SECONDS" in str(raised.value)
