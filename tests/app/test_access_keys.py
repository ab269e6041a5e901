"""Keys as principals over real HTTP: created, listed and revoked by admins, stored only as a keyed hash, revoked on
every replica at once, and never written to a log."""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import redis

from app.core.logging import JsonFormatter
from tests.app.conftest import ApiServer, StartServer
from tests.app.instances_client import create_body
from tests.fixtures_redis import RedisServer

PROBLEM = "application/problem+json"


def test_admins_create_list_and_revoke_keys_and_the_key_is_shown_once(api_server: ApiServer) -> None:
    with api_server.client() as admin:
        created = admin.post("/api/keys", json={"name": "ml-ci", "team": "ml", "scope": "operate"})
        listed = admin.get("/api/keys")
    assert created.status_code == 201
    body = created.json()
    assert set(body) == {"id", "name", "team", "scope", "key", "createdAt"}
    assert (body["name"], body["team"], body["scope"]) == ("ml-ci", "ml", "operate")
    assert re.fullmatch(r"[0-9a-f]{16}", body["id"]) and body["key"].startswith("ngpu_") and len(body["key"]) > 40
    assert listed.status_code == 200
    assert listed.json()["items"] == [{k: v for k, v in body.items() if k != "key"}]  # no key material in the list

    with api_server.client(key=body["key"]) as team_client:
        assert team_client.get("/api/instances").status_code == 200
        with api_server.client() as admin:
            revoked = admin.delete(f"/api/keys/{body['id']}")
            again = admin.delete(f"/api/keys/{body['id']}")
            after = admin.get("/api/keys").json()["items"]
        refused = team_client.get("/api/instances")
    assert revoked.status_code == 204 and revoked.content == b""
    assert again.status_code == 404 and again.headers["content-type"] == PROBLEM
    assert after == []
    assert refused.status_code == 401 and refused.json()["detail"] == "invalid API key"


def test_key_requests_are_checked_and_named(api_server: ApiServer) -> None:
    bootstrap_name = next(iter(api_server.settings.client_api_keys))
    with api_server.client() as admin:
        no_team = admin.post("/api/keys", json={"name": "x", "scope": "read"})
        bad_scope = admin.post("/api/keys", json={"name": "x", "team": "ml", "scope": "root"})
        bad_team = admin.post("/api/keys", json={"name": "x", "team": "ML team", "scope": "read"})
        first = admin.post("/api/keys", json={"name": "dup", "team": "ml", "scope": "read"})
        duplicate = admin.post("/api/keys", json={"name": "dup", "team": "cv", "scope": "read"})
        bootstrap = admin.post("/api/keys", json={"name": bootstrap_name, "team": "ml", "scope": "read"})
        teamless_admin = admin.post("/api/keys", json={"name": "root2", "scope": "admin"})
    assert no_team.status_code == 422 and no_team.json()["errors"][0]["field"] == "body.team"
    assert "needs a team" in no_team.json()["detail"]
    assert bad_scope.status_code == 422 and bad_scope.json()["errors"][0]["field"] == "body.scope"
    assert bad_team.status_code == 422 and bad_team.json()["errors"][0]["field"] == "body.team"
    assert first.status_code == 201
    assert duplicate.status_code == 409 and "a key named 'dup' exists" in duplicate.json()["detail"]
    assert bootstrap.status_code == 409 and "API_KEYS" in bootstrap.json()["detail"]
    assert teamless_admin.status_code == 201 and teamless_admin.json()["team"] is None


def test_only_admins_manage_keys(api_server: ApiServer) -> None:
    operator = api_server.new_key("ml", "operate")
    with api_server.client(key=operator) as client:
        answers = [
            client.get("/api/keys"),
            client.post("/api/keys", json={"name": "mine", "team": "ml", "scope": "admin"}),
            client.delete("/api/keys/0123456789abcdef"),
        ]
    for answer in answers:
        assert answer.status_code == 403 and answer.headers["content-type"] == PROBLEM
        assert answer.json()["detail"].startswith("this needs the 'admin' scope")


def _every_stored_text(valkey: redis.Redis) -> Iterator[tuple[str, bytes]]:
    """Every key name and every value under the app's prefix, whatever the type."""
    for key in valkey.scan_iter(match="ngpu:*"):
        kind = valkey.type(key)
        if kind == b"none":
            continue  # gone since the scan listed it (a job's lock, say): it stores nothing now
        yield key.decode(), key
        values: list[Any]
        if kind == b"string":
            values = [valkey.get(key) or b""]
        elif kind == b"hash":
            fields: dict[Any, Any] = valkey.hgetall(key)  # the sync client answers a dict
            values = [part for pair in fields.items() for part in pair]
        elif kind == b"set":
            values = list(valkey.smembers(key))
        elif kind == b"zset":
            values = list(valkey.zrange(key, 0, -1))
        elif kind == b"list":
            values = list(valkey.lrange(key, 0, -1))
        elif kind == b"stream":
            entries: list[Any] = valkey.xrange(key)  # type: ignore[assignment]  # sync client: a list
            values = [part for _, fields in entries for pair in fields.items() for part in pair]
        else:
            raise AssertionError(f"unexpected type {kind!r} of {key!r}")
        for value in values:
            yield key.decode(), value


def test_keys_are_stored_only_as_their_keyed_hash(api_server: ApiServer, redis_server: RedisServer) -> None:
    team_key = api_server.new_key("ml", "operate", name="ml-writer")
    with api_server.client(key=team_key) as client:  # use it: a session, rate-limit counters, an instance
        assert client.post("/api/instances", json=create_body(name="hash-check")).status_code == 202
    api_server.dashboard(team_key).close()

    secret = api_server.settings.api_key_hashing_key
    expected_digest = hmac.new(secret, team_key.encode(), hashlib.sha256).hexdigest()
    plain_digest = hashlib.sha256(team_key.encode()).hexdigest()
    with redis.Redis.from_url(redis_server.url) as valkey:
        stored = list(_every_stored_text(valkey))
        assert valkey.exists(f"ngpu:access:key:{expected_digest}")  # looked up by its HMAC, one key
    for material in (team_key, api_server.api_key, team_key.removeprefix("ngpu_"), plain_digest):
        leaks = [where for where, value in stored if material.encode() in value]
        assert leaks == [], f"key material found in Valkey under {leaks}"


def test_a_revocation_holds_on_another_replica_within_a_second(api_server_factory: StartServer) -> None:
    shared = {"api_keys": "ops:" + secrets.token_hex(16), "api_key_hash_secret": secrets.token_hex(24)}
    first = api_server_factory(**shared)
    second = api_server_factory(**shared)
    team_key = first.new_key("ml", "read")
    dashboard = second.dashboard(team_key)
    with second.client(key=team_key) as on_second, first.client() as admin_on_first:
        assert on_second.get("/api/instances").status_code == 200
        assert dashboard.get("/ui/instances").status_code == 200
        key_id = admin_on_first.get("/api/keys").json()["items"][0]["id"]
        assert admin_on_first.delete(f"/api/keys/{key_id}").status_code == 204
        revoked_at = time.monotonic()
        statuses = []
        while time.monotonic() - revoked_at < 1.0:
            statuses.append(on_second.get("/api/instances").status_code)
            if statuses[-1] == 401:
                break
        refused_after = time.monotonic() - revoked_at
        ui_after = dashboard.get("/ui/instances", follow_redirects=False)
    dashboard.close()
    assert statuses and statuses[-1] == 401, statuses
    assert refused_after < 1.0
    assert statuses == [401]  # no cache at all: the very first request after the revocation is refused
    assert ui_after.status_code == 303 and ui_after.headers["location"] == "/ui/login"  # the session ended too


@contextmanager
def _captured_logs() -> Iterator[io.StringIO]:
    handler = next(h for h in logging.getLogger().handlers if isinstance(h.formatter, JsonFormatter))
    captured = io.StringIO()
    previous = handler.setStream(captured)  # type: ignore[attr-defined]
    try:
        yield captured
    finally:
        handler.setStream(previous)  # type: ignore[attr-defined]


def test_no_key_reaches_any_log_line(api_server_factory: StartServer) -> None:
    server = api_server_factory(log_level="DEBUG")
    with _captured_logs() as logs:
        team_key = server.new_key("ml", "read", name="logged-or-not")
        with server.client(key=team_key) as client:
            client.get("/api/instances")
            client.post("/api/instances", json={"name": "nope"})  # 403: the key's scope named, not the key
        with server.client(key=team_key + "x") as wrong:
            wrong.get("/api/instances")  # 401 for a near miss
        with httpx.Client(base_url=server.base_url) as bearer:
            bearer.get("/api/instances", headers={"Authorization": f"Bearer {team_key}"})
        server.dashboard(team_key).close()
        with server.client() as admin:
            admin.delete(f"/api/keys/{admin.get('/api/keys').json()['items'][0]['id']}")
        deadline = time.monotonic() + 5
        while logs.getvalue().count('"app.access"') < 6 and time.monotonic() < deadline:
            time.sleep(0.01)  # access lines are written by the server thread just after each answer
    text = logs.getvalue()
    assert '"apiKeyName": "logged-or-not"' in text  # the key is named in the log, by its name
    for material in (team_key, team_key.removeprefix("ngpu_"), server.api_key):
        assert material not in text
