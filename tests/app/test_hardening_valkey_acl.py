"""The least-privilege Valkey user of the Pulumi program (`valkeyAppUser`) is enough for the API, and no more.

A real redis-server gets a user with exactly the rules `components/valkey.py` gives the Aiven ValkeyUser (keys
`ngpu:*`, the listed commands, nothing else); the API runs as that user through its whole instance lifecycle, the
catalogue, jobs, rate limits and health, and Valkey's own ACL LOG must show no denied command or key.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import redis

from components.valkey import APP_COMMANDS, APP_KEY_PATTERNS
from tests.app.conftest import StartServer
from tests.app.instances_client import create_body, create_running, run_action, wait_for_job
from tests.fixtures_redis import RedisServer

USERNAME = "ngpu-api"


@pytest.fixture
def app_user_url(redis_server: RedisServer) -> Iterator[str]:
    """Create the ACL user on the shared server (as Aiven would) and return its URL; removed afterwards."""
    redis_server.start()
    password = secrets.token_hex(16)
    rules = [
        "reset",
        "on",
        f">{password}",
        "resetchannels",
        "-@all",
        *(f"~{pattern}" for pattern in APP_KEY_PATTERNS),
        *(f"+{command}" for command in APP_COMMANDS),
    ]
    with redis_server.client() as admin:
        admin.acl_setuser(USERNAME, reset=True)  # start from nothing even if a previous test left it
        admin.execute_command("ACL", "SETUSER", USERNAME, *rules)
        admin.execute_command("ACL", "LOG", "RESET")
    yield f"redis://{USERNAME}:{password}@127.0.0.1:{redis_server.port}"
    with redis_server.client() as admin:
        admin.acl_deluser(USERNAME)


def _denials(redis_server: RedisServer) -> list[dict[str, object]]:
    with redis_server.client() as admin:
        return [entry for entry in admin.acl_log() if entry.get("username") == USERNAME]


def test_the_api_runs_entirely_on_the_least_privilege_user(
    api_server_factory: StartServer, redis_server: RedisServer, app_user_url: str
) -> None:
    server = api_server_factory(redis_url=app_user_url, rate_limit_requests=1000)
    with server.client() as client:
        assert client.put("/api/budgets/-", json={"maxGpus": 8, "maxSpendPerDay": "100"}).status_code == 200
        running = create_running(client)
        replay = client.post("/api/instances", json=create_body(name="replayed"), headers={"Idempotency-Key": "k-1"})
        again = client.post("/api/instances", json=create_body(name="replayed"), headers={"Idempotency-Key": "k-1"})
        assert replay.status_code == again.status_code == 202 and replay.json()["jobId"] == again.json()["jobId"]
        assert wait_for_job(client, replay.json()["jobId"])["state"] == "succeeded"
        for action in ("stop", "start", "restart", "delete"):
            assert run_action(client, running["id"], action)["state"] == "succeeded", action
        for path in (
            "/api/instances",
            f"/api/instances/{running['id']}",
            "/api/products",
            "/api/regions",
            "/api/jobs/dead-letters",
            "/api/costs?groupBy=day",
            "/api/budgets",
            "/health",
            "/readyz",
            "/metrics",
        ):
            assert client.get(path).status_code == 200, path
        assert client.get("/health").json()["status"] == "healthy"

    assert _denials(redis_server) == []


def test_the_user_cannot_step_outside_its_keys_and_commands(redis_server: RedisServer, app_user_url: str) -> None:
    """The rules are enforced (so the test above proves something): other keys and admin commands are refused."""
    with redis.Redis.from_url(app_user_url, decode_responses=True) as as_app:
        as_app.set("ngpu:probe", "1")
        for forbidden in (
            lambda: as_app.get("other:key"),
            lambda: as_app.keys("*"),
            lambda: as_app.flushall(),
            lambda: as_app.config_get("*"),
            lambda: as_app.execute_command("ACL", "LIST"),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                forbidden()
    assert len(_denials(redis_server)) == 5
