"""No operation answers a status its OpenAPI spec does not declare.

The fuzz test checks answers against what the spec declares, so an undeclared error class it never provokes goes
unnoticed. Here every operation of the spec is driven into every error class the app can produce (no key, its rate
limit, unknown ids, bad input, an oversized or undecodable body, a state conflict, Novita failing, timing out,
throttling or answering bare 404s, Valkey down) and each status it answers must be declared for it, with the
Problem body for errors. The operation table must cover the spec exactly, so a new route cannot slip past.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import redis

from app.core.cache import CACHE_PREFIX
from tests.app.conftest import ApiServer, StartServer
from tests.app.instances_client import create_body, create_running
from tests.fakes.fixtures import FakeNovitaHandle
from tests.fixtures_redis import RedisServer

UNKNOWN_INSTANCE = "0123456789abcdef"
UNKNOWN_JOB = "no-such-job"
UNKNOWN_KEY = "0123456789abcdef"


@dataclass
class Ids:
    """The ids a scenario uses: real ones, or unknown ones."""

    instance: str
    job: str
    name: str = "trainer"
    key: str = UNKNOWN_KEY  # the id of an API key


Call = Callable[[httpx.Client, Ids, bool], httpx.Response]  # (client, ids, bad input?) -> answer


def _body(bad: bool, **fields: Any) -> dict[str, Any]:
    return {"gpuNum": 99} if bad else create_body(**fields)


OPERATIONS: dict[tuple[str, str], Call] = {
    ("get", "/livez"): lambda c, ids, bad: c.get("/livez"),
    ("get", "/readyz"): lambda c, ids, bad: c.get("/readyz"),
    ("get", "/health"): lambda c, ids, bad: c.get("/health"),
    ("get", "/metrics"): lambda c, ids, bad: c.get("/metrics"),
    ("get", "/api/products"): lambda c, ids, bad: c.get("/api/products", params={"gpuNum": 0} if bad else {}),
    ("get", "/api/regions"): lambda c, ids, bad: c.get("/api/regions"),
    ("post", "/api/instances"): lambda c, ids, bad: c.post("/api/instances", json=_body(bad, name="other")),
    ("get", "/api/instances"): lambda c, ids, bad: c.get("/api/instances", params={"pageSize": 0} if bad else {}),
    ("get", "/api/instances/{instance_id}"): lambda c, ids, bad: c.get(
        f"/api/instances/{'bad id!' if bad else ids.instance}"
    ),
    ("get", "/api/instances/{instance_id}/jobs"): lambda c, ids, bad: c.get(
        f"/api/instances/{ids.instance}/jobs", params={"limit": 0} if bad else {}
    ),
    ("post", "/api/instances/{instance_id}/start"): lambda c, ids, bad: c.post(
        f"/api/instances/{'bad id!' if bad else ids.instance}/start"
    ),
    ("post", "/api/instances/{instance_id}/stop"): lambda c, ids, bad: c.post(
        f"/api/instances/{'bad id!' if bad else ids.instance}/stop"
    ),
    ("post", "/api/instances/{instance_id}/restart"): lambda c, ids, bad: c.post(
        f"/api/instances/{'bad id!' if bad else ids.instance}/restart"
    ),
    ("post", "/api/instances/{instance_id}/heartbeat"): lambda c, ids, bad: c.post(
        f"/api/instances/{'bad id!' if bad else ids.instance}/heartbeat"
    ),
    ("delete", "/api/instances/{instance_id}"): lambda c, ids, bad: c.delete(
        f"/api/instances/{'bad id!' if bad else ids.instance}"
    ),
    ("get", "/api/jobs/{job_id}"): lambda c, ids, bad: c.get(f"/api/jobs/{'bad id!' if bad else ids.job}"),
    ("get", "/api/jobs/dead-letters"): lambda c, ids, bad: c.get(
        "/api/jobs/dead-letters", params={"limit": 0} if bad else {}
    ),
    ("post", "/api/jobs/{job_id}/cancel"): lambda c, ids, bad: c.post(
        f"/api/jobs/{'bad id!' if bad else ids.job}/cancel"
    ),
    ("post", "/api/jobs/{job_id}/requeue"): lambda c, ids, bad: c.post(
        f"/api/jobs/{'bad id!' if bad else ids.job}/requeue"
    ),
    ("get", "/api/costs"): lambda c, ids, bad: c.get(
        "/api/costs", params={"groupBy": "cluster"} if bad else {"groupBy": "day", "from": "2026-01-01"}
    ),
    ("get", "/api/budgets"): lambda c, ids, bad: c.get("/api/budgets"),
    ("get", "/api/budgets/{team}"): lambda c, ids, bad: c.get(f"/api/budgets/{'bad team!' if bad else 'ml'}"),
    ("put", "/api/budgets/{team}"): lambda c, ids, bad: c.put(
        "/api/budgets/ml", json={"maxGpus": -1} if bad else {"maxGpus": 64, "maxSpendPerMonth": "5000"}
    ),
    # The original service's routes (app/compat).
    ("post", "/api/instances/start"): lambda c, ids, bad: c.post(
        "/api/instances/start", json={"instanceName": "a b" if bad else ids.name}
    ),
    ("post", "/api/instances/stop"): lambda c, ids, bad: c.post(
        "/api/instances/stop", json={"instanceName": "a b" if bad else ids.name}
    ),
    ("post", "/api/instances/delete"): lambda c, ids, bad: c.post(
        "/api/instances/delete", json={"instanceName": "a b" if bad else ids.name}
    ),
    ("post", "/api/instances/stop-all"): lambda c, ids, bad: c.post(
        "/api/instances/stop-all", json={"dryRun": False} if bad else {"dryRun": True}
    ),
    ("put", "/api/instances/{instance_id}/last-used"): lambda c, ids, bad: c.put(
        f"/api/instances/{ids.instance}/last-used", json={"lastUsedAt": "soon" if bad else None}
    ),
    # Teams and keys (app/access).
    ("put", "/api/instances/{instance_id}/owner"): lambda c, ids, bad: c.put(
        f"/api/instances/{ids.instance}/owner", json={"team": "Not A Team" if bad else "ml"}
    ),
    ("post", "/api/keys"): lambda c, ids, bad: c.post(
        "/api/keys",
        json={"name": f"k-{secrets.token_hex(4)}", "team": "ml", "scope": "root" if bad else "read"},
    ),
    ("get", "/api/keys"): lambda c, ids, bad: c.get("/api/keys"),
    ("delete", "/api/keys/{key_id}"): lambda c, ids, bad: c.delete(f"/api/keys/{'bad id!' if bad else ids.key}"),
}


class StatusLedger:
    """Every (operation, status) observed, with the scenario that produced it; checks them against the spec."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.seen: dict[tuple[str, str, int], str] = {}
        self.wrong_bodies: list[str] = []

    def run(
        self,
        server: ApiServer,
        scenario: str,
        ids: Ids,
        *,
        authenticated: bool = True,
        bad: bool = False,
        only: Callable[[tuple[str, str]], bool] = lambda op: True,
        key: str | None = None,
    ) -> dict[tuple[str, str], int]:
        answers = {}
        with server.client(authenticated=authenticated, timeout=30.0, key=key) as client:
            for op, call in OPERATIONS.items():
                if only(op):
                    response = call(client, ids, bad)
                    self.note(op, response, scenario)
                    answers[op] = response.status_code
        return answers

    def note(self, op: tuple[str, str], response: httpx.Response, scenario: str) -> None:
        self.seen.setdefault((*op, response.status_code), scenario)
        declared = self.spec["paths"][op[1]][op[0]]["responses"].get(str(response.status_code), {})
        media_type = response.headers.get("content-type", "").split(";")[0]
        bodiless = not response.content and "content" not in declared  # a 204, declared without a body
        if declared and not bodiless and media_type not in declared.get("content", {}):
            self.wrong_bodies.append(
                f"{op[0].upper()} {op[1]} answered {response.status_code} as {media_type} ({scenario})"
            )

    def undeclared(self) -> list[str]:
        return [
            f"{method.upper()} {path} answered {status} ({scenario})"
            for (method, path, status), scenario in sorted(self.seen.items())
            if str(status) not in self.spec["paths"][path][method]["responses"]
        ]


def forget_cached_novita_answers(redis_server: RedisServer) -> None:
    with redis.Redis.from_url(redis_server.url) as valkey:
        for key in valkey.scan_iter(match=CACHE_PREFIX + "*"):
            valkey.delete(key)


def has_body(spec: dict[str, Any]) -> Callable[[tuple[str, str]], bool]:
    return lambda op: "requestBody" in spec["paths"][op[1]][op[0]]


def test_the_operation_table_covers_the_spec_exactly(api_server: ApiServer) -> None:
    spec = httpx.get(f"{api_server.base_url}/openapi.json").json()
    in_spec = {(method, path) for path, operations in spec["paths"].items() for method in operations}
    assert in_spec == set(OPERATIONS)


def test_every_status_an_operation_answers_is_declared(
    api_server_factory: StartServer, fake_novita: FakeNovitaHandle, redis_server: RedisServer
) -> None:
    # A breaker that never opens, so that each Novita fault reaches the operations as itself (its 503 is declared
    # and provoked by the generated-client test).
    server = api_server_factory(
        rate_limit_requests=0, novita_timeout_seconds=0.3, novita_breaker_failure_threshold=10_000
    )
    spec = httpx.get(f"{server.base_url}/openapi.json").json()
    ledger = StatusLedger(spec)
    with server.client() as client:
        running = create_running(client)
    with server.client() as client:
        spare_key = client.post("/api/keys", json={"name": "spare", "team": "ml", "scope": "read"}).json()["id"]
    real = Ids(instance=running["id"], job=running["lastJobId"], key=spare_key)
    unknown = Ids(instance=UNKNOWN_INSTANCE, job=UNKNOWN_JOB, name="nobody")

    ledger.run(server, "a read-only key of another team", real, key=server.new_key("other", "read"))
    ledger.run(server, "valid requests", real)
    ledger.run(server, "no API key", real, authenticated=False)
    ledger.run(server, "unknown ids", unknown)
    ledger.run(server, "invalid parameters or body", real, bad=True)
    with server.client() as client:
        for op in filter(has_body(spec), OPERATIONS):
            method, path = op
            for scenario, content in [("invalid JSON", b"{not json"), ("not UTF-8", b"O\x06\xfe\x1d\x14\xff")]:
                ledger.note(
                    op,
                    client.request(method, path, content=content, headers={"content-type": "application/json"}),
                    scenario,
                )
            ledger.note(
                op,
                client.request(method, path, content=b"x" * (2 << 20), headers={"content-type": "application/json"}),
                "oversized body",
            )
    ledger.run(server, "state conflicts (the instance is being deleted)", real)  # the first run queued a delete
    novita_faults: list[tuple[str, dict[str, Any]]] = [
        ("Novita failing", {"kind": "server_error"}),
        ("Novita timing out", {"kind": "timeout", "delaySeconds": 1.0}),
        ("Novita throttling", {"kind": "rate_limit", "retryAfter": 0}),
        ("Novita answering bare 404s", {"kind": "bare_404"}),
        ("Novita refusing our key", {"kind": "error", "status": 400, "reason": "INVALID_USER_TOKEN"}),
    ]
    for scenario, fault in novita_faults:
        fake_novita.clear_faults()
        forget_cached_novita_answers(redis_server)  # so that every operation that reads Novita calls it now
        fake_novita.add_faults({"path": "*", "count": None, **fault})
        ledger.run(server, scenario, real)
    fake_novita.clear_faults()
    redis_server.stop()
    try:
        ledger.run(server, "Valkey down", real)
    finally:
        redis_server.start()

    limited = api_server_factory(rate_limit_requests=1, rate_limit_window_seconds=60)
    ledger.run(limited, "rate limit used up", real)

    assert ledger.undeclared() == []
    assert ledger.wrong_bodies == []
    statuses = {status for (_, _, status) in ledger.seen}
    # The scenarios did provoke each error class (else this test would prove nothing).
    assert statuses >= {200, 201, 202, 204, 400, 401, 403, 404, 409, 413, 422, 429, 502, 503, 504}, sorted(statuses)


def test_every_protected_operation_declares_its_security_and_shared_errors(api_server: ApiServer) -> None:
    spec = httpx.get(f"{api_server.base_url}/openapi.json").json()
    protected = [
        (path, method, operation)
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if path.startswith("/api/")
    ]
    assert len(protected) == len([op for op in OPERATIONS if op[1].startswith("/api/")])
    for path, method, operation in protected:
        assert operation["security"] == [{"ApiKeyHeader": []}, {"BearerToken": []}], (method, path)
        for status in ("401", "429", "503"):
            response = operation["responses"][status]
            assert response["content"] == {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            }, (method, path, status)
            if status != "401":
                assert "Retry-After" in response["headers"], (method, path, status)
        if operation["responses"].get("202"):
            assert "Location" in operation["responses"]["202"]["headers"], (method, path)


def test_health_answers_and_enums_are_described(api_server: ApiServer) -> None:
    spec = httpx.get(f"{api_server.base_url}/openapi.json").json()
    schemas, paths = spec["components"]["schemas"], spec["paths"]
    for path in ("/readyz", "/health"):
        assert {"200", "503"} <= set(paths[path]["get"]["responses"]), path
    assert paths["/api/instances"]["post"]["responses"].get("404") is None  # create never looks an id up
    assert schemas["JobView"]["properties"]["state"]["enum"] == [
        "queued",
        "scheduled",
        "running",
        "succeeded",
        "failed",
        "dead",
        "cancelled",
    ]
    known_kinds, any_kind = schemas["JobView"]["properties"]["kind"]["anyOf"]
    assert "instance.create" in known_kinds["enum"] and any_kind == {"type": "string"}
    assert set(schemas["Health"]["required"]) >= {"status", "services", "version", "uptimeSeconds", "queue"}
