"""Dashboard pages at fleet size: server time per page (the `Server-Timing` the dashboard sends) with 1,000
instances, and the Novita calls the pages cause.

The fleet is 1,000 instances on the fake Novita, each with its record in Valkey (written through `InstanceStore`,
as the create job would leave it, so the list index holds them all, with its price fixed and its cost meter open). List pages read the index: newest first and by
name only the page's records; price, GPU and state orders the newest `SORT_WINDOW` matching records. Novita is
listed only by the background sync, whether or not anyone looks, so its calls are counted with and without pages.

Standalone: `python -m bench.ui_pages [--instances 1000] [--requests 30]` prints the rows as Markdown; `python -m
bench` runs it as one of its sections.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import httpx
from pydantic import SecretStr

from app.core.config import Settings
from app.core.redis import RedisManager
from app.fleet.schemas import InstanceRecord, InstanceState, PortSpec
from app.fleet.store import InstanceStore
from app.fleet.views import upstream_name
from app.instances.service import new_record_id
from app.ui.views import SORT_WINDOW
from bench.report import Report, Row
from bench.services import ServerProcess, Services
from bench.upstream import _forget_cache

SECTION = "Dashboard pages at fleet size (server time from Server-Timing, keep-alive, one client)"
TARGET_MS = 300.0
PRODUCT_ID = "4090-us-ca-6"
PRICE_PER_GPU_HOUR = Decimal("0.67")  # the fake's RTX 4090, on demand
_TIMING = re.compile(r"app;dur=([0-9.]+)")
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def seed_fleet(services: Services, count: int) -> list[str]:
    """`count` running instances on the fake Novita with their records in Valkey; returns the record ids."""
    novita = httpx.Client(
        base_url=f"{services.novita.url}/gpu-instance/openapi/v1",
        headers={"Authorization": f"Bearer {services.novita_api_key}"},
        timeout=10.0,
    )
    now = time.time()
    records: list[InstanceRecord] = []
    with novita:
        for number in range(count):
            record_id, name = new_record_id(), f"fleet-{number:04d}"
            created = novita.post(
                "/gpu/instance/create",
                json={
                    "name": upstream_name(name, record_id),
                    "productId": PRODUCT_ID,
                    "gpuNum": 1 + number % 2,
                    "rootfsSize": 60,
                    "imageUrl": "docker.io/library/ubuntu:22.04",
                    "kind": "gpu",
                    "ports": "8888/http",
                },
            )
            created.raise_for_status()
            records.append(
                InstanceRecord(
                    id=record_id,
                    name=name,
                    upstream_name=upstream_name(name, record_id),
                    novita_instance_id=created.json()["id"],
                    state=InstanceState.RUNNING,
                    novita_status="running",
                    product_id=PRODUCT_ID,
                    gpu_num=1 + number % 2,
                    rootfs_size=60,
                    billing_mode="onDemand",
                    price_per_hour=str(PRICE_PER_GPU_HOUR * (1 + number % 2)),  # fixed at create; the meter is open
                    image_url="docker.io/library/ubuntu:22.04",
                    ports=[PortSpec(port=8888, type="http")],
                    env_keys=["MODE"],
                    created_at=now - number,
                    updated_at=now,
                    ready_at=now - number + 30,
                )
            )
    asyncio.run(_store(services, records))
    return [record.id for record in records]


async def _store(services: Services, records: list[InstanceRecord]) -> None:
    redis = RedisManager(
        Settings(redis_url=SecretStr(services.redis.url), novita_api_key=SecretStr("unused-by-the-store"))
    )
    try:
        store = InstanceStore(redis)
        for record in records:
            await store.create(record, {})
    finally:
        await redis.close()


def sign_in(services: Services, api: ServerProcess) -> httpx.Client:
    """A client holding a dashboard session (the key goes through the sign-in form, as from a browser)."""
    client = httpx.Client(base_url=api.url, timeout=30.0)
    form = client.get("/ui/login")
    token = _CSRF.search(form.text)
    if form.status_code != 200 or token is None:
        raise RuntimeError(f"the sign-in form did not load: {form.status_code}")
    signed_in = client.post("/ui/login", data={"csrf_token": token.group(1), "api_key": services.client_api_key})
    if signed_in.status_code != 303:
        raise RuntimeError(f"sign-in failed: {signed_in.status_code}")
    return client


def pages(instance_id: str, instances: int) -> list[tuple[str, str]]:
    """(label, path) of each page measured (25 instances a page unless said otherwise)."""
    last = max(1, -(-instances // 25))
    return [
        (f"instances, newest first, page 1 of {last}", "/ui/instances"),
        (f"instances, newest first, page {last} of {last}", f"/ui/instances?page={last}"),
        (
            f"instances sorted by name (sorted in Valkey), page {last // 2 or 1}",
            f"/ui/instances?sort=name&page={last // 2 or 1}",
        ),
        (
            f"instances sorted by price (the newest {SORT_WINDOW:,} sorted in the app), 100 per page",
            "/ui/instances?sort=price&pageSize=100",
        ),
        ("instances filtered (status + name)", "/ui/instances?status=running&name=fleet-09"),
        ("live rows fragment (polled every 3 s)", "/ui/instances/rows"),
        ("one instance", f"/ui/instances/{instance_id}"),
        ("one instance's live panel (polled every 1 s)", f"/ui/instances/{instance_id}/panel"),
        ("create form", "/ui/instances/new"),
        ("jobs: running, failed and dead letters", "/ui/jobs"),
        ("costs by team and by day, last 14 days (every instance's meter open)", "/ui/costs"),
        ("budgets and their use", "/ui/budgets"),
        ("API keys (admins)", "/ui/keys"),
    ]


def _novita_calls(services: Services, during: Callable[[], None]) -> dict[str, int]:
    """The fake Novita's calls, by route, while `during` runs."""
    services.http.delete(f"{services.novita.url}/_fake/calls").raise_for_status()
    during()
    calls: dict[str, int] = services.http.get(f"{services.novita.url}/_fake/calls").json()["calls"]
    return calls


def _calls_text(calls: dict[str, int], instances: int) -> str:
    listed = calls.get("GET /gpu/instances", 0)
    return f"{sum(calls.values())} calls ({listed} list pages of Novita's {instances:,} instances)"


def _server_ms(response: httpx.Response) -> float:
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.url.path} answered {response.status_code}")
    match = _TIMING.search(response.headers.get("server-timing", ""))
    if match is None:
        raise RuntimeError(f"{response.request.url.path} sent no Server-Timing")
    return float(match.group(1))


def _wall_ms(client: httpx.Client, path: str, headers: dict[str, str], requests: int) -> float:
    """Median wall time of GET `path` seen by the client (warm cache)."""
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        client.get(path, headers=headers).raise_for_status()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def measure(services: Services, report: Report, instances: int, requests: int) -> None:
    """Run the section on an API process of its own (stopped at the end)."""
    api = services.start_api("api-dashboard")
    try:
        services.wait_ready(api, "/readyz")
        run(services, report, api, instances, requests)
    finally:
        services.stop(api)


def run(services: Services, report: Report, api: ServerProcess, instances: int, requests: int) -> None:
    """Seed the fleet, load the list once with nothing cached, then each page `requests` times (warm cache)."""
    ids = seed_fleet(services, instances)
    client = sign_in(services, api)
    try:
        _forget_cache(services)
        cold = _server_ms(client.get("/ui/instances"))
        report.add(
            Row(
                SECTION,
                f"instances page 1, cold cache (Novita lists {instances:,} instances), {instances:,} instances",
                f"{cold:.1f} ms (one request)",
                target=f"< {TARGET_MS:g} ms server time",
                met=cold < TARGET_MS,
            )
        )
        for label, path in pages(ids[0], instances):
            client.get(path)  # warm the caches (Novita list, catalogue) the page shares with the API
            times = sorted(_server_ms(client.get(path)) for _ in range(requests))
            p50, p95 = statistics.median(times), times[max(0, round(0.95 * len(times)) - 1)]
            report.add(
                Row(
                    SECTION,
                    f"{label}, {instances:,} instances",
                    f"p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {times[-1]:.1f} ms ({requests} requests)",
                    target=f"< {TARGET_MS:g} ms server time",
                    met=p95 < TARGET_MS,
                )
            )
        # The same service call through the API, wall time on both sides: what the page adds to it.
        ui_wall = _wall_ms(client, "/ui/instances", {}, requests)
        api_wall = _wall_ms(client, "/api/instances?pageSize=25", {"X-API-Key": services.client_api_key}, requests)
        report.add(
            Row(
                SECTION,
                f"instances page 1 vs GET /api/instances?pageSize=25, wall time, {instances:,} instances",
                f"p50 {ui_wall:.1f} ms",
                f"API: p50 {api_wall:.1f} ms",
                ui_wall / api_wall,
            )
        )
        idle = _novita_calls(services, lambda: time.sleep(10.0))
        loads = 0

        def watch() -> None:  # a person watching the list: the page polls its rows
            nonlocal loads
            started = time.monotonic()
            while time.monotonic() - started < 10.0:
                client.get("/ui/instances/rows").raise_for_status()
                loads += 1

        watched = _novita_calls(services, watch)
        report.add(
            Row(
                SECTION,
                f"Novita calls in 10 s while the rows refreshed {loads} times",
                _calls_text(watched, instances),
                f"10 s with no page: {_calls_text(idle, instances)}",
            )
        )
    finally:
        client.close()


def main() -> None:
    """Run this section alone and print its rows."""
    parser = argparse.ArgumentParser(prog="python -m bench.ui_pages", description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    report = Report(
        command=f"python -m bench.ui_pages --instances {args.instances} --requests {args.requests}", quick=False
    )
    with tempfile.TemporaryDirectory(prefix="bench-ui-") as work_dir, Services(Path(work_dir)) as services:
        measure(services, report, args.instances, args.requests)
    print(report.markdown())


if __name__ == "__main__":
    main()
