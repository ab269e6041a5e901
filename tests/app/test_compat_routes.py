"""The original service's routes (sontl/novita-ai-api), driven with the request shapes its clients send: start, stop
and delete by `instanceName`, stop-all (a dry run unless confirmed), `PUT .../last-used` with a `lastUsedAt`
timestamp, and a `webhookUrl` per instance that then receives that instance's events."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime, timedelta

import httpx
import redis
from standardwebhooks import Webhook

from tests.app.conftest import ApiServer, StartServer
from tests.app.instances_client import create_instance, create_running, wait_for_job
from tests.app.lifecycle_helpers import WebhookReceiver
from tests.fakes.fixtures import FakeNovitaHandle


def _job_of(response_json: dict[str, object], location: str) -> str:
    job_id = str(response_json["jobId"])
    assert location == f"/api/jobs/{job_id}"
    return job_id


def test_start_stop_delete_by_instance_name(api_server: ApiServer, fake_novita: FakeNovitaHandle) -> None:
    with api_server.client() as client:
        running = create_running(client, name="sd-worker")
        other = create_running(client, name="sd-worker-2")  # a name containing the first is not a match

        stopped = client.post("/api/instances/stop", json={"instanceName": "sd-worker"})
        assert stopped.status_code == 202, stopped.text
        assert wait_for_job(client, _job_of(stopped.json(), stopped.headers["location"]))["state"] == "succeeded"
        assert client.get(f"/api/instances/{running['id']}").json()["state"] == "stopped"
        assert client.get(f"/api/instances/{other['id']}").json()["state"] == "running"

        started = client.post(
            "/api/instances/start",
            json={  # the original's probe settings are accepted
                "instanceName": "sd-worker",
                "targetPort": 8888,
                "healthCheckConfig": {"timeoutMs": 30000, "retryAttempts": 3, "retryDelayMs": 2000},
            },
        )
        assert started.status_code == 202, started.text
        assert wait_for_job(client, started.json()["jobId"])["state"] == "succeeded"

        deleted = client.post("/api/instances/delete", json={"instanceName": "sd-worker"})
        assert deleted.status_code == 202, deleted.text
        assert wait_for_job(client, deleted.json()["jobId"])["state"] == "succeeded"
        assert client.get(f"/api/instances/{running['id']}").json()["state"] == "deleted"
        # Deleted: the name is free again, so the same call finds nothing.
        gone = client.post("/api/instances/delete", json={"instanceName": "sd-worker"})
    assert gone.status_code == 404 and "sd-worker" in gone.json()["detail"]


def test_by_name_errors_name_the_problem(api_server: ApiServer) -> None:
    with api_server.client() as client:
        first = create_instance(client, name="twin")["instance"]["id"]
        second = create_instance(client, name="twin")["instance"]["id"]
        ambiguous = client.post("/api/instances/stop", json={"instanceName": "twin"})
        missing = client.post("/api/instances/start", json={"instanceName": "nobody"})
        invalid = client.post("/api/instances/stop", json={"instanceName": "has space"})
        absent = client.post("/api/instances/stop", json={})
        anonymous = client.post("/api/instances/stop", json={"instanceName": "twin"}, headers={"X-API-Key": "x"})
    assert ambiguous.status_code == 409 and {first, second} <= set(
        ambiguous.json()["detail"].replace(",", " ").replace("(", " ").replace(")", " ").split()
    )
    assert missing.status_code == 404
    assert invalid.status_code == 422 and invalid.json()["errors"][0]["field"] == "body.instanceName"
    assert absent.status_code == 422 and absent.json()["errors"][0]["field"] == "body.instanceName"
    assert anonymous.status_code == 401


def test_stop_all_is_a_dry_run_unless_confirmed(api_server: ApiServer, fake_novita: FakeNovitaHandle) -> None:
    with api_server.client() as client:
        one = create_running(client, name="batch-a")
        two = create_running(client, name="batch-b")
        preview = client.post("/api/instances/stop-all")  # the original's bare call
        refused = client.post("/api/instances/stop-all", json={"dryRun": False})
        assert [i["status"] for i in fake_novita.instances()] == ["running", "running"]  # neither stopped anything

        confirmed = client.post("/api/instances/stop-all", json={"dryRun": False, "confirm": "stop-all"})
        assert confirmed.status_code == 200, confirmed.text
        jobs = [item["jobId"] for item in confirmed.json()["items"]]
        assert all(wait_for_job(client, job_id)["state"] == "succeeded" for job_id in jobs)
        states = {
            instance_id: client.get(f"/api/instances/{instance_id}").json()["state"]
            for instance_id in (one["id"], two["id"])
        }
        again = client.post("/api/instances/stop-all", json={"dryRun": True}).json()

    assert preview.status_code == 200
    body = preview.json()
    assert body["dryRun"] is True and body["count"] == 2 and body["failed"] == 0
    assert {item["instanceId"] for item in body["items"]} == {one["id"], two["id"]}
    assert all(item["jobId"] is None for item in body["items"])
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "body.confirm"
    assert confirmed.json()["dryRun"] is False and confirmed.json()["count"] == 2 and len(jobs) == 2
    assert states == {one["id"]: "stopped", two["id"]: "stopped"}
    assert again["count"] == 0 and again["items"] == []


def test_stop_all_leaves_instances_made_elsewhere_alone(api_server: ApiServer, fake_novita: FakeNovitaHandle) -> None:
    with api_server.client() as client:
        create_running(client, name="ours")
        fake_novita.set_step_seconds(0)
        # Through Novita's API directly: an instance made by another tool on the same account.
        made_elsewhere = httpx.post(
            f"{fake_novita.base_url}/gpu/instance/create",
            headers={"Authorization": f"Bearer {fake_novita.api_key}"},
            json={
                "name": "someone-elses",
                "productId": "4090-us-ca-6",
                "gpuNum": 1,
                "rootfsSize": 20,
                "imageUrl": "docker.io/library/ubuntu:22.04",
                "kind": "gpu",
            },
        ).json()["id"]
        result = client.post("/api/instances/stop-all", json={"dryRun": False, "confirm": "stop-all"}).json()
        for item in result["items"]:
            wait_for_job(client, item["jobId"])
    assert [item["name"] for item in result["items"]] == ["ours"]
    [elsewhere] = [i for i in fake_novita.instances() if i["id"] == made_elsewhere]
    assert elsewhere["status"] == "running"


def test_last_used_takes_the_originals_timestamp(api_server: ApiServer) -> None:
    used_at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    with api_server.client() as client:
        record_id = create_instance(client)["instance"]["id"]
        stamped = client.put(
            f"/api/instances/{record_id}/last-used",
            json={"lastUsedAt": used_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")},
        )
        stored = _activity(api_server, record_id)
        before = time.time()
        bare = client.put(f"/api/instances/{record_id}/last-used")
        future = client.put(
            f"/api/instances/{record_id}/last-used",
            json={"lastUsedAt": (datetime.now(UTC) + timedelta(hours=1)).isoformat()},
        )
        garbage = client.put(f"/api/instances/{record_id}/last-used", json={"lastUsedAt": "yesterday"})
        unknown = client.put("/api/instances/0123456789abcdef/last-used", json={})

    assert stamped.status_code == 200, stamped.text
    assert stamped.json() == {"instanceId": record_id, "lastUsedAt": used_at.timestamp()}
    assert float(stored["last_used_at"]) == used_at.timestamp()  # what idle auto-stop counts from
    assert bare.status_code == 200 and bare.json()["lastUsedAt"] >= before
    assert future.status_code == 422 and future.json()["errors"][0]["field"] == "body.lastUsedAt"
    assert garbage.status_code == 422 and garbage.json()["errors"][0]["field"] == "body.lastUsedAt"
    assert unknown.status_code == 404


def test_webhook_url_per_instance_receives_its_events(
    api_server_factory: StartServer,
    webhook_receiver: WebhookReceiver,
) -> None:
    secret = "s" * 32
    server = api_server_factory(
        webhook_secret=secret,
        webhook_allow_private_targets=True,
        webhook_delivery_interval_seconds=0.1,
        webhook_backoff_base_seconds=0.1,
    )
    with server.client() as client:
        created = create_instance(client, name="hooked", webhookUrl=webhook_receiver.url)
        assert wait_for_job(client, created["jobId"])["state"] == "succeeded"
        other = create_running(client, name="quiet")
        stopped = client.post("/api/instances/stop", json={"instanceName": "quiet", "webhookUrl": webhook_receiver.url})
        assert wait_for_job(client, stopped.json()["jobId"])["state"] == "succeeded"
        refused = client.post(
            "/api/instances",
            json={
                "name": "x",
                "productName": "RTX 4090 24GB",
                "imageUrl": "docker.io/library/ubuntu:22.04",
                "webhookUrl": "ftp://example.com/hook",
            },
        )
    deadline = time.monotonic() + 10
    wanted = {(created["instance"]["id"], "running"), (other["id"], "stopped")}
    while time.monotonic() < deadline:
        seen = {(body["instanceId"], body["data"].get("to")) for body in webhook_receiver.bodies()}
        if wanted <= seen:
            break
        time.sleep(0.05)
    assert wanted <= seen, seen
    # A plain secret's own bytes are the key: receivers verify with the Standard Webhooks library.
    receiver_view = Webhook("whsec_" + base64.b64encode(secret.encode()).decode())
    assert all(receiver_view.verify(item.body, item.headers) for item in webhook_receiver.received)
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "body.webhookUrl"


def test_webhook_url_is_refused_when_webhooks_are_not_configured(api_server: ApiServer) -> None:
    with api_server.client() as client:
        response = client.post(
            "/api/instances",
            json={
                "name": "x",
                "productName": "RTX 4090 24GB",
                "imageUrl": "docker.io/library/ubuntu:22.04",
                "webhookUrl": "https://hooks.example.com/x",
            },
        )
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "body.webhookUrl"
    assert "WEBHOOK_SECRET" in response.json()["detail"]


def _activity(server: ApiServer, record_id: str) -> dict[str, str]:
    with redis.Redis.from_url(server.redis_url, decode_responses=True) as valkey:
        return valkey.hgetall(f"ngpu:lifecycle:activity:{record_id}")
