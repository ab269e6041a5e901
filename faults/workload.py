"""What a fault case sends (instance creates through the HTTP API) and how it counts the outcome.

A client of this API retries a create with the same `Idempotency-Key` until it gets a 202 (connection refused,
503, 429 and other 5xx are retried), so "lost" means: the API accepted the operation, or the client kept trying
until the deadline, and the operation still did not complete; a create refused by a team budget (409
`budget_exceeded`) is an answer, not a loss. "Duplicated" means an instance exists on (the fake)
Novita more than once for one operation, or an instance exists that belongs to no operation.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.fakes.fixtures import FakeNovitaHandle

TERMINAL_JOB_STATES = frozenset({"succeeded", "failed", "dead"})
CREATE_CALL = "POST /gpu/instance/create"
_RETRY_PAUSE_SECONDS = 0.2


def create_body(name: str) -> dict[str, Any]:
    """A valid create: the cheapest available RTX 4090, on demand."""
    return {
        "name": name,
        "productName": "RTX 4090 24GB",
        "gpuNum": 1,
        "rootfsSize": 60,
        "imageUrl": "docker.io/library/ubuntu:22.04",
        "ports": [{"port": 8888, "type": "http"}],
    }


@dataclass
class Operation:
    """One create as the client sees it."""

    name: str
    idempotency_key: str
    job_id: str | None = None
    instance_id: str | None = None
    upstream_name: str | None = None
    http_attempts: int = 0
    final_state: str | None = None
    accepted_at: float | None = None  # monotonic time of the first 202
    refused: bool = False  # a budget refused it (409 budget_exceeded): final, and not lost
    job_ids_seen: set[str] = field(default_factory=set)

    @property
    def accepted(self) -> bool:
        """Whether the API answered 202 at least once."""
        return self.job_id is not None


def new_operations(case: str, count: int) -> list[Operation]:
    """`count` creates with unique names and idempotency keys."""
    return [Operation(name=f"{case}-{n}", idempotency_key=f"faults-{case}-{n}") for n in range(count)]


class ApiClient:
    """Async HTTP to one or several API replicas (round robin), with the client's API key."""

    def __init__(self, urls: list[str], api_key: str, *, concurrency: int = 16) -> None:
        self._urls = itertools.cycle(urls)
        self._client = httpx.AsyncClient(headers={"X-API-Key": api_key}, timeout=10)
        self._slots = asyncio.Semaphore(concurrency)

    async def aclose(self) -> None:
        """Close the connections."""
        await self._client.aclose()

    async def submit(
        self, operation: Operation, deadline: float, on_accepted: Callable[[Operation], None] | None = None
    ) -> None:
        """POST the create until a 202 or the deadline (monotonic); records the job and upstream name."""
        while time.monotonic() < deadline:
            async with self._slots:
                operation.http_attempts += 1
                try:
                    response = await self._client.post(
                        next(self._urls) + "/api/instances",
                        json=create_body(operation.name),
                        headers={"Idempotency-Key": operation.idempotency_key},
                    )
                except httpx.HTTPError:
                    response = None
            if response is not None and response.status_code == 202:
                body = response.json()
                operation.job_id = body["jobId"]
                operation.accepted_at = operation.accepted_at or time.monotonic()
                operation.job_ids_seen.add(body["jobId"])
                operation.instance_id = body["instance"]["id"]
                operation.upstream_name = body["instance"]["upstreamName"]
                if on_accepted is not None:
                    on_accepted(operation)
                return
            if response is not None and response.status_code == 409 and _refused_by_budget(response):
                operation.refused = True
                return
            if response is not None and response.status_code < 500 and response.status_code != 429:
                raise RuntimeError(f"create {operation.name} refused: {response.status_code} {response.text}")
            await asyncio.sleep(_RETRY_PAUSE_SECONDS)

    async def submit_all(
        self, operations: list[Operation], deadline: float, on_accepted: Callable[[Operation], None] | None = None
    ) -> None:
        """Submit every operation concurrently (bounded by the client's concurrency)."""
        await asyncio.gather(*(self.submit(op, deadline, on_accepted) for op in operations))

    async def job_state(self, job_id: str) -> str | None:
        """The job's state, or None when no replica answered."""
        async with self._slots:
            try:
                response = await self._client.get(f"{next(self._urls)}/api/jobs/{job_id}")
            except httpx.HTTPError:
                return None
        return response.json()["state"] if response.status_code == 200 else None

    async def wait_settled(self, operations: list[Operation], timeout_seconds: float) -> float:
        """Poll the jobs of accepted operations until all are terminal or the time is up; returns when (monotonic)."""
        deadline = time.monotonic() + timeout_seconds
        pending = [op for op in operations if op.accepted]
        while pending and time.monotonic() < deadline:
            states = await asyncio.gather(*(self.job_state(op.job_id) for op in pending if op.job_id))
            for op, state in zip(pending, states, strict=True):
                op.final_state = state or op.final_state
            pending = [op for op in pending if op.final_state not in TERMINAL_JOB_STATES]
            if pending:
                await asyncio.sleep(0.5)
        return time.monotonic()


def _refused_by_budget(response: httpx.Response) -> bool:
    return bool(response.json().get("type") == "/problems/budget_exceeded")


@dataclass(frozen=True)
class Tally:
    """The figures of one case."""

    operations: int
    accepted: int
    refused: int  # by a budget
    succeeded: int
    lost: int
    duplicated: int
    novita_instances: int
    novita_create_calls: int
    http_attempts: int


def tally(operations: list[Operation], novita: FakeNovitaHandle) -> Tally:
    """Count lost and duplicated operations against what the fake Novita holds and was asked."""
    instances_by_name = Counter(instance["name"] for instance in novita.instances())
    ours = {op.upstream_name for op in operations if op.upstream_name}
    duplicated = sum(max(0, instances_by_name[name] - 1) for name in ours)
    duplicated += sum(count for name, count in instances_by_name.items() if name not in ours)  # orphans
    duplicated += sum(len(op.job_ids_seen) - 1 for op in operations if op.job_ids_seen)  # one key, two jobs
    succeeded = sum(1 for op in operations if op.final_state == "succeeded")
    return Tally(
        operations=len(operations),
        accepted=sum(1 for op in operations if op.accepted),
        refused=sum(1 for op in operations if op.refused),
        succeeded=succeeded,
        lost=sum(1 for op in operations if not op.refused) - succeeded,
        duplicated=duplicated,
        novita_instances=sum(instances_by_name.values()),
        novita_create_calls=novita.calls().get(CREATE_CALL, 0),
        http_attempts=sum(op.http_attempts for op in operations),
    )
