"""The instances API end to end over real HTTP: real redis-server, fake Novita, the app's own worker."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.app.conftest import ApiServer, StartServer
from tests.app.instances_client import (
    CREATE_PATH,
    create_body,
    create_instance,
    create_running,
    run_action,
    wait_for_job,
    wait_for_list,
    wait_until_ready,
)
from tests.fakes.fixtures import FakeNovitaHandle
from tests.fixtures_redis import RedisServer


def test_create_answers_202_with_the_record_and_a_durable_job(
    client: httpx.Client, api_server: ApiServer, fake_novita: FakeNovitaHandle
) -> None:
    fake_novita.set_step_seconds(None)  # hold the fake still so the job is observed before it finishes
    response = client.post("/api/instances", json=create_body(name="notebook-1"))

    assert response.status_code == 202, response.text
    body = response.json()
    instance, job_id = body["instance"], body["jobId"]
    assert instance["state"] == "pending" and instance["managed"] is True
    assert instance["name"] == "notebook-1"
    assert instance["upstreamName"] == f"notebook-1-{instance['id']}"
    assert instance["envKeys"] == ["MODE"] and instance["ports"] == [{"port": 8888, "type": "http"}]
    assert response.headers["location"] == f"/api/jobs/{job_id}"
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["kind"] == "instance.create" and job["state"] in {"queued", "running", "scheduled"}


def test_create_goes_through_to_running(client: httpx.Client, fake_novita: FakeNovitaHandle) -> None:
    accepted = create_instance(client, name="runner")

    job = wait_for_job(client, accepted["jobId"])

    assert job["state"] == "succeeded", job
    instance = client.get(f"/api/instances/{accepted['instance']['id']}").json()
    assert instance["state"] == "running" and instance["novitaStatus"] == "running"
    upstream = fake_novita.instances(name=instance["upstreamName"])
    assert len(upstream) == 1 and upstream[0]["id"] == instance["novitaInstanceId"]
    assert upstream[0]["productId"] == "4090-us-ca-6"  # the cheapest available RTX 4090
    assert upstream[0]["envs"] == [{"key": "MODE", "value": "train"}]
    assert instance["clusterId"] == "us-ca-6"
    assert instance["endpoints"] and instance["endpoints"][0]["port"] == 8888
    assert [e["action"] for e in instance["events"]][:2] == ["create_requested", "created"]
    assert job["result"]["state"] == "running"
    assert fake_novita.call_count("POST", CREATE_PATH) == 1


def test_product_by_id_in_a_chosen_cluster(client: httpx.Client, fake_novita: FakeNovitaHandle) -> None:
    instance = create_running(
        client, productName=None, productId="4090-as-sgp-2", clusterIds=["as-sgp-2"], billingMode="spot"
    )

    upstream = fake_novita.instances(name=instance["upstreamName"])[0]
    assert upstream["productId"] == "4090-as-sgp-2" and upstream["clusterId"] == "as-sgp-2"
    assert upstream["billingMode"] == "spot"


def test_template_supplies_image_ports_and_envs(client: httpx.Client, fake_novita: FakeNovitaHandle) -> None:
    body = create_body(templateId="tpl-pytorch", ports=[], envs=[{"key": "EXTRA", "value": "1"}])
    del body["imageUrl"]
    accepted = client.post("/api/instances", json=body).json()
    assert wait_for_job(client, accepted["jobId"])["state"] == "succeeded"

    upstream = fake_novita.instances(name=accepted["instance"]["upstreamName"])[0]
    assert upstream["imageUrl"] == "docker.io/pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime"
    assert {p["port"] for p in upstream["portMappings"]} == {8888, 22}
    assert {e["key"] for e in upstream["envs"]} == {"JUPYTER_TOKEN", "EXTRA"}


def test_insufficient_resource_falls_back_to_the_next_cluster(
    client: httpx.Client, fake_novita: FakeNovitaHandle
) -> None:
    fake_novita.add_faults({"path": CREATE_PATH, "kind": "insufficient_resource", "count": 1})

    instance = create_running(client, clusterIds=["us-ca-6", "as-sgp-2"])

    assert instance["clusterId"] == "as-sgp-2"
    upstream = fake_novita.instances(name=instance["upstreamName"])
    assert len(upstream) == 1 and upstream[0]["productId"] == "4090-as-sgp-2"
    events = [(e["action"], e["detail"]) for e in instance["events"]]
    assert ("insufficient_resource", "us-ca-6") in events
    assert fake_novita.call_count("POST", CREATE_PATH) == 2


def test_no_capacity_anywhere_fails_the_instance_and_the_job(
    client: httpx.Client, fake_novita: FakeNovitaHandle
) -> None:
    fake_novita.add_faults({"path": CREATE_PATH, "kind": "insufficient_resource", "count": None})

    accepted = create_instance(client, clusterIds=["us-ca-6", "as-sgp-2", "eu-de-1"])
    job = wait_for_job(client, accepted["jobId"])

    assert job["state"] == "failed"
    assert "no capacity" in job["lastError"] and "eu-de-1: no available" in job["lastError"]
    instance = client.get(f"/api/instances/{accepted['instance']['id']}").json()
    assert instance["state"] == "failed" and "no capacity" in instance["statusError"]
    assert fake_novita.instances() == []
    assert fake_novita.call_count("POST", CREATE_PATH) == 2  # eu-de-1 has no deployable 4090: not even tried


def test_lost_create_response_makes_exactly_one_instance(client: httpx.Client, fake_novita: FakeNovitaHandle) -> None:
    fake_novita.add_faults({"path": CREATE_PATH, "kind": "lost_response", "count": 1})

    instance = create_running(client, name="lost")

    assert len(fake_novita.instances(name=instance["upstreamName"])) == 1
    assert len(fake_novita.instances()) == 1
    assert fake_novita.call_count("POST", CREATE_PATH) == 1  # found by name instead of created again


def test_novita_outage_longer_than_the_job_retries_delays_the_create_but_loses_nothing(
    api_server_factory: StartServer, fake_novita: FakeNovitaHandle
) -> None:
    # Two job attempts with sub-second backoff would be spent (and the create dead-lettered) within the outage.
    server = api_server_factory(job_max_attempts=2, novita_breaker_reset_seconds=0.3)
    fake_novita.add_faults({"path": "*", "kind": "server_error", "status": 503, "count": None})
    with server.client() as client:
        accepted = create_instance(client, name="outage")
        time.sleep(3.0)
        assert client.get(f"/api/jobs/{accepted['jobId']}").json()["state"] not in ("dead", "failed")
        fake_novita.clear_faults()
        job = wait_for_job(client, accepted["jobId"])

    assert job["state"] == "succeeded", job
    assert len(fake_novita.instances()) == 1


def test_reading_an_instance_calls_novita_once_per_cache_ttl(
    client: httpx.Client, fake_novita: FakeNovitaHandle
) -> None:
    instance = create_running(client, name="cached")
    wait_until_ready(client, instance["id"])  # the readiness job reads Novita too; let it finish first
    calls_before = fake_novita.call_count("GET", "/gpu/instance")

    views = [client.get(f"/api/instances/{instance['id']}").json() for _ in range(20)]

    assert {view["novitaStatus"] for view in views} == {"running"}
    assert fake_novita.call_count("GET", "/gpu/instance") == calls_before  # the 10 s TTL covers all 20 reads


def test_status_error_marks_the_instance_failed(client: httpx.Client) -> None:
    accepted = create_instance(client, imageUrl="docker.io/team/does-not-exist:1")

    job = wait_for_job(client, accepted["jobId"])

    assert job["state"] == "failed" and "failed to pull image" in job["lastError"]
    instance = client.get(f"/api/instances/{accepted['instance']['id']}").json()
    assert instance["state"] == "failed" and "failed to pull image" in instance["statusError"]


def test_provisioning_timeout_fails_the_job(api_server_factory: StartServer, fake_novita: FakeNovitaHandle) -> None:
    server = api_server_factory(instance_provisioning_timeout_seconds=1.0, instance_poll_interval_seconds=0.1)
    fake_novita.set_step_seconds(None)  # stays in toCreate
    with server.client() as client:
        accepted = create_instance(client)
        job = wait_for_job(client, accepted["jobId"])
        instance = client.get(f"/api/instances/{accepted['instance']['id']}").json()

    assert job["state"] == "failed" and "did not finish within 1 s" in job["lastError"]
    assert instance["state"] == "failed"


def test_lifecycle_stop_start_restart_delete(client: httpx.Client, fake_novita: FakeNovitaHandle) -> None:
    instance = create_running(client)
    instance_id, novita_id = instance["id"], instance["novitaInstanceId"]

    stop = run_action(client, instance_id, "stop")
    assert stop["state"] == "succeeded" and stop["result"]["novitaStatus"] == "exited"
    assert client.get(f"/api/instances/{instance_id}").json()["state"] == "stopped"

    start = run_action(client, instance_id, "start")
    assert start["state"] == "succeeded"
    assert client.get(f"/api/instances/{instance_id}").json()["state"] == "running"

    restart = run_action(client, instance_id, "restart")
    assert restart["state"] == "succeeded" and restart["result"]["novitaStatus"] == "running"

    delete = run_action(client, instance_id, "delete")
    assert delete["state"] == "succeeded"
    assert client.get(f"/api/instances/{instance_id}").json()["state"] == "deleted"
    assert fake_novita.instances(name=instance["upstreamName"])[0]["status"] == "removed"
    calls = fake_novita.calls()
    for action in ("stop", "start", "restart", "delete"):
        assert calls[f"POST /gpu/instance/{action}"] == 1, calls
    assert novita_id


def test_actions_invalid_in_the_current_state_are_409(client: httpx.Client) -> None:
    instance = create_running(client)

    start = client.post(f"/api/instances/{instance['id']}/start")

    assert start.status_code == 409
    assert "cannot start an instance that is running" in start.json()["detail"]
    stop = client.post(f"/api/instances/{instance['id']}/stop")
    assert stop.status_code == 202
    assert client.post(f"/api/instances/{instance['id']}/stop").status_code == 409  # already stopping
    wait_for_job(client, stop.json()["jobId"])


def test_stop_already_in_effect_upstream_is_success_without_a_call(
    client: httpx.Client, fake_novita: FakeNovitaHandle
) -> None:
    instance = create_running(client)
    fake_novita.set_state(instance["novitaInstanceId"], status="exited")  # stopped behind our back

    job = run_action(client, instance["id"], "stop")

    assert job["state"] == "succeeded"
    assert fake_novita.call_count("POST", "/gpu/instance/stop") == 0


def test_delete_of_an_instance_already_gone_upstream_succeeds(
    client: httpx.Client, fake_novita: FakeNovitaHandle
) -> None:
    instance = create_running(client)
    fake_novita.vanish(instance["novitaInstanceId"])

    job = run_action(client, instance["id"], "delete")

    assert job["state"] == "succeeded"
    assert client.get(f"/api/instances/{instance['id']}").json()["state"] == "deleted"


def test_delete_before_creation_creates_nothing(
    client: httpx.Client, api_server: ApiServer, fake_novita: FakeNovitaHandle
) -> None:
    fake_novita.add_faults({"path": "/gpu/instances", "kind": "slow", "delaySeconds": 0.5, "count": 1})
    accepted = create_instance(client)
    delete = client.delete(f"/api/instances/{accepted['instance']['id']}")
    assert delete.status_code == 202

    wait_for_job(client, delete.json()["jobId"])
    wait_for_job(client, accepted["jobId"])

    assert client.get(f"/api/instances/{accepted['instance']['id']}").json()["state"] == "deleted"
    live = [i for i in fake_novita.instances() if i["status"] not in {"toRemove", "removing", "removed"}]
    assert live == []


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/api/instances/0123456789abcdef"),
        ("POST", "/api/instances/0123456789abcdef/start"),
        ("POST", "/api/instances/0123456789abcdef/stop"),
        ("POST", "/api/instances/0123456789abcdef/restart"),
        ("DELETE", "/api/instances/0123456789abcdef"),
    ],
)
def test_unknown_instance_is_404(client: httpx.Client, method: str, path: str) -> None:
    response = client.request(method, path)

    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "0123456789abcdef" in response.json()["detail"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": "bad name!"}, "body.name"),
        ({"name": "x" * 64}, "body.name"),
        ({"gpuNum": 9}, "body.gpuNum"),
        ({"gpuNum": "2"}, "body.gpuNum"),
        ({"rootfsSize": 5}, "body.rootfsSize"),
        ({"productId": "4090-us-ca-6"}, "body.productId"),  # both a name and an id
        ({"productName": None}, "body.productId"),  # neither
        ({"ports": [{"port": 2222, "type": "tcp"}]}, "body.ports.0.port"),
        ({"ports": [{"port": 80}, {"port": 80}]}, "body.ports"),
        ({"envs": [{"key": "A", "value": "1"}, {"key": "A", "value": "2"}]}, "body.envs"),
        ({"envs": [{"key": "1BAD", "value": ""}]}, "body.envs.0.key"),
        ({"billingMode": "hourly"}, "body.billingMode"),
        ({"billingMode": "monthly"}, "body.months"),
        ({"months": 3}, "body.months"),
        ({"clusterIds": ["us-ca-6", "us-ca-6"]}, "body.clusterIds"),
        ({"imageUrl": None}, "body.imageUrl"),
        ({"surprise": True}, "body.surprise"),
    ],
)
def test_invalid_create_bodies_are_422_naming_the_field(
    client: httpx.Client, fake_novita: FakeNovitaHandle, change: dict, field: str
) -> None:
    body = create_body(**change)
    body = {k: v for k, v in body.items() if v is not None}

    response = client.post("/api/instances", json=body)

    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert field in [e["field"] for e in response.json()["errors"]]
    assert fake_novita.instances() == []


def test_malformed_json_is_422_not_500(client: httpx.Client) -> None:
    response = client.post("/api/instances", content=b"{not json", headers={"content-type": "application/json"})

    assert response.status_code == 422


def test_every_instance_route_needs_the_api_key(api_server: ApiServer) -> None:
    with api_server.client(authenticated=False) as anonymous:
        answers = [
            anonymous.post("/api/instances", json=create_body()),
            anonymous.get("/api/instances"),
            anonymous.get("/api/instances/0123456789abcdef"),
            anonymous.post("/api/instances/0123456789abcdef/stop"),
            anonymous.delete("/api/instances/0123456789abcdef"),
        ]

    assert [a.status_code for a in answers] == [401] * len(answers)


def test_list_merges_novita_filters_and_paginates(
    client: httpx.Client, api_server: ApiServer, fake_novita: FakeNovitaHandle
) -> None:
    running = [create_running(client, name=f"worker-{i}") for i in range(3)]
    run_action(client, running[0]["id"], "stop")
    external_id = httpx.post(
        f"{fake_novita.base_url}{CREATE_PATH}",
        headers={"Authorization": f"Bearer {fake_novita.api_key}"},
        json={
            "name": "made-elsewhere",
            "productId": "5090-as-sgp-2",
            "gpuNum": 1,
            "rootfsSize": 20,
            "imageUrl": "ubuntu",
            "kind": "gpu",
        },
    ).json()["id"]

    everything = wait_for_list(client, lambda page: page["total"] == 4)  # the next background sync adds it
    assert everything["novitaSynced"] is True
    external = [i for i in everything["items"] if not i["managed"]]
    assert len(external) == 1 and external[0]["novitaInstanceId"] == external_id and external[0]["id"] is None

    only_running = client.get("/api/instances", params={"status": "running"}).json()
    assert {i["id"] for i in only_running["items"]} == {running[1]["id"], running[2]["id"]}
    stopped = client.get("/api/instances", params={"status": "stopped"}).json()
    assert [i["id"] for i in stopped["items"]] == [running[0]["id"]]

    by_name = client.get("/api/instances", params={"name": "WORKER-2"}).json()
    assert [i["id"] for i in by_name["items"]] == [running[2]["id"]]

    first_page = client.get("/api/instances", params={"page": 1, "pageSize": 3}).json()
    second_page = client.get("/api/instances", params={"page": 2, "pageSize": 3}).json()
    assert len(first_page["items"]) == 3 and len(second_page["items"]) == 1 and second_page["total"] == 4
    seen = {i["novitaInstanceId"] for i in first_page["items"] + second_page["items"]}
    assert len(seen) == 4

    bad = client.get("/api/instances", params={"status": "sleeping", "pageSize": 1000})
    assert bad.status_code == 422
    assert {e["field"] for e in bad.json()["errors"]} == {"query.status", "query.pageSize"}


def test_list_serves_local_records_when_novita_is_down(client: httpx.Client, fake_novita: FakeNovitaHandle) -> None:
    instance = create_running(client)
    fake_novita.add_faults({"path": "/gpu/instances", "kind": "server_error", "count": None})

    page = wait_for_list(client, lambda page: page["novitaSynced"] is False)  # the next sync fails

    assert [i["id"] for i in page["items"]] == [instance["id"]]
    assert page["items"][0]["state"] == "running" and page["items"][0]["syncedAt"] is not None


def _everything_in_valkey(redis_server: RedisServer) -> str:
    """Every value of every key, as one string (to search for a secret)."""
    parts: list[str] = []
    with redis_server.client() as valkey:
        for key in valkey.scan_iter():
            kind = valkey.type(key)
            if kind == "string":
                parts.append(valkey.get(key) or "")
            elif kind == "hash":
                parts.append(repr(valkey.hgetall(key)))
            elif kind == "zset":
                parts.append(repr(valkey.zrange(key, 0, -1)))
            elif kind == "stream":
                parts.append(repr(valkey.xrange(key)))
            else:
                parts.append(repr(kind) + key)
    return "\n".join(parts)


def test_no_secret_ever_appears_in_answers_or_valkey(
    client: httpx.Client, fake_novita: FakeNovitaHandle, redis_server: RedisServer
) -> None:
    secret = "s3cr3t-token-value-4711"
    accepted = client.post(
        "/api/instances", json=create_body(envs=[{"key": "HF_TOKEN", "value": secret, "secret": True}])
    )
    job = wait_for_job(client, accepted.json()["jobId"])
    instance_id = accepted.json()["instance"]["id"]
    wait_until_ready(client, instance_id)  # readiness drops the cached list when it finishes: let it finish first
    upstream = fake_novita.instances(name=accepted.json()["instance"]["upstreamName"])[0]
    assert {"key": "HF_TOKEN", "value": secret} in upstream["envs"]  # Novita got it

    answers = [
        accepted.text,
        client.get(f"/api/instances/{instance_id}").text,
        client.get("/api/instances").text,
        client.get(f"/api/jobs/{job['id']}").text,
    ]
    for text in answers:
        assert secret not in text
        assert f"web-pass-{upstream['id']}" not in text  # the fake's web-terminal password
        assert fake_novita.api_key not in text
    with redis_server.client() as valkey:  # the cached Novita view of the instance is among what is searched
        assert valkey.exists(f"ngpu:cache:instances:novita:{upstream['id']}")
    stored = _everything_in_valkey(redis_server)
    assert "HF_TOKEN" in stored  # the record keeps the env key
    assert secret not in stored  # the create spec is gone, the cached Novita view holds no env values


EXPECTED_STATES = {
    "toCreate": "provisioning",
    "creating": "provisioning",
    "pulling": "provisioning",
    "running": "running",
    "toStart": "starting",
    "starting": "starting",
    "toStop": "stopping",
    "stopping": "stopping",
    "exited": "stopped",
    "toRestart": "restarting",
    "restarting": "restarting",
    "toRemove": "deleting",
    "removing": "deleting",
    "removed": "deleted",
    "toReset": "updating",
    "resetting": "updating",
    "migrating": "updating",
    "freezing": "frozen",
}


def test_every_novita_status_maps_to_a_documented_state(
    api_server_factory: StartServer, fake_novita: FakeNovitaHandle, redis_server: RedisServer
) -> None:
    # Only on-demand syncs (the create job's): a periodic one would record `removed` midway and end the walk.
    client = api_server_factory(reconcile_interval_seconds=3600).client()
    instance = create_running(client)
    fake_novita.set_step_seconds(None)
    path = f"/api/instances/{instance['id']}"
    cached_view = f"ngpu:cache:instances:novita:{instance['novitaInstanceId']}"
    valkey = redis_server.client()

    def live_state() -> dict:
        valkey.delete(cached_view)  # read Novita's new status now, not after the cache TTL
        return client.get(path).json()

    seen = {}
    for status in EXPECTED_STATES:
        fake_novita.set_state(instance["novitaInstanceId"], status=status)
        seen[status] = live_state()["state"]
    fake_novita.set_state(
        instance["novitaInstanceId"],
        status="running",
        status_error={"state": "running", "message": "GPU fell off the bus"},
    )
    failed = live_state()

    assert seen == EXPECTED_STATES
    assert failed["state"] == "failed" and failed["statusError"] == "GPU fell off the bus"
