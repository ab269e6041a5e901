"""Throughput and latency of the API's read endpoints under wrk, each beside the hello-world baseline served by
the same uvicorn with the same flags, at the same concurrency, in the same run."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from bench import wrk_runner
from bench.report import Report, Row, ratio
from bench.services import ServerProcess, Services

SECTION = "HTTP throughput and latency (wrk, 1 thread, keep-alive)"
_JOB_TIMEOUT_SECONDS = 30.0
_QUIET_SECONDS = 0.5
_QUIESCE_TIMEOUT_SECONDS = 60.0
TERMINAL_JOB_STATES = frozenset({"succeeded", "failed", "dead"})


@dataclass(frozen=True)
class Endpoint:
    """A read to load, and the share of the baseline's throughput it should reach (None: no target)."""

    label: str
    path: str
    min_ratio: float | None = None


def create_instance(services: Services, api: ServerProcess) -> str:
    """Create one instance through the API against the fake Novita and wait for its job; returns its id."""
    body = {
        "name": "bench",
        "productName": "RTX 4090 24GB",
        "gpuNum": 1,
        "rootfsSize": 60,
        "imageUrl": "docker.io/library/ubuntu:22.04",
        "ports": [{"port": 8888, "type": "http"}],
        "envs": [],
    }
    headers = auth_headers(services)
    response = services.http.post(f"{api.url}/api/instances", json=body, headers=headers)
    if response.status_code != 202:
        raise RuntimeError(f"creating the benchmark instance failed: {response.status_code} {response.text[:300]}")
    accepted: dict[str, Any] = response.json()
    job: dict[str, Any] = {}
    deadline = time.monotonic() + _JOB_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        job = services.http.get(f"{api.url}/api/jobs/{accepted['jobId']}", headers=headers).json()
        if job.get("state") in TERMINAL_JOB_STATES:
            break
        time.sleep(0.1)
    if job.get("state") != "succeeded":
        raise RuntimeError(f"the benchmark instance's create job did not succeed: {job}")
    return str(accepted["instance"]["id"])


def wait_upstream_quiet(services: Services) -> None:
    """Wait until the API stops calling the fake Novita (requests of an earlier run may still be waiting for the
    Novita client's rate limiter after wrk hung up), so one run's backlog does not slow the next one down."""
    deadline = time.monotonic() + _QUIESCE_TIMEOUT_SECONDS
    previous = -1
    while time.monotonic() < deadline:
        total = sum(services.http.get(f"{services.novita.url}/_fake/calls").json()["calls"].values())
        if total == previous:
            return
        previous = total
        time.sleep(_QUIET_SECONDS)
    raise TimeoutError(f"the API kept calling the fake Novita for {_QUIESCE_TIMEOUT_SECONDS:g} s after a load run")


def auth_headers(services: Services) -> dict[str, str]:
    """The client API key header of this run."""
    return {"X-API-Key": services.client_api_key}


def endpoints(instance_id: str) -> list[Endpoint]:
    """The reads the issue names, with its targets."""
    return [
        Endpoint("GET /livez", "/livez", 0.70),
        Endpoint("GET /health", "/health"),
        Endpoint("GET /api/products (cached)", "/api/products", 0.50),
        Endpoint("GET /api/instances/{id}", f"/api/instances/{instance_id}"),
    ]


def run(
    services: Services,
    report: Report,
    api: ServerProcess,
    baseline: ServerProcess,
    framework: ServerProcess,
    instance_id: str,
    concurrency_levels: tuple[int, ...],
    seconds: float,
) -> list[tuple[Endpoint, int]]:
    """Load every endpoint at every level; returns the (endpoint, level) pairs that missed their target.

    `framework` (a FastAPI hello-world) gets a row of its own at each level: the share of the gap that is FastAPI's.
    """
    headers = auth_headers(services)
    reads = endpoints(instance_id)
    for endpoint in reads:  # fill the caches, so "cached" means cached from the first measured request
        services.http.get(f"{api.url}{endpoint.path}", headers=headers).raise_for_status()
    for warm_up in (f"{baseline.url}/", f"{framework.url}/", f"{api.url}/livez"):
        wrk_runner.run_wrk(warm_up, 16, 1)
    missed = []
    for level in concurrency_levels:
        base = wrk_runner.run_wrk(f"{baseline.url}/", level, seconds)
        floor = wrk_runner.run_wrk(f"{framework.url}/", level, seconds)
        report.add(
            Row(
                SECTION,
                f"FastAPI hello-world (reference), {describe_connections(level)}",
                floor.describe(),
                f"hello-world: {base.describe()}",
                ratio(floor.rps, base.rps),
            )
        )
        for endpoint in reads:
            wait_upstream_quiet(services)
            result = wrk_runner.run_wrk(f"{api.url}{endpoint.path}", level, seconds, headers)
            share = ratio(result.rps, base.rps)
            met = None
            if endpoint.min_ratio is not None:
                met = share is not None and share >= endpoint.min_ratio and result.errors == 0
                if not met:
                    missed.append((endpoint, level))
            report.add(
                Row(
                    SECTION,
                    f"{endpoint.label}, {describe_connections(level)}",
                    result.describe(),
                    f"hello-world: {base.describe()}",
                    share,
                    f">= {endpoint.min_ratio:.0%} of baseline req/s" if endpoint.min_ratio else "-",
                    met,
                )
            )
    return missed


def describe_connections(level: int) -> str:
    """`1 connection`, `16 connections`."""
    return f"{level} connection{'s' if level > 1 else ''}"
