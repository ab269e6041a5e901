"""The fault cases. Each starts its own stack of real processes, sends creates through the HTTP API, breaks
something, and returns its figures; `quick` shrinks counts and durations so the whole campaign fits in CI."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from faults.processes import ApiProcess, Stack, answers, wait_until
from faults.workload import ApiClient, Operation, Tally, new_operations, tally

SETTLE_TIMEOUT_SECONDS = 180.0
SUBMIT_TIMEOUT_SECONDS = 120.0


@dataclass
class CaseResult:
    """The figures of one case, and whether every check held."""

    name: str
    title: str
    command: str
    tally: Tally
    recover_seconds: float | None
    recovery: str  # what `recover_seconds` measures
    duration_seconds: float
    checks: dict[str, bool] = field(default_factory=dict)
    figures: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Zero lost, zero duplicated, and every extra check true."""
        return self.tally.lost == 0 and self.tally.duplicated == 0 and all(self.checks.values())


@dataclass(frozen=True)
class CaseSettings:
    """Where a case works and how big it is."""

    work_dir: Path
    quick: bool

    def scale(self, quick: float, full: float) -> float:
        """`quick` or `full`, by mode."""
        return quick if self.quick else full


Case = Callable[[CaseSettings], CaseResult]


def _command(name: str, settings: CaseSettings) -> str:
    return f".venv/bin/python -m faults --case {name}" + (" --quick" if settings.quick else "")


def _log_count(apis: list[ApiProcess], message: str) -> int:
    needle = f'"message": "{message}"'
    return sum(api.log_path.read_text(errors="replace").count(needle) for api in apis)


# -- (a) kill -9 of the API during a burst ------------------------------------------------------------------------


def kill_api_during_burst(settings: CaseSettings) -> CaseResult:
    """SIGKILL the only API replica while a burst of creates is being accepted; a new process takes over."""
    name = "kill9-burst"
    count = int(settings.scale(200, 400))
    kill_points = [count // 3] if settings.quick else [count // 4, count // 2]
    stack = Stack(settings.work_dir / name)
    started = time.monotonic()
    try:
        stack.start()
        api = stack.add_api()
        operations = new_operations(name, count)
        kills = asyncio.run(_burst_with_kills(stack, api, operations, kill_points))
        return CaseResult(
            name=name,
            title=f"kill -9 of the API during a burst of {count} creates ({len(kill_points)} kill(s), restart at once)",
            command=_command(name, settings),
            tally=tally(operations, stack.novita),
            recover_seconds=max(kill.recover_seconds for kill in kills),
            recovery="SIGKILL -> new process ready (slowest kill)",
            duration_seconds=time.monotonic() - started,
            checks={"every kill hit the burst (creates still unaccepted)": all(k.accepted < count for k in kills)},
            figures={
                "creates accepted when each kill hit": ", ".join(str(kill.accepted) for kill in kills),
                "jobs reclaimed from the killed process": str(
                    _log_count(stack.apis, "reclaimed a job left unfinished by a worker")
                ),
            },
        )
    finally:
        stack.close()


@dataclass(frozen=True)
class _Kill:
    """One SIGKILL: how many creates were accepted at that moment, and how long until a new process was ready."""

    accepted: int
    recover_seconds: float


async def _burst_with_kills(
    stack: Stack, api: ApiProcess, operations: list[Operation], kill_at: list[int]
) -> list[_Kill]:
    """Submit the burst; SIGKILL and restart the API each time the accepted count reaches a kill point."""
    client = ApiClient([api.url], stack.client_key)
    accepted = 0
    reached = [asyncio.Event() for _ in kill_at]

    def on_accepted(_: Operation) -> None:
        nonlocal accepted
        accepted += 1
        for threshold, event in zip(kill_at, reached, strict=True):
            if accepted >= threshold:
                event.set()

    async def killer() -> list[_Kill]:
        kills = []
        for event in reached:
            await event.wait()
            killed_at, accepted_then = time.monotonic(), accepted
            api.kill()
            api.start()  # what the container's restart policy does
            ready_at = await asyncio.to_thread(api.wait_ready)
            kills.append(_Kill(accepted_then, ready_at - killed_at))
        return kills

    try:
        killing = asyncio.create_task(killer())
        await client.submit_all(operations, time.monotonic() + SUBMIT_TIMEOUT_SECONDS, on_accepted)
        kills = await asyncio.wait_for(killing, timeout=60)
        await client.wait_settled(operations, SETTLE_TIMEOUT_SECONDS)
        return kills
    finally:
        await client.aclose()


# -- (b) Valkey stopped under load ------------------------------------------------------------------------------


@dataclass
class _Probe:
    """What the health endpoints answered during the outage."""

    livez: list[int] = field(default_factory=list)
    readyz: list[int] = field(default_factory=list)
    health: list[int] = field(default_factory=list)


def valkey_outage(settings: CaseSettings) -> CaseResult:
    """Stop Valkey for a while under a stream of creates; the API must stay alive, say so, and recover alone."""
    name = "valkey-outage"
    outage_seconds = settings.scale(6, 30)
    before_count, during_count = int(settings.scale(60, 150)), int(settings.scale(40, 100))
    stack = Stack(settings.work_dir / name)
    started = time.monotonic()
    try:
        stack.start()
        api = stack.add_api()
        before = new_operations(name + "-before", before_count)
        during = new_operations(name + "-during", during_count)
        probe, outage = asyncio.run(_outage(stack, api, before, during, outage_seconds))
        operations = before + during
        return CaseResult(
            name=name,
            title=f"Valkey stopped for {outage_seconds:g} s under load ({before_count} creates accepted before, "
            f"{during_count} sent during the outage)",
            command=_command(name, settings),
            tally=tally(operations, stack.novita),
            recover_seconds=outage.recover_seconds(during),
            recovery="Valkey back -> /readyz 200 and creates accepted again, same process",
            duration_seconds=time.monotonic() - started,
            checks={
                "/livez answered 200 throughout": bool(probe.livez) and set(probe.livez) == {200},
                "/readyz reported 503 during the outage": 503 in probe.readyz,
                "/health reported 503 during the outage": 503 in probe.health,
                "API process never restarted": api.alive and len(stack.apis) == 1,
                "no create accepted while Valkey was down": not any(
                    op.accepted_at is not None and outage.started_at < op.accepted_at < outage.restart_began_at
                    for op in during
                ),
            },
            figures={
                "probes during outage (livez/readyz/health)": f"{len(probe.livez)}/{len(probe.readyz)}/"
                f"{len(probe.health)}",
                "creates accepted before the outage": str(sum(op.accepted for op in before)),
            },
        )
    finally:
        stack.close()


@dataclass
class _OutageTimes:
    """When Valkey went away and came back (monotonic)."""

    started_at: float = 0.0
    restart_began_at: float = 0.0
    restarted_at: float = 0.0
    ready_at: float = 0.0

    def recover_seconds(self, during: list[Operation]) -> float:
        """From Valkey answering again to the API both ready and accepting creates."""
        accepted_again = min((op.accepted_at for op in during if op.accepted_at is not None), default=self.ready_at)
        return max(self.ready_at, accepted_again) - self.restarted_at


async def _outage(
    stack: Stack, api: ApiProcess, before: list[Operation], during: list[Operation], outage_seconds: float
) -> tuple[_Probe, _OutageTimes]:
    client = ApiClient([api.url], stack.client_key)
    probe, times = _Probe(), _OutageTimes()
    try:
        # Accepted, not yet finished: queued or in flight when Valkey goes away.
        await client.submit_all(before, time.monotonic() + SUBMIT_TIMEOUT_SECONDS)
        await asyncio.to_thread(stack.redis.stop)  # SHUTDOWN SAVE: Valkey's persistence keeps what it acknowledged
        times.started_at = outage_started = time.monotonic()
        load = asyncio.create_task(client.submit_all(during, time.monotonic() + SUBMIT_TIMEOUT_SECONDS))
        async with httpx.AsyncClient(timeout=3) as http:
            while time.monotonic() - outage_started < outage_seconds:
                for path, answers_list in (
                    ("/livez", probe.livez),
                    ("/readyz", probe.readyz),
                    ("/health", probe.health),
                ):
                    try:
                        answers_list.append((await http.get(api.url + path)).status_code)
                    except httpx.HTTPError:
                        answers_list.append(0)
                await asyncio.sleep(0.25)
        times.restart_began_at = time.monotonic()
        await asyncio.to_thread(stack.redis.start)
        times.restarted_at = time.monotonic()
        times.ready_at = await asyncio.to_thread(
            wait_until, "/readyz 200 after Valkey is back", lambda: answers(api.url + "/readyz"), 60, 0.05
        )
        await load
        await client.wait_settled(before + during, SETTLE_TIMEOUT_SECONDS)
        return probe, times
    finally:
        await client.aclose()


# -- (c) Novita faults ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _NovitaFault:
    """One kind of Novita misbehaviour: the fake's fault rules, applied while `count` creates run."""

    label: str
    rules: tuple[dict[str, object], ...]
    count: int


def _novita_faults(settings: CaseSettings) -> list[_NovitaFault]:
    n = int(settings.scale(1, 2))  # the full run doubles every count
    return [
        _NovitaFault("429 storm", ({"path": "*", "kind": "rate_limit", "retryAfter": 0.1, "count": 40 * n},), 20 * n),
        _NovitaFault(
            "5xx",
            (
                {"path": "/gpu/instance/create", "kind": "server_error", "status": 503, "count": 8 * n},
                {"path": "/gpu/instance", "kind": "server_error", "status": 500, "count": 8 * n},
            ),
            20 * n,
        ),
        _NovitaFault(
            "timeouts",
            ({"path": "/gpu/instance/create", "kind": "timeout", "delaySeconds": 3, "count": 4 * n},),
            10 * n,
        ),
        _NovitaFault(
            "slow upstream (0.5 s per call)",
            ({"path": "*", "kind": "slow", "delaySeconds": 0.5, "count": None},),
            10 * n,
        ),
        _NovitaFault(
            "lost create responses",
            ({"path": "/gpu/instance/create", "kind": "lost_response", "count": 10 * n},),
            20 * n,
        ),
    ]


def novita_faults(settings: CaseSettings) -> CaseResult:
    """429 storms, 5xx, timeouts, a slow upstream and lost create answers, then a full outage that opens the
    circuit breaker: every create completes once, and the breaker closes again by itself."""
    name = "novita-faults"
    stack = Stack(settings.work_dir / name)
    started = time.monotonic()
    try:
        stack.start()
        api = stack.add_api(
            novita_max_attempts=3,
            novita_breaker_failure_threshold=5,
            job_retry_base_seconds=0.5,
            job_retry_max_seconds=4,
        )
        operations: list[Operation] = []
        figures: dict[str, str] = {}
        for fault in _novita_faults(settings):
            batch = new_operations(f"{name}-{len(figures)}", fault.count)
            calls_before = sum(stack.novita.calls().values())
            stack.novita.add_faults(*fault.rules)
            asyncio.run(_submit(stack, api, batch))
            asyncio.run(_settle(stack, api, batch))
            stack.novita.clear_faults()
            calls = sum(stack.novita.calls().values()) - calls_before
            done = sum(op.final_state == "succeeded" for op in batch)
            figures[fault.label] = f"{done}/{len(batch)} succeeded, {calls} Novita calls"
            operations += batch
        breaker_ops = new_operations(f"{name}-breaker", int(settings.scale(10, 20)))
        known = next(op.instance_id for op in operations if op.final_state == "succeeded" and op.instance_id)
        recover, breaker_checks, breaker_figure = _breaker_cycle(stack, api, breaker_ops, known)
        figures["outage (breaker)"] = breaker_figure
        operations += breaker_ops
        calls_per_create = sum(stack.novita.calls().values()) / len(operations)
        return CaseResult(
            name=name,
            title="Novita faults: " + ", ".join(f.label for f in _novita_faults(settings)) + ", then a 3 s outage",
            command=_command(name, settings),
            tally=tally(operations, stack.novita),
            recover_seconds=recover,
            recovery="Novita healed -> breaker closed",
            duration_seconds=time.monotonic() - started,
            checks={**breaker_checks, "retries bounded (at most 30 Novita calls per create)": calls_per_create <= 30},
            figures={**figures, "Novita calls per create (all cases)": f"{calls_per_create:.1f}"},
        )
    finally:
        stack.close()


def _novita_health(api: ApiProcess) -> str:
    try:
        return str(httpx.get(api.url + "/health", timeout=3).json()["services"]["novitaApi"])
    except (httpx.HTTPError, KeyError, ValueError):
        return "unknown"


def _circuit_open_refusals(api: ApiProcess) -> float:
    """Novita calls the open breaker refused without sending them (from /metrics)."""
    text = httpx.get(api.url + "/metrics", timeout=3).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("novita_calls_total{") and 'outcome="circuit_open"' in line
    )


async def _submit(stack: Stack, api: ApiProcess, operations: list[Operation]) -> None:
    client = ApiClient([api.url], stack.client_key, concurrency=8)
    try:
        await client.submit_all(operations, time.monotonic() + SUBMIT_TIMEOUT_SECONDS)
    finally:
        await client.aclose()


async def _settle(stack: Stack, api: ApiProcess, operations: list[Operation]) -> None:
    client = ApiClient([api.url], stack.client_key, concurrency=8)
    try:
        await client.wait_settled(operations, SETTLE_TIMEOUT_SECONDS)
    finally:
        await client.aclose()


def _breaker_cycle(
    stack: Stack, api: ApiProcess, operations: list[Operation], known_instance: str
) -> tuple[float, dict[str, bool], str]:
    """Every Novita call fails for 3 s while creates arrive; then Novita heals."""
    stack.novita.add_faults({"path": "*", "kind": "server_error", "status": 502, "count": None})
    with httpx.Client(base_url=api.url, headers={"X-API-Key": stack.client_key}, timeout=10) as http:
        for _ in range(4):  # each GET makes a live Novita call (with its retries): the breaker opens
            http.get(f"/api/instances/{known_instance}")
        opened = _novita_health(api) == "down"
        refusals_before = _circuit_open_refusals(api)
        asyncio.run(_submit(stack, api, operations))  # accepted: a create only needs Valkey
        http.get(f"/api/instances/{known_instance}")
        refused_unsent = _circuit_open_refusals(api) > refusals_before
        time.sleep(3)
        stack.novita.clear_faults()
        healed_at = time.monotonic()

        def closed() -> bool:
            http.get(f"/api/instances/{known_instance}")  # a call the half-open breaker can try
            return _novita_health(api) == "up"

        closed_at = wait_until("the breaker to close", closed, 30, interval=0.1)
    asyncio.run(_settle(stack, api, operations))
    checks = {
        "breaker opened (/health novitaApi down)": opened,
        "open breaker refused calls without sending them": refused_unsent,
        "breaker closed by itself after Novita healed": _novita_health(api) == "up",
    }
    done = sum(op.final_state == "succeeded" for op in operations)
    return closed_at - healed_at, checks, f"{done}/{len(operations)} created during the outage succeeded"


# -- (d) three replicas on one Valkey ---------------------------------------------------------------------------


def three_replicas(settings: CaseSettings) -> CaseResult:
    """Three API processes share one Valkey; creates go round robin; one replica is killed mid-way and its jobs
    are reclaimed by the others. A slow create on Novita widens the window in which a job running twice at the
    same time would create its instance twice."""
    name = "three-replicas"
    count = int(settings.scale(90, 300))
    stack = Stack(settings.work_dir / name)
    started = time.monotonic()
    try:
        stack.start()
        apis = [stack.add_api() for _ in range(3)]
        stack.novita.add_faults({"path": "/gpu/instance/create", "kind": "slow", "delaySeconds": 0.5, "count": None})
        operations = new_operations(name, count)
        recover = asyncio.run(_replicas(stack, apis, operations))
        result = tally(operations, stack.novita)
        started_jobs = _log_count(stack.apis, "job started")
        return CaseResult(
            name=name,
            title=f"three API processes on one Valkey, {count} creates round robin, one replica killed mid-way",
            command=_command(name, settings),
            tally=result,
            recover_seconds=recover,
            recovery="replica killed -> every create completed",
            duration_seconds=time.monotonic() - started,
            figures={
                "concurrent runs of one job": "none seen: every create on Novita takes 0.5 s here, so a job run "
                "twice at once would have left a second instance (duplicated = "
                f"{result.duplicated})",
                "Novita create calls beyond one per instance (requests cut off by the kill, never acted on)": str(
                    result.novita_create_calls - result.novita_instances
                ),
                "job runs (all replicas)": str(started_jobs),
                "jobs reclaimed from the killed replica": str(
                    _log_count(stack.apis, "reclaimed a job left unfinished by a worker")
                ),
            },
        )
    finally:
        stack.close()


async def _replicas(stack: Stack, apis: list[ApiProcess], operations: list[Operation]) -> float:
    client = ApiClient([api.url for api in apis], stack.client_key)
    victim = apis[0]
    half = asyncio.Event()
    accepted = 0

    def on_accepted(_: Operation) -> None:
        nonlocal accepted
        accepted += 1
        if accepted >= len(operations) // 2:
            half.set()

    async def kill_one() -> float:
        await half.wait()
        victim.kill()
        return time.monotonic()

    try:
        killer = asyncio.create_task(kill_one())
        await client.submit_all(operations, time.monotonic() + SUBMIT_TIMEOUT_SECONDS, on_accepted)
        killed_at = await killer
        settled_at = await client.wait_settled(operations, SETTLE_TIMEOUT_SECONDS)
        return settled_at - killed_at
    finally:
        await client.aclose()


# -- (e) a GPU budget under kill -9 ----------------------------------------------------------------------------------


def budget_under_kill(settings: CaseSettings) -> CaseResult:
    """Two replicas enforce one team's GPU cap while far more creates than it allows arrive; one replica is killed
    (SIGKILL) mid-burst and restarted. The cap must hold at every moment, exactly the cap's worth must be accepted
    (a client's retry with its Idempotency-Key finds the reservation its first attempt took), and once everything
    settled the GPUs reserved must equal the instances on Novita (no reservation leaked by the kill)."""
    name = "budget-kill9"
    cap = int(settings.scale(10, 20))
    count = int(settings.scale(40, 100))
    stack = Stack(settings.work_dir / name)
    started = time.monotonic()
    try:
        stack.start()
        apis = [stack.add_api(budget_default_max_gpus=cap) for _ in range(2)]
        operations = new_operations(name, count)
        recover, peak = asyncio.run(_budget_burst(stack, apis, operations, kill_at=cap // 2))
        result = tally(operations, stack.novita)
        in_use = httpx.get(f"{apis[1].url}/api/budgets/-", headers={"X-API-Key": stack.client_key}, timeout=10)
        reserved = in_use.json()["gpusInUse"]
        return CaseResult(
            name=name,
            title=f"a cap of {cap} GPUs, {count} creates on two replicas, one killed (kill -9) mid-burst and restarted",
            command=_command(name, settings),
            tally=result,
            recover_seconds=recover,
            recovery="SIGKILL -> new process ready",
            duration_seconds=time.monotonic() - started,
            checks={
                "cap never exceeded (instances on Novita, polled through the run)": peak <= cap,
                "exactly the cap accepted, the rest refused with budget_exceeded": (
                    result.accepted == cap and result.refused == count - cap
                ),
                "GPUs reserved after settling = instances on Novita (no leak)": reserved == result.novita_instances,
            },
            figures={
                "accepted / refused": f"{result.accepted} / {result.refused}",
                "most instances on Novita at once": str(peak),
                "GPUs reserved after settling": str(reserved),
            },
        )
    finally:
        stack.close()


async def _budget_burst(
    stack: Stack, apis: list[ApiProcess], operations: list[Operation], kill_at: int
) -> tuple[float, int]:
    """Submit everything round robin; SIGKILL and restart the first replica once `kill_at` creates were accepted.
    Returns the restart time and the most instances seen on Novita while the case ran."""
    client = ApiClient([api.url for api in apis], stack.client_key)
    victim = apis[0]
    reached = asyncio.Event()
    accepted = 0
    peak = 0

    def on_accepted(_: Operation) -> None:
        nonlocal accepted
        accepted += 1
        if accepted >= kill_at:
            reached.set()

    async def kill_and_restart() -> float:
        await reached.wait()
        victim.kill()
        killed_at = time.monotonic()
        victim.start()
        await asyncio.to_thread(victim.wait_ready)
        return time.monotonic() - killed_at

    async def watch(stop: asyncio.Event) -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, len(await asyncio.to_thread(stack.novita.instances)))
            await asyncio.sleep(0.2)

    stopped = asyncio.Event()
    watcher = asyncio.create_task(watch(stopped))
    try:
        killer = asyncio.create_task(kill_and_restart())
        await client.submit_all(operations, time.monotonic() + SUBMIT_TIMEOUT_SECONDS, on_accepted)
        recover = await killer
        await client.wait_settled(operations, SETTLE_TIMEOUT_SECONDS)
        stopped.set()
        await watcher
        return recover, max(peak, len(stack.novita.instances()))
    finally:
        stopped.set()
        await client.aclose()


CASES: dict[str, Case] = {
    "kill9-burst": kill_api_during_burst,
    "valkey-outage": valkey_outage,
    "novita-faults": novita_faults,
    "three-replicas": three_replicas,
    "budget-kill9": budget_under_kill,
}
