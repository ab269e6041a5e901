"""Create fields real users need, over HTTP to the fake Novita: `imageAuth` (a secret), `tools` (Jupyter),
`networkStorages`, `entrypoint`, `minCudaVersion`, and spot recovery opted into per instance (`autoMigrate`)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import redis

from tests.app.conftest import ApiServer
from tests.app.instances_client import CREATE_PATH, create_body, create_instance, wait_for_job
from tests.fakes.fixtures import FakeNovitaHandle

REGISTRY_SECRET = "robot:pa55-" + "x7Qm2" * 4


def test_create_passes_the_new_fields_to_novita_in_its_shapes(
    api_server: ApiServer, fake_novita: FakeNovitaHandle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with api_server.client() as client:
        accepted = create_instance(
            client,
            imageAuth=REGISTRY_SECRET,
            tools=[{"name": "Jupyter", "port": 8888, "type": "http"}],
            ports=[{"port": 8000, "type": "http"}],
            networkStorages=[{"id": "ns-team", "mountPoint": "/data"}],
            entrypoint="/usr/bin/env",
            minCudaVersion="12.2",
        )
        job = wait_for_job(client, accepted["jobId"])
        view = client.get(f"/api/instances/{accepted['instance']['id']}")
        listing = client.get("/api/instances")

    assert job["state"] == "succeeded", job
    [created] = [i for i in fake_novita.instances() if i["name"].startswith("trainer-")]
    assert created["received"] == {
        "tools": [{"name": "Jupyter", "port": "8888", "type": "http"}],
        "networkStorages": [{"Id": "ns-team", "mountPoint": "/data"}],
        "entrypoint": "/usr/bin/env",
        "minCudaVersion": "12.2",
        "imageAuthSent": True,
    }
    assert created["imageAuthId"] == ""  # the credentials replace any saved registry auth
    exposed = [str(accepted), str(job), view.text, listing.text, caplog.text]
    assert all(REGISTRY_SECRET not in text and "pa55-" not in text for text in exposed)
    # Once Novita has the instance, the create spec (the only place holding the secret) is gone from Valkey.
    valkey = redis.Redis.from_url(api_server.redis_url)
    try:
        stored = [valkey.dump(key) or b"" for key in valkey.scan_iter()]
    finally:
        valkey.close()
    assert stored and not any(b"pa55-" in value for value in stored)


def test_min_cuda_version_moves_placement_to_a_cluster_whose_nodes_have_it(
    api_server: ApiServer, fake_novita: FakeNovitaHandle
) -> None:
    with api_server.client() as client:
        accepted = create_instance(client, minCudaVersion="12.6")  # us-ca-6 (cheapest) has 12.4, as-sgp-2 12.8
        job = wait_for_job(client, accepted["jobId"])
        view = client.get(f"/api/instances/{accepted['instance']['id']}").json()
    assert job["state"] == "succeeded", job
    assert view["clusterId"] == "as-sgp-2"
    assert ("insufficient_resource", "us-ca-6") in [(event["action"], event["detail"]) for event in view["events"]]


@pytest.mark.parametrize("reason", ["CLUSTER_STATUS", "NODE_STATUS", "CREATE_GPU_NUM_LIMIT"])
def test_capacity_like_reasons_move_placement_on(
    api_server: ApiServer, fake_novita: FakeNovitaHandle, reason: str
) -> None:
    fake_novita.add_faults({"path": CREATE_PATH, "kind": "error", "status": 400, "reason": reason, "count": 1})
    with api_server.client() as client:
        accepted = create_instance(client)
        job = wait_for_job(client, accepted["jobId"])
        view = client.get(f"/api/instances/{accepted['instance']['id']}").json()
    assert job["state"] == "succeeded", job
    assert view["clusterId"] == "as-sgp-2" and fake_novita.call_count("POST", CREATE_PATH) == 2


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"imageAuth": "no-colon"}, "body.imageAuth"),
        ({"imageAuth": "u:p", "imageAuthId": "auth-registry-1"}, "body.imageAuth"),
        ({"tools": [{"name": "VSCode", "port": 8080}]}, "body.tools.0.name"),
        ({"tools": [{"port": 2222}]}, "body.tools.0.port"),
        ({"tools": [{"port": 8888}]}, "body.tools"),  # also in ports
        ({"networkStorages": [{"id": "ns-1", "mountPoint": "data"}]}, "body.networkStorages.0.mountPoint"),
        ({"networkStorages": [{"Id": "ns-1"}]}, "body.networkStorages.0.id"),
        ({"minCudaVersion": "twelve"}, "body.minCudaVersion"),
        ({"entrypoint": ""}, "body.entrypoint"),
        ({"autoMigrate": True}, "body.autoMigrate"),  # on-demand: nothing is reclaimed
        ({"autoMigrate": "yes", "billingMode": "spot"}, "body.autoMigrate"),
    ],
)
def test_bad_new_fields_are_a_422_naming_the_field_without_echoing_values(
    api_server: ApiServer, overrides: dict[str, Any], field: str
) -> None:
    with api_server.client() as client:
        response = client.post("/api/instances", json=create_body(**overrides))
    assert response.status_code == 422, response.text
    assert field in [error["field"] for error in response.json()["errors"]], response.text
    assert "no-colon" not in response.text


def test_auto_migrate_is_recorded_and_shown(api_server: ApiServer) -> None:
    with api_server.client() as client:
        spot = create_instance(client, billingMode="spot", autoMigrate=True)
        plain = create_instance(client, name="plain", billingMode="spot")
    assert spot["instance"]["autoMigrate"] is True and plain["instance"]["autoMigrate"] is False
