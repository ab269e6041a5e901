"""Replicas behind the edge proxy on the real engine, created from the program's bridge-mode render, plus the steady
client load the rollout tests run under.

The harness plays what `pulumi up` does with the rendered resources: a private network, the local Valkey, the
replicas one after another (each waited for until healthy: `wait=True`, chained by `depends_on`), the proxy. A
rollout (`roll`) is Pulumi's create-before-delete replacement in the program's dependency order: each new replica is
created and must turn healthy before the next is created; the old ones are deleted at the end, as Pulumi deletes
replaced resources after the new ones exist. The fake Novita runs as a container of the run's network (the replicas
cannot reach the host's loopback); the test process only ever talks to ports published on 127.0.0.1.
"""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors

from tests.e2e.container_spec import container_spec
from tests.e2e.harness import (
    API_IMAGE_TAG,
    BASE_IMAGE,
    CADDY_IMAGE,
    CONTAINER_TYPE,
    FAST_HEALTHCHECK,
    HAPROXY_IMAGE,
    REPO_ROOT,
    VALKEY_IMAGE,
    ApiContainer,
    RenderedStack,
    WaitTimeout,
    fake_novita_arguments,
    http,
    id_of,
    remove_created,
    render,
    status_or_none,
    wait_for,
)
from tests.infra.harness import TEST_SECRETS
from tests.loopback import free_port

FAKE_NOVITA_ALIAS = "novita-fake"
FAKE_NOVITA_PORT = 8080
API_KEY = TEST_SECRETS["apiKeys"].split(":", 1)[1]
# The API limits requests per client key name (600 a minute by default): the load spreads over several keys.
LOAD_KEYS = [f"test-load-client-key-{number}" for number in range(4)]
CLIENT_KEYS = ",".join([TEST_SECRETS["apiKeys"], *(f"load{number}:{key}" for number, key in enumerate(LOAD_KEYS))])


class RolloutFailed(AssertionError):
    """A new replica never turned healthy: the rollout stops there, naming it."""


@dataclass
class Replica:
    """One API replica: the program's resource name and the container created for it."""

    resource_name: str
    container: ApiContainer

    @property
    def name(self) -> str:
        return self.container.spec.name


def _component_containers(rendered: RenderedStack, component: str) -> list[dict[str, Any]]:
    marker = f"novita-gpu-api:index:{component}::"
    return [c for c in rendered.of_type(CONTAINER_TYPE) if c["parent"] and marker in c["parent"]]


def create_replicas(
    client: docker.DockerClient,
    rendered_replicas: list[dict[str, Any]],
    image_id: str,
    labels: dict[str, str],
    generation: int,
    created: list[str],
    env: dict[str, str] | None = None,
) -> list[Replica]:
    """Create the rendered replicas in order, each healthy before the next (wait=True + the depends_on chain); the
    first that is not healthy in time stops it, named, with its last probe output and log line. `env` replaces
    variables of the rendered environment (for engines that reach Valkey or Novita elsewhere)."""
    replicas = []
    for rendered in rendered_replicas:
        resource_name = rendered["name"]
        envs = [entry for entry in rendered["inputs"]["envs"] if entry.split("=", 1)[0] not in (env or {})]
        inputs = {**rendered["inputs"], "image": image_id, "envs": envs + [f"{k}={v}" for k, v in (env or {}).items()]}
        spec = container_spec(inputs, auto_name=f"{resource_name}-g{generation}")
        replica = Replica(resource_name, ApiContainer(client, spec, "", API_KEY))
        replica.container.create_and_start(labels)
        created.append(replica.container.container_id)
        replicas.append(replica)
        try:
            replica.container.wait_health("healthy", spec.provider.wait_timeout_seconds)
        except WaitTimeout:
            probes = replica.container.health_log()
            log_lines = replica.container.logs().strip().splitlines()
            raise RolloutFailed(
                f"replica {resource_name} ({replica.name}) did not turn healthy within "
                f"{spec.provider.wait_timeout_seconds}s; last probe: {probes[-1] if probes else 'none'!r}; "
                f"last log line: {log_lines[-1] if log_lines else 'none'!r}"
            ) from None
    return replicas


def create_instance(proxy_url: str) -> str:
    """An instance record through a proxy, for `GET /api/instances/{id}` in the load."""
    status, body = http(
        "POST",
        f"{proxy_url}/api/instances",
        body={"name": "rollout", "productId": "4090-us-ca-6", "imageUrl": "nginx:latest"},
        headers={"X-API-Key": API_KEY},
    )
    assert status == 202, body
    return body["instance"]["id"]


def delete_replaced(replicas: list[Replica]) -> None:
    """What Pulumi does to replaced replicas at the end of an update: stop (SIGTERM, grace period), remove."""
    for old in replicas:
        grace = old.container.spec.provider.destroy_grace_seconds or 10
        old.container.client.api.stop(old.container.container_id, timeout=grace)
        old.container.remove()


@dataclass
class ProxiedDeployment:
    """One bridge-mode stack on the engine; `proxy_url` is the proxy's port on 127.0.0.1."""

    client: docker.DockerClient
    rendered: RenderedStack
    prefix: str
    labels: dict[str, str]
    proxy_url: str = ""
    fake_novita_url: str = ""
    replicas: list[Replica] = field(default_factory=list)
    proxy: ApiContainer | None = None
    tls: ApiContainer | None = None  # the HTTPS front, when the stack sets a domain
    created: list[str] = field(default_factory=list)
    network_id: str = ""
    volumes: list[str] = field(default_factory=list)
    _generations: itertools.count = field(default_factory=lambda: itertools.count(1))

    @classmethod
    def create(
        cls,
        client: docker.DockerClient,
        stack: str,
        prefix: str,
        image_id: str,
        labels: dict[str, str],
        overrides: dict[str, str],
    ) -> ProxiedDeployment:
        api_port = free_port()
        config = {
            "networkMode": "bridge",
            "networkName": f"{prefix}-net",
            "containerName": f"{prefix}-api",
            "apiHostAddress": "127.0.0.1",
            "apiPort": str(api_port),
            "proxyContainerName": f"{prefix}-proxy",
            "proxyImage": HAPROXY_IMAGE,
            "proxyPullImage": "false",
            "tlsContainerName": f"{prefix}-tls",
            "tlsImage": CADDY_IMAGE,
            "tlsPullImage": "false",
            "valkeyMode": "local",
            "valkeyContainerName": f"{prefix}-valkey",
            "valkeyImage": VALKEY_IMAGE,
            "valkeyPullImage": "false",
            "valkeyServerBinary": "redis-server",
            "valkeyCliBinary": "redis-cli",
            "novitaBaseUrl": f"http://{FAKE_NOVITA_ALIAS}:{FAKE_NOVITA_PORT}/gpu-instance/openapi/v1",
            "baseImage": BASE_IMAGE,
            "imageName": API_IMAGE_TAG,
            **FAST_HEALTHCHECK,
            **overrides,
        }
        rendered = render(stack, config, secrets={"apiKeys": CLIENT_KEYS})
        deployment = cls(client, rendered, prefix, labels, proxy_url=f"http://127.0.0.1:{api_port}")
        try:
            deployment._create_all(image_id)
        except BaseException:
            deployment.remove()
            raise
        return deployment

    def _create_all(self, image_id: str) -> None:
        (network,) = self.rendered.of_type("docker:index/network:Network")
        self.network_id = id_of(
            self.client.networks.create(network["inputs"]["name"], driver="bridge", labels=self.labels)
        )
        (valkey,) = _component_containers(self.rendered, "Valkey")
        valkey_spec = container_spec(valkey["inputs"])
        self._create_volumes(valkey_spec)
        valkey_id = valkey_spec.create(self.client, self.labels)
        self.created.append(valkey_id)
        self.client.api.start(valkey_id)
        self._start_fake_novita(image_id, network["inputs"]["name"])
        wait_for("the local Valkey to be healthy", lambda: self._health(valkey_id) == "healthy", 60)
        self.replicas = self._create_replicas(image_id)
        (proxy,) = _component_containers(self.rendered, "EdgeProxy")
        self.proxy = ApiContainer(self.client, container_spec(proxy["inputs"]), self.proxy_url, API_KEY)
        self.proxy.create_and_start(self.labels)
        self.created.append(self.proxy.container_id)
        self.proxy.wait_health("healthy", self.proxy.spec.provider.wait_timeout_seconds)
        wait_for(
            "the proxy to answer /readyz through a replica",
            lambda: status_or_none("GET", f"{self.proxy_url}/readyz", timeout=2) == 200,
            30,
        )
        for tls in _component_containers(self.rendered, "TlsFront"):
            spec = container_spec(tls["inputs"])
            self._create_volumes(spec)
            self.tls = ApiContainer(self.client, spec, "", API_KEY)
            self.tls.create_and_start(self.labels)
            self.created.append(self.tls.container_id)
            self.tls.wait_health("healthy", spec.provider.wait_timeout_seconds)

    def _create_volumes(self, spec) -> None:
        for volume in spec.host_config_kwargs.get("binds", {}):
            self.client.volumes.create(volume, labels=self.labels)
            self.volumes.append(volume)

    def _start_fake_novita(self, image_id: str, network: str) -> None:
        port = free_port()
        host_config = self.client.api.create_host_config(
            binds={str(REPO_ROOT / "tests"): {"bind": "/srv/tests", "mode": "ro"}},
            port_bindings={FAKE_NOVITA_PORT: ("127.0.0.1", port)},
        )
        created = self.client.api.create_container(
            image_id,
            name=f"{self.prefix}-novita",
            labels=self.labels,
            ports=[FAKE_NOVITA_PORT],
            host_config=host_config,
            healthcheck={"test": ["NONE"]},  # the API image's probe means nothing for the fake
            command=["python", *fake_novita_arguments("0.0.0.0", FAKE_NOVITA_PORT)],
            networking_config=self.client.api.create_networking_config(
                # arg-type: types-docker wants one EndpointConfig; the SDK takes {network: EndpointConfig}
                {network: self.client.api.create_endpoint_config(aliases=[FAKE_NOVITA_ALIAS])}  # type: ignore[arg-type]
            ),
        )
        self.created.append(created["Id"])
        self.client.api.start(created["Id"])
        self.fake_novita_url = f"http://127.0.0.1:{port}"
        wait_for(
            "the fake Novita to answer", lambda: status_or_none("GET", f"{self.fake_novita_url}/_fake/calls") == 200, 30
        )

    def _health(self, container_id: str) -> str:
        return (self.client.api.inspect_container(container_id)["State"].get("Health") or {}).get("Status", "none")

    def _create_replicas(self, image_id: str) -> list[Replica]:
        return create_replicas(
            self.client,
            _component_containers(self.rendered, "ApiService"),
            image_id,
            self.labels,
            next(self._generations),
            self.created,
        )

    def roll(self, image_id: str) -> float:
        """Pulumi's create-before-delete rollout to `image_id`; returns its seconds. Old replicas go last."""
        started = time.monotonic()
        new = self._create_replicas(image_id)
        delete_replaced(self.replicas)
        self.replicas = new
        return time.monotonic() - started

    def create_instance(self) -> str:
        return create_instance(self.proxy_url)

    def remove(self) -> None:
        remove_created(self.client, self.created, self.volumes, self.network_id)


@dataclass
class Failure:
    at: float
    path: str
    detail: str


class SteadyLoad:
    """An open-loop client on 127.0.0.1: `rate` GETs a second (`/livez`, `/api/products`, `/api/instances/{id}` in
    turn), each sent on schedule from a pool of workers whether or not earlier ones have been answered, so a request
    held up on a frozen replica does not slow the load down.

    A request fails when it gets no answer or any status but 200. The client waits up to `timeout` for an answer:
    a request caught on a frozen replica is resent by the proxy after its server timeout (30 s). Requests rotate over
    the load's client keys, each staying well under the API's per-key rate limit (600 a minute).
    """

    def __init__(self, base_url: str, instance_id: str, rate: float = 30.0, timeout: float = 45.0):
        self.paths = ["/livez", "/api/products", f"/api/instances/{instance_id}"]
        self.base_url, self.interval, self.timeout = base_url, 1.0 / rate, timeout
        self.sent = 0
        self.failures: list[Failure] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="steady-load")
        self._futures: list[Future] = []
        self._dispatcher = threading.Thread(target=self._dispatch, daemon=True)
        self.started = self.stopped = 0.0

    def __enter__(self) -> SteadyLoad:
        self.started = time.monotonic()
        self._dispatcher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._dispatcher.join()
        self.stopped = time.monotonic()
        wait(self._futures, timeout=self.timeout + 5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def rate(self) -> float:
        """Requests sent per second while the load ran."""
        return self.sent / max((self.stopped or time.monotonic()) - self.started, 1e-9)

    def _dispatch(self) -> None:
        for number in itertools.count():
            due = self.started + number * self.interval
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            self._futures.append(self._pool.submit(self._send, number))
            self.sent += 1

    def _send(self, number: int) -> None:
        path = self.paths[number % len(self.paths)]
        key = LOAD_KEYS[number % len(LOAD_KEYS)]
        try:
            status, body = http("GET", f"{self.base_url}{path}", headers={"X-API-Key": key}, timeout=self.timeout)
            detail = None if status == 200 else f"{status} {str(body)[:200]}"
        except OSError as error:
            detail = f"{type(error).__name__}: {error}"
        if detail is not None:
            with self._lock:
                self.failures.append(Failure(time.monotonic() - self.started, path, detail))
