"""A GPU cap holds under a concurrent burst across replicas: 50 creates from one team at once, spread over three
real API processes (`python -m app`) on one redis-server, against a cap of 10 GPUs: exactly 10 accepted, 40 refused
with the budget problem, and never more than 10 instances created at the (fake) Novita."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from faults.processes import Stack
from faults.workload import create_body

CAP = 10
CREATES = 50


@pytest.mark.timeout(240)
def test_fifty_concurrent_creates_on_three_replicas_never_pass_a_cap_of_ten(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "stack")
    try:
        stack.start()
        apis = [stack.add_api(budget_default_max_gpus=CAP) for _ in range(3)]
        answers = asyncio.run(_burst([api.url for api in apis], stack.client_key))

        statuses = Counter(response.status_code for response in answers)
        assert statuses == {202: CAP, 409: CREATES - CAP}, statuses
        refusals = [response.json() for response in answers if response.status_code == 409]
        assert {(r["budget"], r["limit"], r["current"]) for r in refusals} == {("maxGpus", str(CAP), str(CAP))}
        accepted = [response.json() for response in answers if response.status_code == 202]
        with httpx.Client(headers={"X-API-Key": stack.client_key}, timeout=10) as client:
            deadline = time.monotonic() + 120
            states: list[str] = []
            while time.monotonic() < deadline:
                states = [
                    client.get(f"{apis[i % 3].url}/api/jobs/{item['jobId']}").json()["state"]
                    for i, item in enumerate(accepted)
                ]
                assert len(stack.novita.instances()) <= CAP  # never beyond the cap, at any moment we look
                if all(state in ("succeeded", "failed", "dead") for state in states):
                    break
                time.sleep(0.3)
            assert states == ["succeeded"] * CAP
            assert len(stack.novita.instances()) == CAP
            assert stack.novita.calls().get("POST /gpu/instance/create", 0) == CAP
            budget = client.get(f"{apis[0].url}/api/budgets/-").json()
            assert budget["gpusInUse"] == CAP and budget["defaults"] == ["maxGpus"]
    finally:
        stack.close()


async def _burst(urls: list[str], api_key: str) -> list[httpx.Response]:
    """All creates at once (one connection each), round robin over the replicas."""
    limits = httpx.Limits(max_connections=CREATES)
    async with httpx.AsyncClient(headers={"X-API-Key": api_key}, timeout=30, limits=limits) as client:
        start = asyncio.Event()

        async def create(n: int) -> httpx.Response:
            await start.wait()
            return await client.post(f"{urls[n % len(urls)]}/api/instances", json=create_body(f"burst-{n}"))

        tasks = [asyncio.create_task(create(n)) for n in range(CREATES)]
        await asyncio.sleep(0.1)
        start.set()
        return list(await asyncio.gather(*tasks))
