"""Teams and scopes over real HTTP: every route, walked from the app's own route table, answered with another team's
ids and with each scope; nothing of another team leaks through lists, jobs, dead letters, by-name routes or errors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
from fastapi.routing import iter_route_contexts

from app.access.principal import SCOPE_ORDER, Scope
from app.jobs.worker import JobContext
from tests.app.conftest import ApiServer, QueueKit, StartServer, wait_for
from tests.app.instances_client import create_body, create_running, wait_for_list
from tests.fakes.fixtures import FakeNovitaHandle
from tests.fixtures_redis import RedisServer

PROBLEM = "application/problem+json"


@dataclass
class Target:
    """Another team's things, as a caller would name them."""

    instance: str
    job: str
    name: str
    key: str = "0123456789abcdef"
    team: str = "bravo"


Call = Callable[[httpx.Client, Target], httpx.Response]

# Every route behind a key: the scope it needs, how to call it on another team's things, and what a caller holding
# the scope gets then (404: it is not theirs; 200/202: it acts on the caller's own, e.g. a list or a create).
ROUTES: dict[tuple[str, str], tuple[Scope, Call, int]] = {
    ("get", "/api/instances"): ("read", lambda c, t: c.get("/api/instances"), 200),
    ("post", "/api/instances"): ("operate", lambda c, t: c.post("/api/instances", json=create_body(name="own")), 202),
    ("get", "/api/instances/{instance_id}"): ("read", lambda c, t: c.get(f"/api/instances/{t.instance}"), 404),
    ("post", "/api/instances/{instance_id}/start"): (
        "operate",
        lambda c, t: c.post(f"/api/instances/{t.instance}/start"),
        404,
    ),
    ("post", "/api/instances/{instance_id}/stop"): (
        "operate",
        lambda c, t: c.post(f"/api/instances/{t.instance}/stop"),
        404,
    ),
    ("post", "/api/instances/{instance_id}/restart"): (
        "operate",
        lambda c, t: c.post(f"/api/instances/{t.instance}/restart"),
        404,
    ),
    ("delete", "/api/instances/{instance_id}"): ("operate", lambda c, t: c.delete(f"/api/instances/{t.instance}"), 404),
    ("post", "/api/instances/{instance_id}/heartbeat"): (
        "operate",
        lambda c, t: c.post(f"/api/instances/{t.instance}/heartbeat"),
        404,
    ),
    ("put", "/api/instances/{instance_id}/owner"): (
        "admin",
        lambda c, t: c.put(f"/api/instances/{t.instance}/owner", json={"team": "alpha"}),
        404,
    ),
    ("get", "/api/jobs/{job_id}"): ("read", lambda c, t: c.get(f"/api/jobs/{t.job}"), 404),
    ("get", "/api/jobs/dead-letters"): ("read", lambda c, t: c.get("/api/jobs/dead-letters"), 200),
    ("post", "/api/jobs/{job_id}/cancel"): ("operate", lambda c, t: c.post(f"/api/jobs/{t.job}/cancel"), 404),
    ("post", "/api/jobs/{job_id}/requeue"): ("operate", lambda c, t: c.post(f"/api/jobs/{t.job}/requeue"), 404),
    ("get", "/api/products"): ("read", lambda c, t: c.get("/api/products"), 200),
    ("get", "/api/regions"): ("read", lambda c, t: c.get("/api/regions"), 200),
    ("post", "/api/instances/start"): (
        "operate",
        lambda c, t: c.post("/api/instances/start", json={"instanceName": t.name}),
        404,
    ),
    ("post", "/api/instances/stop"): (
        "operate",
        lambda c, t: c.post("/api/instances/stop", json={"instanceName": t.name}),
        404,
    ),
    ("post", "/api/instances/delete"): (
        "operate",
        lambda c, t: c.post("/api/instances/delete", json={"instanceName": t.name}),
        404,
    ),
    ("post", "/api/instances/stop-all"): (
        "operate",
        lambda c, t: c.post("/api/instances/stop-all", json={"dryRun": False, "confirm": "stop-all"}),
        200,
    ),
    ("put", "/api/instances/{instance_id}/last-used"): (
        "operate",
        lambda c, t: c.put(f"/api/instances/{t.instance}/last-used", json={}),
        404,
    ),
    ("post", "/api/keys"): ("admin", lambda c, t: c.post("/api/keys", json={"name": "x", "scope": "admin"}), 201),
    ("get", "/api/keys"): ("admin", lambda c, t: c.get("/api/keys"), 200),
    ("delete", "/api/keys/{key_id}"): ("admin", lambda c, t: c.delete(f"/api/keys/{t.key}"), 404),
    ("get", "/api/instances/{instance_id}/jobs"): (
        "read",
        lambda c, t: c.get(f"/api/instances/{t.instance}/jobs"),
        404,
    ),
    ("get", "/api/costs"): ("read", lambda c, t: c.get("/api/costs", params={"groupBy": "team"}), 200),
    ("get", "/api/budgets"): ("admin", lambda c, t: c.get("/api/budgets"), 200),
    ("get", "/api/budgets/{team}"): ("read", lambda c, t: c.get(f"/api/budgets/{t.team}"), 404),
    ("put", "/api/budgets/{team}"): ("admin", lambda c, t: c.put(f"/api/budgets/{t.team}", json={"maxGpus": 4}), 200),
    ("post", "/debug/block-loop"): ("admin", lambda c, t: c.post("/debug/block-loop", params={"seconds": 30}), 200),
}


def keyed_routes(server: ApiServer) -> set[tuple[str, str]]:
    """Every (method, path) of the app behind a key: the API and the fault endpoints (the dashboard has its test)."""
    return {
        (method.lower(), route.path)
        for route in iter_route_contexts(server.app.routes)
        if route.path and route.path.startswith(("/api/", "/debug/"))
        for method in route.methods or ()
    }


@pytest.fixture
def teams(api_server_factory: StartServer) -> tuple[ApiServer, dict[str, str], dict[str, Any]]:
    """A server with fault injection (so /debug is walked too), keys of teams alpha and bravo, and one running
    instance per team."""
    server = api_server_factory(fault_injection=True, rate_limit_requests=0)
    keys = {
        "alpha:read": server.new_key("alpha", "read"),
        "alpha:operate": server.new_key("alpha", "operate"),
        "bravo:operate": server.new_key("bravo", "operate"),
    }
    instances = {}
    for team in ("alpha", "bravo"):
        with server.client(key=keys[f"{team}:operate"]) as client:
            instances[team] = create_running(client, name=f"trainer-{team[0]}")  # no team name in it
    return server, keys, instances


def test_every_route_answers_another_teams_ids_and_each_scope_as_specified(
    teams: tuple[ApiServer, dict[str, str], dict[str, Any]],
) -> None:
    server, keys, instances = teams
    assert keyed_routes(server) == set(ROUTES), "a new route: give it a scope and an isolation case in ROUTES"
    bravo = instances["bravo"]
    target = Target(instance=bravo["id"], job=bravo["lastJobId"], name=bravo["name"])
    unknown = Target(instance="0123456789abcdef", job="no-such-job", name="nobody", team="nobody")

    for key_name, held in (("alpha:read", "read"), ("alpha:operate", "operate")):
        with server.client(key=keys[key_name]) as client:
            for (method, path), (needed, call, owner_status) in ROUTES.items():
                answer = call(client, target)
                case = f"{method.upper()} {path} with {key_name}"
                if SCOPE_ORDER.index(held) < SCOPE_ORDER.index(needed):
                    assert answer.status_code == 403, (case, answer.text)
                    assert answer.json()["detail"].startswith(f"this needs the '{needed}' scope"), case
                    continue
                assert answer.status_code == owner_status, (case, answer.text)
                # Nothing of bravo's beyond what the caller sent (a 404 echoes the id it was asked for).
                beyond_request = answer.text.replace(answer.request.url.path, "")  # the problem's `instance` echoes it
                assert "bravo" not in beyond_request and bravo["novitaInstanceId"] not in answer.text, (
                    case,
                    answer.text,
                )
                assert owner_status == 404 or bravo["id"] not in answer.text, (case, answer.text)
                if owner_status == 404:  # exactly what an id that exists nowhere gets: nothing confirms it exists
                    assert answer.headers["content-type"] == PROBLEM
                    missing = call(client, unknown)
                    assert missing.status_code == 404, case
                    assert answer.json()["detail"].replace(target.instance, "?").replace(target.job, "?").replace(
                        target.name, "?"
                    ) == missing.json()["detail"].replace(unknown.instance, "?").replace(unknown.job, "?").replace(
                        unknown.name, "?"
                    ), case

    with server.client() as admin:  # bravo's instance was touched by nobody: still running, never stopped
        seen = admin.get(f"/api/instances/{bravo['id']}").json()
    assert seen["state"] == "running" and seen["team"] == "bravo"
    requested = {"start_requested", "stop_requested", "restart_requested", "delete_requested", "owner_changed"}
    assert not requested & {event["action"] for event in seen["events"]}


def test_lists_show_a_team_only_its_own_instances_and_admins_everything(
    teams: tuple[ApiServer, dict[str, str], dict[str, Any]], fake_novita: FakeNovitaHandle
) -> None:
    server, keys, instances = teams
    fake_novita.preload([{"name": "made-by-hand", "status": "running"}])  # an instance made outside this service
    with server.client() as admin:
        everything = wait_for_list(admin, lambda page: page["total"] == 3)
    assert {item["name"] for item in everything["items"]} == {"trainer-a", "trainer-b", "made-by-hand"}
    external = next(item for item in everything["items"] if not item["managed"])
    assert external["team"] is None

    with server.client(key=keys["alpha:read"]) as alpha:
        own = alpha.get("/api/instances").json()
        running = alpha.get("/api/instances", params={"status": "running"}).json()
        by_name = alpha.get("/api/instances", params={"name": "trainer"}).json()
        others_name = alpha.get("/api/instances", params={"name": "trainer-b"}).json()
        external_name = alpha.get("/api/instances", params={"name": "made-by-hand"}).json()
        stopped = alpha.get("/api/instances", params={"status": "stopped"}).json()
    for page in (own, running, by_name):
        assert [item["id"] for item in page["items"]] == [instances["alpha"]["id"]] and page["total"] == 1
        assert page["items"][0]["team"] == "alpha"
    for page in (others_name, external_name, stopped):
        assert page["items"] == [] and page["total"] == 0


def test_unowned_instances_are_for_admins_until_assigned_and_reassignment_moves_them(
    teams: tuple[ApiServer, dict[str, str], dict[str, Any]], redis_server: RedisServer
) -> None:
    server, keys, _ = teams
    with server.client() as admin:  # a bootstrap admin key has no team: what it creates is unowned
        unowned = create_running(admin, name="orphan")
    assert unowned["team"] is None

    def visible_to(key: str) -> tuple[int, list[str]]:
        with server.client(key=key) as client:
            ids = [item["id"] for item in client.get("/api/instances", params={"name": "orphan"}).json()["items"]]
            return client.get(f"/api/instances/{unowned['id']}").status_code, ids

    assert visible_to(keys["alpha:operate"]) == (404, []) and visible_to(keys["bravo:operate"]) == (404, [])
    with server.client(key=keys["alpha:operate"]) as alpha:
        assert alpha.get(f"/api/jobs/{unowned['lastJobId']}").status_code == 404

    with server.client() as admin:
        given = admin.put(f"/api/instances/{unowned['id']}/owner", json={"team": "alpha"})
        unknown = admin.put("/api/instances/0123456789abcdef/owner", json={"team": "alpha"})
        invalid = admin.put(f"/api/instances/{unowned['id']}/owner", json={"team": "Alpha Team"})
    assert given.status_code == 200 and given.json()["team"] == "alpha"
    assert given.json()["events"][-1]["action"] == "owner_changed"
    assert unknown.status_code == 404
    assert invalid.status_code == 422 and invalid.json()["errors"][0]["field"] == "body.team"
    assert visible_to(keys["alpha:read"]) == (200, [unowned["id"]])
    assert visible_to(keys["bravo:operate"]) == (404, [])
    with server.client(key=keys["alpha:read"]) as alpha:
        assert alpha.get(f"/api/jobs/{unowned['lastJobId']}").status_code == 200

    with server.client() as admin:
        assert admin.put(f"/api/instances/{unowned['id']}/owner", json={"team": "bravo"}).status_code == 200
    assert visible_to(keys["alpha:read"]) == (404, [])
    assert visible_to(keys["bravo:operate"]) == (200, [unowned["id"]])

    # A record written before records had owners (no `team` at all) reads as unowned: admins only.
    with redis.Redis.from_url(redis_server.url) as valkey:
        raw = valkey.get(f"ngpu:instance:{unowned['id']}")
        assert raw is not None
        valkey.set(f"ngpu:instance:{unowned['id']}", raw.replace(b'"team":"bravo",', b""))
    assert b'"team"' not in (redis.Redis.from_url(redis_server.url).get(f"ngpu:instance:{unowned['id']}") or b"")
    with server.client(key=keys["bravo:operate"]) as bravo:
        assert bravo.get(f"/api/instances/{unowned['id']}").status_code == 404


def test_idempotency_keys_are_per_team(teams: tuple[ApiServer, dict[str, str], dict[str, Any]]) -> None:
    server, keys, _ = teams
    accepted = {}
    for team in ("alpha", "bravo"):
        with server.client(key=keys[f"{team}:operate"]) as client:
            answer = client.post(
                "/api/instances", json=create_body(name="same"), headers={"Idempotency-Key": "nightly-42"}
            )
            assert answer.status_code == 202
            accepted[team] = answer.json()["instance"]
    assert accepted["alpha"]["id"] != accepted["bravo"]["id"]
    assert (accepted["alpha"]["team"], accepted["bravo"]["team"]) == ("alpha", "bravo")


async def test_jobs_and_dead_letters_are_scoped_to_the_team(
    kit: QueueKit,  # first: it empties Valkey as it is set up, which must happen before `teams` fills it
    teams: tuple[ApiServer, dict[str, str], dict[str, Any]],
) -> None:
    server, keys, instances = teams

    async def always_fails(context: JobContext) -> dict[str, Any]:
        raise ValueError("handler bug")

    server.container.worker.register("test.fails", always_fails)
    queue = await kit.queue()
    dead = {
        team: await queue.enqueue("test.fails", {"instance_id": instances[team]["id"]}) for team in ("alpha", "bravo")
    }
    orphan = await queue.enqueue("test.fails", {})  # a job of no instance: admins only

    async def all_dead() -> bool:
        return {job.id for job in await queue.dead_letters(100)} == {dead["alpha"].id, dead["bravo"].id, orphan.id}

    await wait_for(all_dead, timeout=20, what="three dead letters")
    with server.client(key=keys["alpha:read"]) as alpha:
        alpha_answer = alpha.get("/api/jobs/dead-letters")
        assert alpha_answer.status_code == 200, alpha_answer.text
        alpha_dead = [job["id"] for job in alpha_answer.json()["items"]]
        own = alpha.get(f"/api/jobs/{dead['alpha'].id}")
        others = alpha.get(f"/api/jobs/{dead['bravo'].id}")
        no_instance = alpha.get(f"/api/jobs/{orphan.id}")
    with server.client(key=keys["alpha:operate"]) as alpha:
        requeue_other = alpha.post(f"/api/jobs/{dead['bravo'].id}/requeue")
    with server.client() as admin:
        admin_answer = admin.get("/api/jobs/dead-letters")
        assert admin_answer.status_code == 200, admin_answer.text
        admin_dead = {job["id"] for job in admin_answer.json()["items"]}
    assert alpha_dead == [dead["alpha"].id]
    assert own.status_code == 200 and others.status_code == 404 and no_instance.status_code == 404
    assert requeue_other.status_code == 404
    assert (await queue.get(dead["bravo"].id)).state == "dead"  # type: ignore[union-attr]  # untouched
    assert admin_dead == {dead["alpha"].id, dead["bravo"].id, orphan.id}


def test_stop_all_and_by_name_routes_act_only_on_the_teams_instances(
    teams: tuple[ApiServer, dict[str, str], dict[str, Any]],
) -> None:
    server, keys, instances = teams
    with server.client(key=keys["alpha:operate"]) as alpha:
        dry = alpha.post("/api/instances/stop-all", json={}).json()
        by_name = alpha.post("/api/instances/stop", json={"instanceName": "trainer-a"})
    assert [item["instanceId"] for item in dry["items"]] == [instances["alpha"]["id"]]
    assert by_name.status_code == 202 and by_name.json()["instance"]["id"] == instances["alpha"]["id"]
