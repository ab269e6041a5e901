"""Fixtures of the real-Docker suite: the engine, the API image built from app/, the fake Novita, and deployments
rendered from the Pulumi program (its Valkey container and its API container) created on the engine.

The engine must be reachable (`scripts/start-dockerd.sh`). When it is not, every test fails with the reason if the
environment variable CI is set; outside CI the tests are skipped.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import docker
import docker.errors
import pytest

from tests.e2e.container_spec import container_spec
from tests.e2e.harness import (
    API_IMAGE_TAG,
    BASE_IMAGE,
    CADDY_IMAGE,
    E2E_LABEL,
    E2E_OWNER_PID_LABEL,
    FAST_HEALTHCHECK,
    HAPROXY_IMAGE,
    REPO_ROOT,
    VALKEY_IMAGE,
    ApiContainer,
    Measurements,
    RenderedStack,
    api_container_from_render,
    fake_novita_arguments,
    http,
    id_of,
    remove_created,
    render,
    status_or_none,
    wait_for,
)
from tests.e2e.proxied import ProxiedDeployment
from tests.infra.harness import TEST_SECRETS
from tests.loopback import free_port

SESSION_ID = uuid.uuid4().hex[:8]  # this run's id: in every name and label it creates, and what cleanup selects on
RUN_LABELS = {E2E_LABEL: SESSION_ID, E2E_OWNER_PID_LABEL: str(os.getpid())}
_deployment_numbers = itertools.count(1)  # container names stay unique across the session
MEASUREMENTS_FILE = REPO_ROOT / "build" / "e2e-measurements.json"
_measurements = Measurements()
# pip settings of the host that a build inside the engine may need (index mirror, proxy CA); never hard-coded.
PIP_BUILD_ARGS = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST")
# The base image carries the host's CA bundle at this path (scripts/build-base-image.sh).
BASE_IMAGE_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the measured figures (start-to-ready, start-to-healthy, restart times, image size)."""
    if not _measurements.figures:
        return
    terminalreporter.section("e2e measurements")
    for name, value in _measurements.figures.items():
        terminalreporter.write_line(f"{name}: {value}")
    MEASUREMENTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    MEASUREMENTS_FILE.write_text(json.dumps(_measurements.figures, indent=2) + "\n")


@pytest.fixture(scope="session")
def measurements() -> Measurements:
    return _measurements


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """The real engine; fails loudly in CI when it cannot be reached."""
    reason = None
    try:
        client = docker.from_env(version="auto", timeout=120)
        client.ping()
    except Exception as error:  # any failure to reach the engine means the same thing here
        reason = (
            f"Docker engine not reachable ({type(error).__name__}: {error}); "
            "install docker.io and run scripts/start-dockerd.sh as root"
        )
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    _remove_leftovers_of_dead_runs(client)
    yield client
    _remove_run(client, SESSION_ID)
    client.close()


def _remove_run(client: docker.DockerClient, run_id: str) -> None:
    """Remove what one run created, and nothing else: another run on the same engine carries another id."""
    selector: dict[str, str | list[str] | bool] = {"label": f"{E2E_LABEL}={run_id}"}
    for container in client.containers.list(all=True, filters=selector):
        container.remove(force=True, v=True)
    for volume in client.volumes.list(filters=selector):
        volume.remove(force=True)
    for network in client.networks.list(filters=selector):
        network.remove()


def _remove_leftovers_of_dead_runs(client: docker.DockerClient) -> None:
    """Runs interrupted before their cleanup: their owner process (same machine) no longer exists."""
    owners: dict[str, str] = {}
    for container in client.containers.list(all=True, filters={"label": E2E_OWNER_PID_LABEL}):
        owners[container.labels[E2E_LABEL]] = container.labels[E2E_OWNER_PID_LABEL]
    for run_id, pid in owners.items():
        if not _process_exists(int(pid)):
            _remove_run(client, run_id)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="session")
def base_images(docker_client: docker.DockerClient) -> None:
    """The locally built base and Valkey images (no registry is reachable); built here if missing."""
    missing = [
        tag for tag in (BASE_IMAGE, VALKEY_IMAGE, HAPROXY_IMAGE, CADDY_IMAGE) if not docker_client.images.list(name=tag)
    ]
    if missing:
        result = subprocess.run(
            [str(REPO_ROOT / "scripts" / "build-base-image.sh")], capture_output=True, text=True, timeout=900
        )
        if result.returncode != 0:
            pytest.fail(f"scripts/build-base-image.sh failed for {missing}:\n{result.stderr[-2000:]}", pytrace=False)


@pytest.fixture(scope="session")
def api_image(docker_client: docker.DockerClient, base_images: None, measurements: Measurements) -> str:
    """The API image built from app/Dockerfile through the daemon, once per session; returns its id."""
    build_args = {"BASE_IMAGE": BASE_IMAGE, "PIP_CERT": BASE_IMAGE_CA_BUNDLE}
    build_args.update({name: os.environ[name] for name in PIP_BUILD_ARGS if os.environ.get(name)})
    started = time.monotonic()
    try:
        image, _ = docker_client.images.build(
            path=str(REPO_ROOT / "app"),
            tag=API_IMAGE_TAG,
            buildargs=build_args,
            network_mode="host",
            rm=True,
            forcerm=True,
            timeout=900,
        )
    except docker.errors.BuildError as error:
        log = "".join(str(chunk.get("stream") or chunk.get("error") or "") for chunk in error.build_log)
        pytest.fail(f"building app/Dockerfile failed: {error}\n{log[-3000:]}", pytrace=False)
    measurements.record("image build seconds", time.monotonic() - started)
    measurements.record("image size MB", image.attrs["Size"] / 1e6)
    return id_of(image)


@pytest.fixture(scope="session")
def novita_fake() -> Iterator[str]:
    """The fake Novita server as a host process on loopback; yields its base URL (without the API path)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, *fake_novita_arguments("127.0.0.1", port)],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            "the fake Novita to listen",
            lambda: process.poll() is not None or status_or_none("GET", f"{url}/_fake/calls") == 200,
            30,
        )
        if process.poll() is not None:
            assert process.stderr is not None  # a pipe
            pytest.fail(f"fake Novita exited: {process.stderr.read().decode()[-2000:]}", pytrace=False)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@dataclass
class Deployment:
    """One stack rendered by the program and created on the engine: its Valkey container and its API container."""

    client: docker.DockerClient
    stack: RenderedStack
    api: ApiContainer
    valkey_id: str
    valkey_port: int

    def valkey_answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.valkey_port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start_valkey(self) -> None:
        self.client.api.start(self.valkey_id)
        wait_for("Valkey to answer PING", self.valkey_answers, 30)

    def stop_valkey(self) -> None:
        self.client.api.stop(self.valkey_id, timeout=5)


def e2e_overrides(container_name: str, api_port: int, valkey_port: int, novita_url: str) -> dict[str, str]:
    """Stack config for the real-engine run: host network, loopback URLs, locally built images."""
    return {
        "networkMode": "host",
        "apiReplicas": "1",  # one container listening on the host's port (replicas run behind the proxy: proxied.py)
        "apiHostAddress": "127.0.0.1",
        "apiPort": str(api_port),
        "containerName": container_name,
        "valkeyMode": "local",
        "valkeyPort": str(valkey_port),
        "valkeyContainerName": f"{container_name}-valkey",
        "valkeyImage": VALKEY_IMAGE,
        "valkeyPullImage": "false",
        "valkeyServerBinary": "redis-server",
        "valkeyCliBinary": "redis-cli",
        "novitaBaseUrl": f"{novita_url}/gpu-instance/openapi/v1",
        "baseImage": BASE_IMAGE,
        "imageName": API_IMAGE_TAG,
    }


Deploy = Callable[..., Deployment]


@pytest.fixture
def deploy(docker_client: docker.DockerClient, api_image: str, novita_fake: str) -> Iterator[Deploy]:
    """Factory: deploy(stack, overrides={}, valkey_running=True, wait_healthy=True, fast_healthcheck=True).

    Renders the stack with the program, checks the image it would build is the one built here, creates the
    program's local Valkey container and API container on the engine, and waits for healthy as `pulumi up`
    (wait=True) does. Everything is removed after the test.
    """
    http("POST", f"{novita_fake}/_fake/reset")
    created: list[str] = []
    volumes: list[str] = []
    labels = RUN_LABELS

    def _deploy(
        stack: str,
        overrides: dict[str, str] | None = None,
        valkey_running: bool = True,
        wait_healthy: bool = True,
        fast_healthcheck: bool = True,
    ) -> Deployment:
        name = f"e2e-{SESSION_ID}-{stack}-{next(_deployment_numbers)}"
        api_port, valkey_port = free_port(), free_port()
        config = e2e_overrides(name, api_port, valkey_port, novita_fake)
        if fast_healthcheck:
            config.update(FAST_HEALTHCHECK)
        rendered = render(stack, {**config, **(overrides or {})})
        build = rendered.api_image()["inputs"]["build"]
        assert (build["context"], build["args"]["BASE_IMAGE"]) == ("app", BASE_IMAGE), build

        valkey_spec = container_spec(rendered.valkey_container()["inputs"])
        for volume in valkey_spec.host_config_kwargs.get("binds", {}):
            docker_client.volumes.create(volume, labels=labels)
            volumes.append(volume)
        valkey_id = valkey_spec.create(docker_client, labels)
        created.append(valkey_id)
        deployment_api = api_container_from_render(
            docker_client,
            rendered,
            api_image,
            f"http://127.0.0.1:{api_port}",
            api_key=TEST_SECRETS["apiKeys"].split(":", 1)[1],
        )
        deployment = Deployment(docker_client, rendered, deployment_api, valkey_id, valkey_port)
        if valkey_running:
            deployment.start_valkey()
        deployment_api.create_and_start(labels)
        created.append(deployment_api.container_id)
        if wait_healthy and deployment_api.spec.provider.wait_for_healthy:
            deployment_api.wait_health("healthy", deployment_api.spec.provider.wait_timeout_seconds)
        return deployment

    yield _deploy
    remove_created(docker_client, created, volumes)


@pytest.fixture
def proxied_deploy(docker_client: docker.DockerClient, api_image: str) -> Iterator[Callable[..., ProxiedDeployment]]:
    """Factory: proxied_deploy(stack, replicas=2) -> the program's bridge-mode stack on the engine: a private network
    of this run, the local Valkey, a fake Novita, the API replicas and the edge proxy (published on loopback)."""
    deployments: list[ProxiedDeployment] = []

    def _deploy(stack: str, replicas: int = 2, overrides: dict[str, str] | None = None) -> ProxiedDeployment:
        prefix = f"e2e-{SESSION_ID}-{stack}-{next(_deployment_numbers)}"
        deployment = ProxiedDeployment.create(
            docker_client, stack, prefix, api_image, RUN_LABELS, {"apiReplicas": str(replicas), **(overrides or {})}
        )
        deployments.append(deployment)
        return deployment

    yield _deploy
    for deployment in deployments:
        deployment.remove()
