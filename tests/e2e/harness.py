"""The e2e harness: render the program's container, create it on the real engine, watch and measure it.

Everything a run creates carries the label `E2E_LABEL`=<the run's id> (and the id in its name), so the run removes
exactly what it created and never what another run on the same engine created. All test traffic goes to 127.0.0.1:
the containers use the host's network, or (replicas behind the proxy) a network of the run's own whose proxy
publishes on loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
from docker.models.resource import Model

from tests.e2e.container_spec import ContainerSpec, container_spec
from tests.infra.harness import TEST_SECRETS

REPO_ROOT = Path(__file__).resolve().parents[2]
E2E_LABEL = "novita-gpu-api.e2e"  # value: the run's id
E2E_OWNER_PID_LABEL = "novita-gpu-api.e2e.pid"  # the run's process: a later run removes leftovers only once it is gone
HAPROXY_IMAGE = "novita-gpu-api/haproxy-test:bookworm"
CADDY_IMAGE = "novita-gpu-api/caddy-test:bookworm"
BASE_IMAGE = "novita-gpu-api/base:bookworm"
VALKEY_IMAGE = "novita-gpu-api/valkey-test:bookworm"
API_IMAGE_TAG = "novita-gpu-api:e2e"
CONTAINER_TYPE = "docker:index/container:Container"
IMAGE_TYPE = "docker:index/image:Image"
# Short healthcheck timings so the suite runs in minutes. The probe's HTTP timeout is half the Docker timeout
# (components/config/models.py), so a 2 s Docker timeout leaves the probe 1 s; kill after 3 failed probes.
FAST_HEALTHCHECK = {
    "healthcheckInterval": "3s",
    "healthcheckTimeout": "2s",
    "healthcheckRetries": "3",
    "healthcheckStartPeriod": "30s",
}

T = TypeVar("T")


def remove_created(
    client: docker.DockerClient,
    container_ids: Iterable[str],
    volumes: Iterable[str] = (),
    network_id: str = "",
) -> None:
    """Remove what a deployment created on one engine: its containers (newest first, with their anonymous volumes),
    then its named volumes, then its network. What is already gone is skipped, so a half-made deployment cleans up."""
    for container_id in reversed(list(container_ids)):
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_container(container_id, force=True, v=True)
    for volume in volumes:
        with contextlib.suppress(docker.errors.NotFound):
            client.volumes.get(volume).remove(force=True)
    if network_id:
        with contextlib.suppress(docker.errors.NotFound):
            client.networks.get(network_id).remove()


def fake_novita_arguments(host: str, port: int) -> list[str]:
    """`python -m tests.fakes.novita`'s arguments for an e2e run: listening on `host:port`, expecting the test key,
    moving instances on every 0.2 s (a host process, or a container of the API image with tests/ mounted)."""
    return [
        "-m",
        "tests.fakes.novita",
        "--host",
        host,
        "--port",
        str(port),
        "--api-key",
        TEST_SECRETS["novitaApiKey"],
        "--step-seconds",
        "0.2",
    ]


def id_of(model: Model) -> str:
    """The ID of an object the engine created or returned (the SDK's types allow None, for a model made by hand)."""
    if model.id is None:
        raise AssertionError(f"{model!r} has no ID")
    return model.id


class WaitTimeout(AssertionError):
    """A bounded wait ran out; the message says what was awaited."""


def wait_for(what: str, probe: Callable[[], T | None], timeout_seconds: float, interval: float = 0.2) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` after `timeout_seconds`."""
    deadline = time.monotonic() + timeout_seconds
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise WaitTimeout(f"timed out after {timeout_seconds:g}s waiting for {what} (last: {last!r})")


def http(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None, timeout: float = 5.0
) -> tuple[int, Any]:
    """One HTTP call on loopback: (status, JSON body or text). Connection errors raise OSError."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw, status = response.read(), response.status
    except urllib.error.HTTPError as error:
        raw, status = error.read(), error.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def status_or_none(method: str, url: str, **kwargs: Any) -> int | None:
    """The HTTP status, or None while nothing answers."""
    try:
        return http(method, url, **kwargs)[0]
    except OSError:
        return None


# ---- rendering the program ----------------------------------------------------------------------------------


@dataclass
class RenderedStack:
    """The program's registrations for one stack, from `python -m tests.infra.render`."""

    stack: str
    resources: list[dict[str, Any]]
    outputs: dict[str, Any]

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [r for r in self.resources if r["type"] == type_]

    def api_container(self) -> dict[str, Any]:
        """The container of the ApiService component."""
        return self._container_of("ApiService")

    def valkey_container(self) -> dict[str, Any]:
        """The local Valkey container of the Valkey component (valkeyMode=local)."""
        return self._container_of("Valkey")

    def _container_of(self, component: str) -> dict[str, Any]:
        marker = f"novita-gpu-api:index:{component}::"
        found = [c for c in self.of_type(CONTAINER_TYPE) if c["parent"] and marker in c["parent"]]
        if len(found) != 1:
            raise AssertionError(f"expected one {component} container in the render of {self.stack}, found {found}")
        return found[0]

    def api_image(self) -> dict[str, Any]:
        (image,) = self.of_type(IMAGE_TYPE)
        return image


def render(stack: str, overrides: dict[str, str], secrets: dict[str, str] | None = None) -> RenderedStack:
    """Run the Pulumi program under mocks with the stack's settings plus `overrides` (and `secrets` over the tests')."""
    command = [sys.executable, "-m", "tests.infra.render", stack]
    for key, value in overrides.items():
        command += ["--config", f"{key}={value}"]
    for key, value in (secrets or {}).items():
        command += ["--secret", f"{key}={value}"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise AssertionError(f"render of stack {stack} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    document = json.loads(result.stdout)
    if isinstance(document, list):
        return RenderedStack(stack, document, {})
    return RenderedStack(stack, document["resources"], document.get("outputs", {}))


# ---- the API container --------------------------------------------------------------------------------------


@dataclass
class Measurements:
    """Figures the suite prints at the end (and writes to build/e2e-measurements.json)."""

    figures: dict[str, float | str] = field(default_factory=dict)

    def record(self, name: str, value: float | str) -> None:
        self.figures[name] = round(value, 2) if isinstance(value, float) else value


@dataclass
class ApiContainer:
    """One API container created from the rendered definition, with helpers to watch and hurt it."""

    client: docker.DockerClient
    spec: ContainerSpec
    api_url: str
    api_key: str
    container_id: str = ""
    started_at: float = 0.0

    def create_and_start(self, labels: dict[str, str]) -> None:
        """What `pulumi up` does: create, start; the caller waits for healthy if the program asks for it."""
        self.container_id = self.spec.create(self.client, labels)
        self.started_at = time.monotonic()
        if self.spec.provider.start:
            self.client.api.start(self.container_id)

    def inspect(self) -> dict[str, Any]:
        return self.client.api.inspect_container(self.container_id)

    def health(self) -> str:
        return (self.inspect()["State"].get("Health") or {}).get("Status", "none")

    def health_log(self) -> list[str]:
        return [
            entry.get("Output", "").strip() for entry in (self.inspect()["State"].get("Health") or {}).get("Log") or []
        ]

    def restart_count(self) -> int:
        return int(self.inspect()["RestartCount"])

    def main_pid(self) -> int:
        """The host pid of the container's PID 1 (tini, since the program sets init)."""
        return int(self.inspect()["State"]["Pid"])

    def app_pid(self) -> int:
        """The host pid of the uvicorn process: the only child of tini."""
        main = self.main_pid()
        children = Path(f"/proc/{main}/task/{main}/children").read_text().split()
        if len(children) != 1:
            raise AssertionError(f"expected tini (pid {main}) to have one child, found {children}")
        return int(children[0])

    def logs(self) -> str:
        return self.client.api.logs(self.container_id).decode(errors="replace")

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, Any]:
        return http("GET", f"{self.api_url}{path}", headers={"X-API-Key": self.api_key}, timeout=timeout)

    def post(
        self, path: str, body: Any = None, headers: dict[str, str] | None = None, timeout: float = 5.0
    ) -> tuple[int, Any]:
        return http(
            "POST",
            f"{self.api_url}{path}",
            body=body,
            headers={"X-API-Key": self.api_key, **(headers or {})},
            timeout=timeout,
        )

    def wait_ready(self, timeout: float) -> float:
        """Seconds from the container start until /readyz answers 200."""
        wait_for(
            "/readyz 200",
            lambda: status_or_none("GET", f"{self.api_url}/readyz", timeout=1.0) == 200,
            timeout,
            interval=0.1,
        )
        return time.monotonic() - self.started_at

    def wait_health(self, status: str, timeout: float) -> float:
        """Seconds from the container start until Docker reports `status`."""
        try:
            wait_for(f"Docker health {status!r}", lambda: self.health() == status, timeout, interval=0.1)
        except WaitTimeout as error:
            raise WaitTimeout(
                f"{error}\nprobe log: {self.health_log()[-3:]}\ncontainer log tail:\n{self.logs()[-2000:]}"
            ) from None
        return time.monotonic() - self.started_at

    def wait_restarted(self, before: int, timeout: float) -> int:
        return wait_for(
            f"RestartCount > {before}",
            lambda: (count := self.restart_count()) > before and count,
            timeout,
            interval=0.1,
        )

    def kill_from_host(self, pid: int, sig: signal.Signals = signal.SIGKILL) -> None:
        os.kill(pid, sig)

    def remove(self) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.client.api.remove_container(self.container_id, force=True)


def api_container_from_render(
    client: docker.DockerClient, rendered: RenderedStack, image_id: str, api_url: str, api_key: str
) -> ApiContainer:
    """Map the rendered API container to docker-py; the image is the one this session built from app/."""
    inputs = dict(rendered.api_container()["inputs"])
    inputs["image"] = image_id  # under mocks the image is a fake digest; the build inputs are checked separately
    return ApiContainer(client=client, spec=container_spec(inputs), api_url=api_url, api_key=api_key)
