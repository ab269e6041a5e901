"""The edge proxy on the real engine (optional): its overhead (wrk through HAProxy vs straight to one replica, same
run, same replica image) and a rollout of 2 replicas under steady load (time, failed requests).

Deployed the way tests/e2e deploys the program's bridge-mode render (`tests/e2e/proxied.py`). Skipped with a note
when no Docker engine answers or a locally built test image is missing (scripts/build-base-image.sh).
"""

from __future__ import annotations

import contextlib
import io
import time
import uuid

import docker
import docker.errors

from bench import container, wrk_runner
from bench.report import Report, Row, ratio
from bench.services import free_port
from tests.e2e.container_spec import container_spec
from tests.e2e.harness import (
    BASE_IMAGE,
    HAPROXY_IMAGE,
    VALKEY_IMAGE,
    ApiContainer,
    id_of,
    status_or_none,
    wait_for,
)
from tests.e2e.proxied import API_KEY, ProxiedDeployment, SteadyLoad

SECTION = "Edge proxy (HAProxy 2.6, Debian) and rollouts"
LABEL = "novita-gpu-api.bench"
CONNECTIONS = 16
# Unauthenticated paths, so the API's per-key rate limit does not turn the load into 429s.
PATHS = (("/livez", "GET /livez (answered before routing)"), ("/readyz", "GET /readyz (one Valkey ping)"))


def run(report: Report, seconds: float, build_timeout_seconds: int) -> None:
    """Measure, or add a note saying why it was skipped."""
    try:
        client = docker.from_env(version="auto", timeout=build_timeout_seconds)
        client.ping()
    except Exception as error:  # whatever stops us reaching the engine means "no engine"
        report.note(f"edge proxy rows skipped: no Docker engine answers ({type(error).__name__})")
        return
    labels = {LABEL: uuid.uuid4().hex[:8]}
    try:
        missing = [tag for tag in (BASE_IMAGE, VALKEY_IMAGE, HAPROXY_IMAGE) if not client.images.list(name=tag)]
        if missing:
            report.note(f"edge proxy rows skipped: {', '.join(missing)} missing (scripts/build-base-image.sh)")
            return
        image, _ = container._build(client)
        if wrk_runner.available():
            _overhead(client, report, image.id, labels, seconds)
        else:
            report.note("edge proxy overhead rows skipped: wrk is not installed (`apt-get install -y wrk`)")
        _rollout(client, report, image.id, labels)
    finally:
        for leftover in client.containers.list(all=True, filters={"label": f"{LABEL}={labels[LABEL]}"}):
            leftover.remove(force=True, v=True)
        client.close()


def _overhead(
    client: docker.DockerClient, report: Report, image_id: str, labels: dict[str, str], seconds: float
) -> None:
    deployment = ProxiedDeployment.create(
        client, "prod", f"bench-{labels[LABEL]}-overhead", image_id, labels, {"apiReplicas": "1"}
    )
    try:
        direct = _direct_replica(client, deployment, image_id, labels)
        for path, label in PATHS:
            # Both through Docker's published-port proxy on loopback; the replicas have the same definition and limits.
            straight = wrk_runner.run_wrk(f"{direct.api_url}{path}", CONNECTIONS, seconds)
            proxied = wrk_runner.run_wrk(f"{deployment.proxy_url}{path}", CONNECTIONS, seconds)
            report.add(
                Row(
                    SECTION,
                    f"{label}, {CONNECTIONS} connections: through the proxy (vs one replica direct)",
                    proxied.describe(),
                    straight.describe(),
                    ratio(proxied.rps, straight.rps),
                )
            )
    finally:
        deployment.remove()


def _direct_replica(
    client: docker.DockerClient, deployment: ProxiedDeployment, image_id: str, labels: dict[str, str]
) -> ApiContainer:
    """A replica from the same rendered definition, outside the proxy's pool, published on loopback for wrk."""
    port = free_port()
    rendered = next(
        c
        for c in deployment.rendered.of_type("docker:index/container:Container")
        if "novita-gpu-api:index:ApiService::" in (c["parent"] or "")
    )
    network = rendered["inputs"]["networksAdvanced"][0]["name"]
    spec = container_spec(
        {
            **rendered["inputs"],
            "image": image_id,
            "networksAdvanced": [{"name": network}],
            "ports": [{"internal": 3003, "external": port, "ip": "127.0.0.1"}],
        },
        auto_name=f"{deployment.prefix}-direct",
    )
    replica = ApiContainer(client, spec, f"http://127.0.0.1:{port}", API_KEY)
    replica.create_and_start(labels)
    deployment.created.append(replica.container_id)
    replica.wait_health("healthy", spec.provider.wait_timeout_seconds)
    wait_for("the direct replica to be ready", lambda: status_or_none("GET", f"{replica.api_url}/readyz") == 200, 30)
    return replica


def _rollout(client: docker.DockerClient, report: Report, image_id: str, labels: dict[str, str]) -> None:
    changed, _ = client.images.build(
        fileobj=io.BytesIO(f"FROM {image_id}\nLABEL bench.generation=2\n".encode()),
        tag=f"novita-gpu-api:bench-{labels[LABEL]}-changed",
        rm=True,
    )
    deployment = ProxiedDeployment.create(
        client, "prod", f"bench-{labels[LABEL]}-rollout", image_id, labels, {"apiReplicas": "2"}
    )
    try:
        with SteadyLoad(deployment.proxy_url, deployment.create_instance()) as load:
            time.sleep(2)
            seconds = deployment.roll(id_of(changed))
            time.sleep(2)
        report.add(
            Row(SECTION, "rollout of 2 replicas (test healthcheck 3s/2s/3) under steady load", f"{seconds:.1f} s", "-")
        )
        report.add(
            Row(
                SECTION,
                "failed requests during that rollout",
                f"{len(load.failures)} of {load.sent} ({load.rate:.0f} req/s)",
                "-",
                None,
                "0",
                not load.failures,
            )
        )
    finally:
        deployment.remove()
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(id_of(changed), force=True)


def main() -> None:
    """`python -m bench.edge_proxy [seconds]`: this section alone (the full run is `python -m bench`)."""
    import shlex
    import sys

    report = Report(command=shlex.join(["python", "-m", "bench.edge_proxy", *sys.argv[1:]]), quick=False)
    run(report, float(sys.argv[1]) if len(sys.argv) > 1 else 10.0, 600)
    print(report.markdown())


if __name__ == "__main__":
    main()
