"""Access hardening over real HTTP: per-key rate limits kept in Valkey (429 + Retry-After, fail open), and CORS
that exists only when configured. API-key checks, the body limit and docs-off-in-production are covered in
test_errors_and_auth.py and test_config.py."""

from __future__ import annotations

import time

import httpx
import pytest

from app.core.config import ConfigError, Settings, load_settings
from app.core.metrics import Metrics
from app.core.ratelimit import KEY_PREFIX, RateLimiter
from app.core.redis import RedisManager
from tests.app.conftest import ApiServer, StartServer, fast_settings
from tests.fixtures_redis import RedisServer
from tests.loopback import free_port

PROBLEM = "application/problem+json"
KEY_A = "alpha-key-0123456789abcdef"
KEY_B = "bravo-key-0123456789abcdef"
TWO_KEYS = f"alpha:{KEY_A},bravo:{KEY_B}"
LIMITED_PATH = "/api/jobs/dead-letters"  # cheap, authenticated, needs only Valkey


def _get(server: ApiServer, key: str, path: str = LIMITED_PATH) -> httpx.Response:
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        return client.get(path, headers={"X-API-Key": key})


def _decisions(server: ApiServer, outcome: str) -> float:
    sample = server.container.metrics.registry.get_sample_value("rate_limit_decisions_total", {"outcome": outcome})
    return sample or 0.0


def test_a_key_over_its_limit_gets_429_with_retry_after_and_other_keys_are_unaffected(
    api_server_factory: StartServer, redis_server: RedisServer
) -> None:
    server = api_server_factory(api_keys=TWO_KEYS, rate_limit_requests=3, rate_limit_window_seconds=60)

    allowed = [_get(server, KEY_A) for _ in range(3)]
    refused = _get(server, KEY_A)
    other_key = _get(server, KEY_B)
    health = [_get(server, KEY_A, "/health") for _ in range(3)]  # health is never limited

    assert [r.status_code for r in allowed] == [200, 200, 200]
    assert refused.status_code == 429 and refused.headers["content-type"] == PROBLEM
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.json()["title"] == "Too Many Requests"
    assert "3 requests per 60 s" in refused.json()["detail"]
    assert KEY_A not in refused.text
    assert other_key.status_code == 200
    assert all(r.status_code == 200 for r in health)
    # The counters live in Valkey under the key *name*, with an expiry, never under the key itself.
    with redis_server.client() as valkey:
        counters = valkey.keys(KEY_PREFIX + "*")
        assert sorted(key.split(":")[2] for key in counters) == ["alpha", "bravo"]
        assert all(0 < valkey.ttl(key) <= 61 for key in counters)
        assert not any(KEY_A in key or KEY_B in key for key in counters)
    assert _decisions(server, "limited") == 1 and _decisions(server, "allowed") == 4


def test_replicas_share_one_budget_per_key(api_server_factory: StartServer) -> None:
    first = api_server_factory(api_keys=TWO_KEYS, rate_limit_requests=4, rate_limit_window_seconds=60)
    second = api_server_factory(api_keys=TWO_KEYS, rate_limit_requests=4, rate_limit_window_seconds=60)
    if 60 - time.time() % 60 < 15:  # windows are fixed per minute: keep the six requests inside one of them
        time.sleep(60 - time.time() % 60 + 0.05)

    statuses = [_get(server, KEY_A).status_code for server in (first, second, first, second, first, second)]

    assert statuses == [200, 200, 200, 200, 429, 429]


def test_the_window_resets(api_server_factory: StartServer) -> None:
    server = api_server_factory(api_keys=TWO_KEYS, rate_limit_requests=1, rate_limit_window_seconds=1)
    # Start at the beginning of a window so both requests fall into it.
    time.sleep(1 - time.time() % 1 + 0.01)
    assert _get(server, KEY_A).status_code == 200
    refused = _get(server, KEY_A)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    time.sleep(1.05)
    assert _get(server, KEY_A).status_code == 200


def test_limit_zero_turns_it_off(api_server_factory: StartServer, redis_server: RedisServer) -> None:
    server = api_server_factory(api_keys=TWO_KEYS, rate_limit_requests=0)
    assert all(_get(server, KEY_A).status_code == 200 for _ in range(5))
    with redis_server.client() as valkey:
        assert valkey.keys(KEY_PREFIX + "*") == []


def test_the_limit_fails_open_and_fast_when_valkey_is_down(
    api_server_factory: StartServer, redis_server: RedisServer
) -> None:
    server = api_server_factory(api_keys=TWO_KEYS, rate_limit_requests=1, rate_limit_window_seconds=60)
    # The catalogue is served uncached while Valkey is down, so it shows what the limiter alone decides.
    assert _get(server, KEY_A, "/api/regions").status_code == 200
    assert _get(server, KEY_A, "/api/regions").status_code == 429

    redis_server.stop(save=False)
    try:
        server.wait_until("/readyz", 503, timeout=10)
        started = time.monotonic()
        during_outage = [_get(server, KEY_A, "/api/regions") for _ in range(3)]
        elapsed = time.monotonic() - started
    finally:
        redis_server.start()

    assert [r.status_code for r in during_outage] == [200, 200, 200]
    assert elapsed < 3.0, f"three requests took {elapsed:.2f} s: the limiter must not wait for a dead Valkey"
    assert _decisions(server, "failed_open") >= 3
    server.wait_ready()
    # Back to counting once Valkey answers (the old counter died with the unsaved data: a fresh window).
    assert _get(server, KEY_A, "/api/regions").status_code == 200
    assert _get(server, KEY_A, "/api/regions").status_code == 429


def test_no_cors_headers_unless_configured(api_server: ApiServer) -> None:
    preflight_headers = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    with api_server.client() as client:
        preflight = client.options("/api/instances", headers=preflight_headers)
        simple = client.get(LIMITED_PATH, headers={"Origin": "https://evil.example"})
    for answer in (preflight, simple):
        assert not any(name.lower().startswith("access-control-") for name in answer.headers)
    assert preflight.status_code == 405  # no CORS layer: OPTIONS is just a method the route does not have


def test_configured_cors_allows_only_the_listed_origins(api_server_factory: StartServer) -> None:
    server = api_server_factory(cors_allow_origins="https://console.example, http://localhost:5173")
    request_headers = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "X-API-Key"}
    with server.client() as client:
        allowed = client.options("/api/instances", headers={"Origin": "https://console.example", **request_headers})
        other = client.options("/api/instances", headers={"Origin": "https://evil.example", **request_headers})
        simple = client.get(LIMITED_PATH, headers={"Origin": "http://localhost:5173"})

    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://console.example"
    assert "x-api-key" in allowed.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in allowed.headers
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    assert simple.status_code == 200 and simple.headers["access-control-allow-origin"] == "http://localhost:5173"
    assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"CORS_ALLOW_ORIGINS": "console.example"}, "CORS_ALLOW_ORIGINS: 'console.example' is not an origin"),
        ({"CORS_ALLOW_ORIGINS": "https://a.example/app"}, "CORS_ALLOW_ORIGINS: 'https://a.example/app' is not"),
        ({"RATE_LIMIT_REQUESTS": "-1"}, "RATE_LIMIT_REQUESTS: Input should be greater than or equal to 0"),
        ({"RATE_LIMIT_WINDOW_SECONDS": "0"}, "RATE_LIMIT_WINDOW_SECONDS: Input should be greater than or equal"),
        ({"RATE_LIMIT_REQUESTS": "many"}, "RATE_LIMIT_REQUESTS: Input should be a valid integer"),
    ],
)
def test_bad_access_settings_give_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], expected: str
) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("NOVITA_API_KEY", "sk_novita_0123456789abcdef")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert expected in str(raised.value)


async def test_a_failing_count_lets_the_request_through_and_marks_valkey_down() -> None:
    dead_port = free_port()  # a port nobody listens on
    redis = RedisManager(fast_settings(f"redis://127.0.0.1:{dead_port}"))
    metrics = Metrics()
    limiter = RateLimiter(redis, metrics, limit=1, window_seconds=60)
    redis.is_up = True  # the monitor has not noticed the outage yet
    try:
        started = time.monotonic()
        decision = await limiter.check("alpha")
        elapsed = time.monotonic() - started
    finally:
        await redis.close()
    assert decision is None and redis.is_up is False
    assert elapsed < 2.0
    assert metrics.registry.get_sample_value("rate_limit_decisions_total", {"outcome": "failed_open"}) == 1
