"""`python -m bench --scale [--quick]`: the fleet-scale figures of issue 15 at 1,000 and 10,000 managed instances.

For each fleet size: the fake Novita is preloaded with N running instances (one control call) and our records and
their list index are written straight into Valkey through `InstanceStore` (as if the API had created them), then
the API starts as in the container. Measured, beside the same run's baseline (the bare ASGI hello-world served by
the same uvicorn, for the latency rows; the issue's figures from before the change otherwise):
start-up to ready, list latency cold (the first 20 requests after start, from a Python client) and warm, one at a time
and at 16 concurrent (from wrk, a load generator in C: a Python client at 16 concurrent is itself saturated, and its
own queueing, not the server, made most of the p99 it measured, even for the hello-world),
RSS after the concurrent lists, the Novita calls of one full background sync, a cost-guard sweep, and a burst of
creates through the API: accepted in, done in, against the time the Novita calls they needed take at the rate.
The section is written into docs/performance.md between markers, so the other benchmarks' table is kept.
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import SecretStr

from app.core.config import Settings
from app.core.redis import RedisManager
from app.fleet.schemas import InstanceRecord
from app.fleet.store import InstanceStore
from app.fleet.views import connection_details, upstream_name
from app.instances.service import new_record_id
from app.jobs.queue import job_key
from app.lifecycle.activity import ActivityStore
from app.lifecycle.cost_guards import CostGuardExecutor, CostGuardPolicy
from app.lifecycle.webhooks import UrlGuard, WebhookNotifier
from app.novita.client import NovitaClient
from app.novita.models import Instance
from bench import wrk_runner
from bench.memory import rss_mb
from bench.report import Report, Row, ms, ratio
from bench.services import ServerProcess, Services

SECTION = "Fleet scale (issue 15)"
BEGIN_MARKER = "<!-- bench --scale: begin -->"
END_MARKER = "<!-- bench --scale: end -->"
NOVITA_RATE = 50.0  # the API's shared Novita budget in this benchmark (the fake answers far faster)
CONCURRENCY = 16
PAGE = 100  # Novita's list page size (the client's)
_PRELOAD_BATCH = 16  # concurrent record writes (below the Valkey connection pool of one manager)
# The figures before this change (same machine class), as the "before" baseline of the rows it measured.
BEFORE = {
    1000: {
        "list_p99": "158 ms",
        "list16_p99": "2.5 s (12 req/s)",
        "rss": "144 MB",
        "creates": "114 of 1,000 done in 97 s",
    },
    10000: {
        "list_p99": "- (9.9 s at 5,000)",
        "list16_p99": "- (19.3 s at 5,000)",
        "rss": "- (438 MB at 5,000)",
        "creates": "- (255 of 539 in 122 s at 5,000)",
    },
}


@dataclass(frozen=True)
class ScalePlan:
    """Fleet sizes and how much load each gets."""

    fleets: tuple[int, ...]
    cold_requests: int  # the first requests after start-up, one at a time
    load_seconds: float  # each warm wrk run (one connection, then 16)
    creates: int


FULL_SCALE = ScalePlan(fleets=(1000, 10000), cold_requests=20, load_seconds=10, creates=1000)
QUICK_SCALE = ScalePlan(fleets=(1000,), cold_requests=20, load_seconds=3, creates=100)


def run(services: Services, report: Report, plan: ScalePlan) -> None:
    """Every fleet size of `plan`, one after the other, on fresh Valkey and fake state."""
    if not wrk_runner.available():
        raise RuntimeError("the warm list rows need wrk: apt-get install -y wrk")
    baseline = services.start_baseline()
    try:
        services.wait_ready(baseline, "/")
        base_cold = _latencies(baseline.url, ["/"] * plan.cold_requests, {})
        base_one = _wrk(baseline.url, 1, plan.load_seconds, {}, ["/"])
        base_many = _wrk(baseline.url, CONCURRENCY, plan.load_seconds, {}, ["/"])
    finally:
        services.stop(baseline)
    for fleet in plan.fleets:
        _run_fleet(services, report, plan, fleet, _Baselines(base_cold, base_one, base_many))


@dataclass(frozen=True)
class _Baselines:
    """The hello-world's latencies: from the Python client (the cold row) and from wrk (the warm rows)."""

    cold: _Latency
    one: wrk_runner.LoadResult
    many: wrk_runner.LoadResult


def _run_fleet(services: Services, report: Report, plan: ScalePlan, fleet: int, base: _Baselines) -> None:
    label = f"{fleet:,}"
    services.redis.flushall()
    services.http.post(f"{services.novita.url}/_fake/reset").raise_for_status()
    started = time.monotonic()
    asyncio.run(_preload(services, fleet))
    report.note(
        f"{label}: fake Novita and our index preloaded with {fleet:,} running instances in "
        f"{time.monotonic() - started:.1f} s"
    )

    api = services.start_api(f"api-{fleet}", NOVITA_RATE_LIMIT_PER_SECOND=str(NOVITA_RATE))
    try:
        ready = services.wait_ready(api, "/readyz")
        _row(report, f"{label}: start-up to /readyz 200", f"{ready:.2f} s", "-", None, "< 2 s", ready < 2.0)
        headers = {"X-API-Key": services.client_api_key}
        paths = _list_paths(fleet)
        cold = _latencies(api.url, _repeat(paths, plan.cold_requests), headers)
        _row(
            report,
            f"{label}: list, cold (first {plan.cold_requests} after start, Python client), p50 / p99",
            f"{ms(cold.p50)} / {ms(cold.p99)}",
            f"{ms(base.cold.p50)} / {ms(base.cold.p99)}",
            ratio(cold.p99, base.cold.p99),
            "p99 < 50 ms",
            cold.p99 < 0.050,
        )
        warm = _wrk(api.url, 1, plan.load_seconds, headers, paths)
        _row(
            report,
            f"{label}: list one at a time (wrk, {plan.load_seconds:g} s), p50 / p99",
            f"{warm.p50_ms:.2f} ms / {warm.p99_ms:.2f} ms",
            f"{base.one.p50_ms:.2f} ms / {base.one.p99_ms:.2f} ms; before: {BEFORE[fleet]['list_p99']}",
            ratio(warm.p99_ms, base.one.p99_ms),
            "p99 < 50 ms",
            warm.p99_ms < 50,
        )
        many = _wrk(api.url, CONCURRENCY, plan.load_seconds, headers, paths)
        _row(
            report,
            f"{label}: list at {CONCURRENCY} concurrent (wrk, {plan.load_seconds:g} s), p99 (req/s)",
            f"{many.p99_ms:.0f} ms ({many.rps:.0f} req/s)",
            f"{base.many.p99_ms:.0f} ms ({base.many.rps:.0f} req/s); before: {BEFORE[fleet]['list16_p99']}",
            ratio(many.p99_ms, base.many.p99_ms),
            "p99 < 200 ms",
            many.p99_ms < 200,
        )
        rss, peak = rss_mb(api.pid), rss_mb(api.pid, "VmHWM")
        _row(
            report,
            f"{label}: API RSS after the {CONCURRENCY}-concurrent lists (peak VmHWM)",
            f"{rss:.0f} MB ({peak:.0f} MB)",
            f"before: {BEFORE[fleet]['rss']}",
            None,
            "< 200 MB",
            peak < 200,
        )
        calls, seconds = _one_sync(services, api)
        pages = math.ceil(fleet / PAGE)
        _row(
            report,
            f"{label}: Novita calls of one full background sync (its duration)",
            f"{calls} ({seconds:.1f} s)",
            f"{pages} pages",
            ratio(calls, pages),
            f"<= {pages + 10}",
            calls <= pages + 10,
        )
        sweep = asyncio.run(_cost_guard_sweep(services))
        _row(report, f"{label}: cost-guard sweep over every record", f"{sweep:.2f} s", "-", None, "< 2 s", sweep < 2.0)
        _creates(services, report, api, plan.creates, label, fleet)
        rss, peak = rss_mb(api.pid), rss_mb(api.pid, "VmHWM")
        _row(
            report,
            f"{label}: API RSS at the end (peak VmHWM)",
            f"{rss:.0f} MB ({peak:.0f} MB)",
            "-",
            None,
            "< 200 MB",
            peak < 200,
        )
    finally:
        services.stop(api)
    # The machine is shared: the load at the start alone does not say what other work ran during these rows.
    report.note(f"{label}: 1-minute load average at the end of its rows: {os.getloadavg()[0]:.2f}")


def _row(
    report: Report, measurement: str, value: str, baseline: str, rate: float | None, target: str, met: bool | None
) -> None:
    report.add(Row(SECTION, measurement, value, baseline, rate, target, met))


# -- preloading ----------------------------------------------------------------------------------------------------


async def _preload(services: Services, fleet: int) -> None:
    """N running instances on the fake and, for each, our record and index entries (via the store's own writes)."""
    ids = [new_record_id() for _ in range(fleet)]
    names = [f"box-{position}" for position in range(fleet)]
    now = time.time()
    async with httpx.AsyncClient(timeout=60) as http:
        answer = await http.post(
            f"{services.novita.url}/_fake/preload",
            json={
                "instances": [
                    {"name": upstream_name(name, record_id), "status": "running", "createdAt": int(now)}
                    for name, record_id in zip(names, ids, strict=True)
                ]
            },
        )
        answer.raise_for_status()
        novita_ids = answer.json()["ids"]
        listed = (await http.get(f"{services.novita.url}/_fake/instances")).json()["instances"]
    live = {item["id"]: Instance.model_validate(item) for item in listed}
    manager = RedisManager(_settings(services))
    store = InstanceStore(manager)
    try:
        for start in range(0, fleet, _PRELOAD_BATCH):
            await asyncio.gather(
                *(
                    store.create(_record(ids[i], names[i], live[novita_ids[i]], now - fleet + i), {})
                    for i in range(start, min(fleet, start + _PRELOAD_BATCH))
                )
            )
        await store.ensure_index()  # marks the index as built (nothing to migrate)
    finally:
        await manager.close()


def _record(record_id: str, name: str, live: Instance, created_at: float) -> InstanceRecord:
    """The record as the API and then the status sync leave it (the connection details included): the fleet is in
    its steady state, so the first sync after start-up does not rewrite every record."""
    record = InstanceRecord(
        id=record_id,
        name=name,
        upstream_name=upstream_name(name, record_id),
        novita_instance_id=live.id,
        product_name="RTX 4090 24GB",
        gpu_num=1,
        rootfs_size=60,
        image_url="docker.io/library/ubuntu:22.04",
        billing_mode="onDemand",
        endpoints=[m.model_dump() for m in live.port_mappings if m.endpoint],
        connection=connection_details(live),
        created_at=created_at,
        updated_at=created_at,
    )
    record.apply_novita(live.status, None)
    return record


def _settings(services: Services) -> Settings:
    return Settings(
        redis_url=SecretStr(services.redis.url),
        novita_api_key=SecretStr(services.novita_api_key),
        novita_base_url=f"{services.novita.url}/gpu-instance/openapi/v1",
    )


# -- latency -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Latency:
    p50: float
    p99: float


def _list_paths(fleet: int) -> list[str]:
    """A mix of what people ask: first pages, deep pages, a status filter, a name filter."""
    deep = max(1, fleet // 20 // 2)
    return [
        "/api/instances",
        "/api/instances?status=running&pageSize=50",
        f"/api/instances?page={deep}",
        "/api/instances?name=box-12&pageSize=20",
        "/api/instances?pageSize=100",
    ]


def _wrk(
    url: str, connections: int, seconds: float, headers: dict[str, str], paths: list[str]
) -> wrk_runner.LoadResult:
    """A wrk run over `paths` in turn; any answer but a 2xx/3xx (or a timeout) fails the benchmark."""
    result = wrk_runner.run_wrk(url, connections, seconds, headers, paths=paths)
    if result.errors:
        raise RuntimeError(f"wrk saw {result.errors} errors against {url} ({connections} connections)")
    return result


def _repeat(paths: list[str], count: int) -> list[str]:
    return [paths[i % len(paths)] for i in range(count)]


def _latencies(base_url: str, paths: list[str], headers: dict[str, str]) -> _Latency:
    """`paths` one at a time from a Python client (the cold rows: the very first requests, counted exactly)."""

    async def load() -> list[float]:
        durations: list[float] = []
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as client:
            for path in paths:
                began = time.perf_counter()
                response = await client.get(path)
                durations.append(time.perf_counter() - began)
                if response.status_code != 200:
                    raise RuntimeError(f"GET {path} answered {response.status_code}: {response.text[:200]}")
        return durations

    ordered = sorted(asyncio.run(load()))
    return _Latency(statistics.median(ordered), ordered[min(len(ordered) - 1, math.ceil(len(ordered) * 0.99) - 1)])


# -- background work -----------------------------------------------------------------------------------------------


def _calls(services: Services) -> dict[str, int]:
    return services.http.get(f"{services.novita.url}/_fake/calls").json()["calls"]


def _sync_finished_at(services: Services, api: ServerProcess) -> float | None:
    body = services.http.get(f"{api.url}/health").json()
    progress = body.get("reconciliation") or {}
    return float(progress["finishedAt"]) if progress.get("state") == "done" and "finishedAt" in progress else None


def _wait_next_sync(services: Services, api: ServerProcess, after: float | None, timeout: float = 300) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        finished = _sync_finished_at(services, api)
        if finished is not None and (after is None or finished > after):
            return finished
        time.sleep(0.05)
    raise RuntimeError("no background sync finished in time")


def _one_sync(services: Services, api: ServerProcess) -> tuple[int, float]:
    """Novita calls between two consecutive finished syncs of the idle API: exactly one sync's calls."""
    first = _wait_next_sync(services, api, None)
    before = sum(_calls(services).values())
    began = time.monotonic()
    _wait_next_sync(services, api, first)
    return sum(_calls(services).values()) - before, time.monotonic() - began


async def _cost_guard_sweep(services: Services) -> float:
    manager = RedisManager(_settings(services))
    settings = _settings(services)
    novita = NovitaClient(settings.novita_base_url, services.novita_api_key)
    try:
        activity = ActivityStore(manager.client)
        events = WebhookNotifier(manager.client, None, UrlGuard(block_private=False), global_url=None)
        guards = CostGuardExecutor(
            InstanceStore(manager), novita, manager.client, activity, events, CostGuardPolicy(dry_run=True)
        )
        began = time.perf_counter()
        await guards.run_once()
        return time.perf_counter() - began
    finally:
        await novita.aclose()
        await manager.close()


def _creates(services: Services, report: Report, api: ServerProcess, count: int, label: str, fleet: int) -> None:
    """`count` creates through the API at 16 concurrent; accepted in, then all jobs done in, against the ideal."""
    headers = {"X-API-Key": services.client_api_key}
    calls_before = _calls(services)
    body = {
        "productName": "RTX 4090 24GB",
        "gpuNum": 1,
        "rootfsSize": 60,
        "imageUrl": "docker.io/library/ubuntu:22.04",
        "ports": [{"port": 8888, "type": "http"}],
    }

    async def post_all() -> list[str]:
        names = asyncio.Queue[int]()
        for position in range(count):
            names.put_nowait(position)
        jobs: list[str] = []
        async with httpx.AsyncClient(base_url=api.url, headers=headers, timeout=60) as client:

            async def worker() -> None:
                while not names.empty():
                    position = names.get_nowait()
                    answer = await client.post(
                        "/api/instances",
                        json={**body, "name": f"new-{position}"},
                        headers={"Idempotency-Key": secrets.token_hex(8)},
                    )
                    if answer.status_code != 202:
                        raise RuntimeError(f"create answered {answer.status_code}: {answer.text[:200]}")
                    jobs.append(answer.json()["jobId"])

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return jobs

    began = time.monotonic()
    jobs = asyncio.run(post_all())
    accepted = time.monotonic() - began
    _row(
        report,
        f"{label}: {count:,} creates through the API ({CONCURRENCY} concurrent), accepted in",
        f"{accepted:.1f} s",
        f"before: {BEFORE[fleet]['creates']}",
        None,
        "< 10 s" if count >= 1000 else "-",
        accepted < 10 if count >= 1000 else None,
    )
    done, states = _wait_jobs(services, jobs, began + 600)
    elapsed = time.monotonic() - began
    calls_after = _calls(services)
    used = {key: calls_after.get(key, 0) - calls_before.get(key, 0) for key in calls_after}
    total = sum(used.values())
    ideal = total / NOVITA_RATE
    per_create = {key: round(value / count, 2) for key, value in sorted(used.items()) if value}
    _row(
        report,
        f"{label}: the same creates' jobs done (succeeded of {count:,}) in",
        f"{done:,} in {elapsed:.1f} s",
        f"ideal {ideal:.1f} s ({total:,} Novita calls at {NOVITA_RATE:g}/s)",
        ratio(elapsed, ideal),
        "<= ideal + 20 %",
        done == count and elapsed <= ideal * 1.2,
    )
    report.note(
        f"{label}: Novita calls per create during the burst (background sync included): {per_create}; "
        f"job states: {states}"
    )


def _wait_jobs(services: Services, jobs: list[str], deadline: float) -> tuple[int, dict[str, int]]:
    """Poll the jobs' states in Valkey (one pipeline per round) until all are terminal or the deadline passes.

    Only the jobs not yet finished are asked about again: polling all of them four times a second would put as many
    reads on the Valkey that the API under test shares the 2 cores with as the API's own work.
    """
    terminal = {"succeeded", "failed", "dead"}
    finished: dict[str, str] = {}
    with services.redis.client() as valkey:
        while True:
            waiting = [job_id for job_id in jobs if job_id not in finished]
            pipe = valkey.pipeline(transaction=False)
            for job_id in waiting:
                pipe.hget(job_key(job_id), "state")
            answers = {job_id: state or "missing" for job_id, state in zip(waiting, pipe.execute(), strict=True)}
            finished.update({job_id: state for job_id, state in answers.items() if state in terminal})
            if len(finished) == len(jobs) or time.monotonic() > deadline:
                states = [finished.get(job_id) or answers[job_id] for job_id in jobs]
                return states.count("succeeded"), {state: states.count(state) for state in set(states)}
            time.sleep(0.25)


def write_section(report: Report, output: Path) -> None:
    """Put this run's scale table into `output` between the markers (appended at the end the first time)."""
    table = report.markdown().replace("# Performance", "## Fleet scale (`python -m bench --scale`)", 1)
    block = f"{BEGIN_MARKER}\n{table}{END_MARKER}\n"
    text = output.read_text() if output.exists() else ""
    if BEGIN_MARKER in text and END_MARKER in text:
        text = text[: text.index(BEGIN_MARKER)] + block + text[text.index(END_MARKER) + len(END_MARKER) + 1 :]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
