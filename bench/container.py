"""The real container (optional): image size, and container start to Docker `healthy` under the production
limits (0.5 CPU, 512 MB, read-only root, tini), beside the bare host process's start to /readyz from this run.

Skipped with a note when no Docker engine answers, when the locally built base image is missing
(scripts/build-base-image.sh makes it), or when the image cannot be built in time.
"""

from __future__ import annotations

import os
import time
from typing import Any

import docker
import docker.errors

from bench.report import Report, Row, ms, ratio
from bench.services import LOOPBACK, REPO_ROOT, Services, answers_200, free_port
from tests.e2e.harness import id_of

SECTION = "Container (Docker engine, production limits)"
BASE_IMAGE = "novita-gpu-api/base:bookworm"
IMAGE_TAG = "novita-gpu-api:bench"
LABEL = "novita-gpu-api.bench"
# The base image carries the host's CA bundle here (scripts/build-base-image.sh); same build args as tests/e2e,
# so the e2e suite's layer cache makes this build quick.
_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
_PIP_BUILD_ARGS = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST")
_HEALTHY_TIMEOUT_SECONDS = 90.0
_NANOSECONDS = 1_000_000_000
# What the Pulumi program passes the container (docs/architecture.md); the host's other variables stay out.
_CONTAINER_VARIABLES = frozenset(
    {
        "APP_ENV",
        "HOST",
        "PORT",
        "LOG_LEVEL",
        "REDIS_URL",
        "NOVITA_API_KEY",
        "NOVITA_BASE_URL",
        "API_KEYS",
        "API_KEY_HASH_SECRET",
    }
)


def run(services: Services, report: Report, host_ready_seconds: float | None, build_timeout_seconds: int) -> None:
    """Measure the container, or add a note saying why it was skipped."""
    try:
        client = docker.from_env(version="auto", timeout=build_timeout_seconds)
        client.ping()
    except Exception as error:  # whatever stops us reaching the engine means "no engine"
        report.note(f"container rows skipped: no Docker engine answers ({type(error).__name__})")
        return
    try:
        if not client.images.list(name=BASE_IMAGE):
            report.note(f"container rows skipped: base image {BASE_IMAGE} missing (scripts/build-base-image.sh)")
            return
        try:
            image, seconds = _build(client)
        except (docker.errors.BuildError, docker.errors.APIError, OSError) as error:
            report.note(f"container rows skipped: building {IMAGE_TAG} failed or timed out ({type(error).__name__})")
            return
        report.note(f"built {IMAGE_TAG} from app/ in {seconds:.0f} s (layer cache shared with tests/e2e)")
        base_size = client.images.get(BASE_IMAGE).attrs["Size"] / 1e6
        size = image.attrs["Size"] / 1e6
        report.add(
            Row(SECTION, "image size", f"{size:.0f} MB", f"{base_size:.0f} MB ({BASE_IMAGE})", ratio(size, base_size))
        )
        _start_to_healthy(client, services, report, host_ready_seconds)
    finally:
        for container in client.containers.list(all=True, filters={"label": LABEL}):
            container.remove(force=True, v=True)
        client.close()


def _build(client: docker.DockerClient) -> tuple[Any, float]:
    build_args = {"BASE_IMAGE": BASE_IMAGE, "PIP_CERT": _CA_BUNDLE}
    build_args.update({name: os.environ[name] for name in _PIP_BUILD_ARGS if os.environ.get(name)})
    started = time.monotonic()
    image, _ = client.images.build(
        path=str(REPO_ROOT / "app"), tag=IMAGE_TAG, buildargs=build_args, network_mode="host", rm=True, forcerm=True
    )
    return image, time.monotonic() - started


def _start_to_healthy(
    client: docker.DockerClient, services: Services, report: Report, host_ready_seconds: float | None
) -> None:
    port = free_port()
    env = {
        key: value
        for key, value in services.api_env(PORT=str(port), HOST=LOOPBACK).items()
        if key in _CONTAINER_VARIABLES
    }
    container = client.containers.create(
        IMAGE_TAG,
        environment=env,
        network_mode="host",
        labels={LABEL: "1"},
        init=True,
        nano_cpus=_NANOSECONDS // 2,
        mem_limit="512m",
        memswap_limit="512m",
        read_only=True,
        tmpfs={"/tmp": "rw,noexec,nosuid,nodev,size=64m"},
        # A short interval so the figure is the app's start-up, not the probe's schedule (production: 30 s).
        healthcheck={
            "test": ["CMD", "python", "-m", "app.healthcheck"],
            "interval": _NANOSECONDS // 4,
            "timeout": 2 * _NANOSECONDS,
            "retries": 3,
            "start_period": 60 * _NANOSECONDS,
        },
    )
    started = time.monotonic()
    container.start()
    ready_seconds: float | None = None
    deadline = started + _HEALTHY_TIMEOUT_SECONDS
    status = "starting"
    while time.monotonic() < deadline:
        if ready_seconds is None and answers_200(services.http, f"http://{LOOPBACK}:{port}/readyz"):
            ready_seconds = time.monotonic() - started
        status = client.api.inspect_container(id_of(container))["State"].get("Health", {}).get("Status", "none")
        if status == "healthy":
            break
        time.sleep(0.05)
    healthy_seconds = time.monotonic() - started
    if status != "healthy":
        report.note(
            f"the bench container did not turn healthy within {_HEALTHY_TIMEOUT_SECONDS:g} s "
            f"(last status {status}); logs: {container.logs()[-500:]!r}"
        )
        return
    host = f"{ms(host_ready_seconds)} (host process to /readyz, no limits)" if host_ready_seconds else "-"
    if ready_seconds is not None:
        report.add(
            Row(
                SECTION,
                "container start to /readyz 200 (0.5 CPU, 512 MB)",
                ms(ready_seconds),
                host,
                ratio(ready_seconds, host_ready_seconds) if host_ready_seconds else None,
            )
        )
    report.add(
        Row(
            SECTION,
            "container start to Docker `healthy` (probe every 250 ms)",
            ms(healthy_seconds),
            host,
            ratio(healthy_seconds, host_ready_seconds) if host_ready_seconds else None,
            "< 60 s (the seed expected 60-120 s)",
            healthy_seconds < 60,
        )
    )
