"""Two Docker engines on this machine deployed as two `dockerHosts`: a second `dockerd` with its own socket, data
root, exec root and address pool, and the program's render for both hosts created on them.

What differs from real separate hosts, and why: both engines share this machine's loopback, so the second host's
proxy is published on another loopback port than the first's; and the shared Valkey and fake Novita (standing in
for Aiven and Novita, which every host reaches over the network) run on the second engine, published on its network
gateway, a host address both engines' containers reach. The second engine runs without iptables and on a bridge of
its own, so its published ports go through Docker's userland proxy and nothing of it touches the first engine (its
rules, or its docker0 bridge, which `--bridge none` would delete). The test process only
ever talks to 127.0.0.1.
"""

from __future__ import annotations

import subprocess
import zlib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import docker
import docker.errors

from tests.e2e.container_spec import container_spec
from tests.e2e.harness import (
    API_IMAGE_TAG,
    BASE_IMAGE,
    CONTAINER_TYPE,
    FAST_HEALTHCHECK,
    HAPROXY_IMAGE,
    REPO_ROOT,
    VALKEY_IMAGE,
    ApiContainer,
    RenderedStack,
    fake_novita_arguments,
    id_of,
    remove_created,
    render,
    status_or_none,
    wait_for,
)
from tests.e2e.proxied import (
    API_KEY,
    CLIENT_KEYS,
    FAKE_NOVITA_PORT,
    Replica,
    create_replicas,
    delete_replaced,
)
from tests.loopback import free_port


@dataclass
class SecondEngine:
    """A dockerd of this run: everything it holds lives under `directory` and goes with it."""

    directory: Path
    process: subprocess.Popen
    url: str
    client: docker.DockerClient
    bridge: str
    forwarding_rules: list[list[str]] = field(default_factory=list)

    @classmethod
    def start(cls, run_id: str) -> SecondEngine:
        directory = Path(f"/tmp/novita-e2e-{run_id}-dockerd")
        directory.mkdir(parents=True, exist_ok=True)
        url = f"unix://{directory}/docker.sock"
        # Addresses of its own per run, so two runs (and the first engine) never hand out the same subnet.
        second_octet = 200 + zlib.crc32(run_id.encode()) % 50
        # Its own default bridge: `--bridge none` would make dockerd delete docker0, the first engine's bridge.
        bridge = f"ne2e-{run_id}"[:15]
        subprocess.run(["ip", "link", "add", "name", bridge, "type", "bridge"], check=True, timeout=10)
        subprocess.run(["ip", "addr", "add", f"10.{second_octet}.255.1/24", "dev", bridge], check=True, timeout=10)
        subprocess.run(["ip", "link", "set", bridge, "up"], check=True, timeout=10)
        with open(directory / "dockerd.log", "wb") as log:
            process = subprocess.Popen(
                [
                    "dockerd",
                    "--host",
                    url,
                    "--data-root",
                    str(directory / "data"),
                    "--exec-root",
                    str(directory / "exec"),
                    "--pidfile",
                    str(directory / "dockerd.pid"),
                    "--bridge",
                    bridge,
                    "--iptables=false",
                    "--ip-masq=false",
                    "--default-address-pool",
                    f"base=10.{second_octet}.0.0/17,size=24",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        client = docker.DockerClient(base_url=url, version="1.41", timeout=300)
        try:
            wait_for("the second dockerd to answer", lambda: process.poll() is not None or _answers(client), 60)
        except BaseException:
            process.kill()
            subprocess.run(["ip", "link", "delete", bridge], check=False, timeout=10)
            raise
        if process.poll() is not None:
            subprocess.run(["ip", "link", "delete", bridge], check=False, timeout=10)
            raise AssertionError(f"the second dockerd exited: {(directory / 'dockerd.log').read_text()[-2000:]}")
        return cls(directory, process, url, client, bridge)

    def allow_forwarding(self, network_id: str) -> None:
        """Let the containers of one of its networks talk to each other: the first engine set the host's FORWARD
        policy to DROP and, without iptables, this engine adds no rule of its own."""
        bridge = f"br-{network_id[:12]}"
        rule = ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"]
        subprocess.run(["iptables", "-I", *rule], check=True, timeout=10)
        self.forwarding_rules.append(rule)

    def load(self, source: docker.DockerClient, images: list[str]) -> None:
        """Copy images from the first engine (no registry here): `docker save | docker load`."""
        for image in images:
            # arg-type: types-docker wants bytes or a file; the SDK streams any iterable of chunks (the save's).
            self.client.images.load(source.images.get(image).save(named=True))  # type: ignore[arg-type]

    def stop(self) -> None:
        for container in self.client.containers.list(all=True):
            container.remove(force=True, v=True)
        self.client.close()
        for rule in self.forwarding_rules:
            subprocess.run(["iptables", "-D", *rule], check=False, timeout=10)
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        subprocess.run(["ip", "link", "delete", self.bridge], check=False, timeout=10)
        subprocess.run(["rm", "-rf", str(self.directory)], check=False, timeout=120)


def _ready(url: str) -> bool:
    """`url`'s /readyz answers 200."""
    return status_or_none("GET", f"{url}/readyz", timeout=2) == 200


def _answers(client: docker.DockerClient) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # not up yet, whatever the reason
        return False


@dataclass
class Host:
    """One engine's part of the stack: its network, replicas and proxy."""

    client: docker.DockerClient
    provider: str  # the program's provider resource name: docker, docker-h2
    proxy_url: str = ""
    replicas: list[Replica] = field(default_factory=list)
    network_id: str = ""


@dataclass
class MultiHostDeployment:
    """The program's render for `dockerHosts` = the two engines, created host after host as `pulumi up` would."""

    rendered: RenderedStack
    prefix: str
    labels: dict[str, str]
    hosts: list[Host]
    second_engine: SecondEngine
    env: dict[str, str] = field(default_factory=dict)  # where every replica reaches Valkey and Novita
    created: dict[int, list[str]] = field(default_factory=dict)
    generation: int = 0

    @classmethod
    def create(
        cls, first: docker.DockerClient, second: SecondEngine, prefix: str, image_id: str, labels: dict[str, str]
    ) -> MultiHostDeployment:
        clients, urls = [first, second.client], ["unix:///var/run/docker.sock", second.url]
        config = {
            "dockerHosts": str(urls).replace("'", '"'),
            "apiReplicas": "1",
            "networkName": f"{prefix}-net",
            "containerName": f"{prefix}-api",
            "proxyContainerName": f"{prefix}-proxy",
            "proxyImage": HAPROXY_IMAGE,
            "proxyPullImage": "false",
            "apiHostAddress": "127.0.0.1",
            "apiPort": "3003",
            "baseImage": BASE_IMAGE,
            "imageName": API_IMAGE_TAG,
            **FAST_HEALTHCHECK,
        }
        rendered = render("prod", config, secrets={"apiKeys": CLIENT_KEYS})
        providers = sorted(r["name"] for r in rendered.of_type("pulumi:providers:docker"))
        deployment = cls(
            rendered,
            prefix,
            labels,
            [Host(client, name) for client, name in zip(clients, providers, strict=True)],
            second_engine=second,
        )
        try:
            deployment._create_all(image_id)
        except BaseException:
            deployment.remove()
            raise
        return deployment

    def _of_host(self, host: Host, type_: str, component: str = "") -> list[dict[str, Any]]:
        marker = f"::{host.provider}::"
        return sorted(
            (
                r
                for r in self.rendered.of_type(type_)
                if marker in f"{r['options']['provider']}::"
                and (not component or f"novita-gpu-api:index:{component}::" in (r["parent"] or ""))
            ),
            key=lambda r: r["name"],
        )

    def _create_all(self, image_id: str) -> None:
        for number, host in enumerate(self.hosts):
            self.created[number] = []
            (network,) = self._of_host(host, "docker:index/network:Network")
            host.network_id = id_of(
                host.client.networks.create(network["inputs"]["name"], driver="bridge", labels=self.labels)
            )
            if host.client is self.second_engine.client:
                self.second_engine.allow_forwarding(host.network_id)
        self._start_shared_services(self.hosts[-1], image_id)
        self.generation += 1
        for number, host in enumerate(self.hosts):
            host.replicas = self._create_replicas(number, host, image_id)
        for number, host in enumerate(self.hosts):
            (proxy,) = self._of_host(host, CONTAINER_TYPE, "EdgeProxy")
            port = free_port()  # both "hosts" share this machine's loopback: one port each
            inputs = {**proxy["inputs"], "ports": [{**proxy["inputs"]["ports"][0], "external": port}]}
            container = ApiContainer(host.client, container_spec(inputs), f"http://127.0.0.1:{port}", API_KEY)
            container.create_and_start(self.labels)
            self.created[number].append(container.container_id)
            container.wait_health("healthy", container.spec.provider.wait_timeout_seconds)
            host.proxy_url = container.api_url
            wait_for(f"host {number + 1}'s proxy to answer /readyz", partial(_ready, host.proxy_url), 30)

    def _create_replicas(self, number: int, host: Host, image_id: str) -> list[Replica]:
        """Host `number`s replicas of this generation, one after another, recorded for `remove`."""
        return create_replicas(
            host.client,
            self._of_host(host, CONTAINER_TYPE, "ApiService"),
            image_id,
            self.labels,
            self.generation,
            self.created[number],
            self.env,
        )

    def _start_shared_services(self, host: Host, image_id: str) -> None:
        """Valkey and the fake Novita on the last engine, published on its network's gateway (a host address)."""
        network = host.client.networks.get(host.network_id)
        gateway = network.attrs["IPAM"]["Config"][0]["Gateway"]
        valkey_port, novita_port = free_port(), free_port()
        valkey = host.client.containers.run(
            VALKEY_IMAGE,
            ["redis-server", "--port", "6379", "--protected-mode", "no", "--save", ""],
            detach=True,
            network=network.name,
            name=f"{self.prefix}-valkey",
            labels=self.labels,
            ports={"6379/tcp": (gateway, valkey_port)},
        )
        novita = host.client.containers.run(
            image_id,
            ["python", *fake_novita_arguments("0.0.0.0", FAKE_NOVITA_PORT)],
            detach=True,
            network=network.name,
            name=f"{self.prefix}-novita",
            labels=self.labels,
            healthcheck={"test": ["NONE"]},
            volumes={str(REPO_ROOT / "tests"): {"bind": "/srv/tests", "mode": "ro"}},
            ports={f"{FAKE_NOVITA_PORT}/tcp": (gateway, novita_port)},
        )
        self.created[len(self.hosts) - 1] += [id_of(valkey), id_of(novita)]
        self.env = {
            "REDIS_URL": f"redis://{gateway}:{valkey_port}/0",
            "NOVITA_BASE_URL": f"http://{gateway}:{novita_port}/gpu-instance/openapi/v1",
        }

    def roll(self, image_id: str) -> None:
        """Hosts one after another, replicas one after another (the depends_on chain); replaced ones go last."""
        self.generation += 1
        new = [self._create_replicas(number, host, image_id) for number, host in enumerate(self.hosts)]
        for host, replicas in zip(self.hosts, new, strict=True):
            delete_replaced(host.replicas)
            host.replicas = replicas

    def remove(self) -> None:
        for number, host in enumerate(self.hosts):
            remove_created(host.client, self.created.get(number, []), network_id=host.network_id)
