"""Connection details in the instance view (SSH command, Jupyter, web terminal, port endpoints), over real HTTP
against the fake Novita; its passwords never come through."""

from __future__ import annotations

import time

import httpx

from tests.app.conftest import ApiServer
from tests.app.instances_client import create_running, wait_until_ready
from tests.fakes.fixtures import FakeNovitaHandle


def test_a_running_instance_shows_how_to_reach_it(client: httpx.Client, fake_novita: FakeNovitaHandle) -> None:
    created = create_running(
        client, name="notebook", ports=[{"port": 8888, "type": "http"}, {"port": 6006, "type": "tcp"}]
    )
    view = wait_until_ready(client, created["id"])
    upstream = fake_novita.instances(name=view["upstreamName"])[0]

    connection = view["connection"]
    assert connection["sshCommand"] == upstream["connectComponentSSH"]["sshCommand"]
    assert connection["sshCommand"].startswith("ssh ")
    by_port = {port["port"]: port for port in connection["ports"]}
    assert set(by_port) == {8888, 6006}
    assert by_port[8888]["type"] == "http" and by_port[6006]["type"] == "tcp"
    # The addresses are real: each one answers, on loopback, while the instance runs.
    assert httpx.get(by_port[8888]["endpoint"], timeout=5).status_code == 200
    assert connection["jupyterUrl"] == by_port[8888]["endpoint"]
    assert httpx.get(connection["jupyterUrl"], timeout=5).status_code == 200
    terminal = httpx.get(connection["webTerminalUrl"], timeout=5)
    assert terminal.status_code == 200 and "web terminal" in terminal.text

    listed = client.get("/api/instances").json()["items"]
    assert [item["connection"] for item in listed if item["id"] == created["id"]] == [connection]


def test_no_jupyter_url_without_a_jupyter_port(client: httpx.Client) -> None:
    created = create_running(client, name="plain", ports=[{"port": 8000, "type": "http"}])

    connection = client.get(f"/api/instances/{created['id']}").json()["connection"]

    assert connection["jupyterUrl"] is None
    assert [port["port"] for port in connection["ports"]] == [8000]
    assert connection["sshCommand"] and connection["webTerminalUrl"]


def test_novita_passwords_never_come_through(client: httpx.Client, fake_novita: FakeNovitaHandle) -> None:
    created = create_running(client, name="secretive")
    upstream = fake_novita.instances(name=created["upstreamName"])[0]
    passwords = [upstream["connectComponentSSH"]["password"], upstream["connectComponentWebTerminal"]["password"]]
    assert all(passwords)  # the fake does send them, like Novita

    texts = [client.get(f"/api/instances/{created['id']}").text, client.get("/api/instances").text]

    for text in texts:
        assert '"sshCommand"' in text
        for password in passwords:
            assert password not in text


def test_an_instance_made_elsewhere_shows_its_connection_too(
    client: httpx.Client, fake_novita: FakeNovitaHandle, api_server: ApiServer
) -> None:
    # Made on the Novita account directly, not through this service.
    with httpx.Client(
        base_url=fake_novita.base_url, headers={"Authorization": f"Bearer {fake_novita.api_key}"}
    ) as novita:
        made = novita.post(
            "/gpu/instance/create",
            json={
                "name": "outside",
                "productId": "4090-us-ca-6",
                "gpuNum": 1,
                "rootfsSize": 20,
                "imageUrl": "docker.io/library/ubuntu:22.04",
                "kind": "gpu",
                "ports": "8888/http",
            },
        )
    assert made.status_code == 200, made.text

    # Lists come from our index: the instance shows up once the background sync has seen it.
    deadline = time.monotonic() + 10
    while not (
        outside := [
            item
            for item in client.get("/api/instances").json()["items"]
            if item["novitaInstanceId"] == made.json()["id"]
        ]
    ):
        assert time.monotonic() < deadline, "the sync never listed the instance made elsewhere"
        time.sleep(0.1)
    assert len(outside) == 1 and outside[0]["managed"] is False
    assert outside[0]["connection"]["sshCommand"].startswith("ssh ")
    assert outside[0]["connection"]["ports"][0]["port"] == 8888


def test_lists_keep_the_last_synced_connection_while_novita_cannot_be_reached(
    client: httpx.Client, fake_novita: FakeNovitaHandle
) -> None:
    created = create_running(client, name="offline")
    wait_until_ready(client, created["id"])
    before = next(item for item in client.get("/api/instances").json()["items"] if item["id"] == created["id"])
    assert before["connection"]["sshCommand"].startswith("ssh ")
    fake_novita.add_faults({"path": "*", "kind": "server_error", "status": 503, "count": None})
    faulted_at = time.time()

    deadline = time.monotonic() + 15
    while (items := client.get("/api/instances").json())["novitaSynced"]:  # until a sync has failed
        assert time.monotonic() < deadline, "no sync failed while Novita answered 503"
        time.sleep(0.1)
    view = next(item for item in items["items"] if item["id"] == created["id"])

    # The list answers without Novita, saying so, with what the last successful sync saw and when.
    assert view["connection"] == before["connection"] and view["syncedAt"] < faulted_at
