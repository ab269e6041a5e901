"""Helpers for the instance API tests: request bodies and waiting for jobs, all over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

JOB_TIMEOUT_SECONDS = 20.0
TERMINAL_JOB_STATES = frozenset({"succeeded", "failed", "dead"})
CREATE_PATH = "/gpu/instance/create"


def create_body(**overrides: Any) -> dict[str, Any]:
    """A valid create body (cheapest available RTX 4090, on demand); `overrides` replace or add fields."""
    body: dict[str, Any] = {
        "name": "trainer",
        "productName": "RTX 4090 24GB",
        "gpuNum": 1,
        "rootfsSize": 60,
        "imageUrl": "docker.io/library/ubuntu:22.04",
        "ports": [{"port": 8888, "type": "http"}],
        "envs": [{"key": "MODE", "value": "train"}],
    }
    body.update(overrides)
    return body


def wait_for_job(client: httpx.Client, job_id: str, timeout: float = JOB_TIMEOUT_SECONDS) -> dict[str, Any]:
    """Poll `GET /api/jobs/{id}` until the job is terminal; fail the test with the last state otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            response = client.get(f"/api/jobs/{job_id}")
            last = response.json() if response.status_code == 200 else f"{response.status_code} {response.text}"
            if response.status_code == 200 and last["state"] in TERMINAL_JOB_STATES:
                return last
        except httpx.HTTPError as error:  # the API may be restarting in some tests
            last = repr(error)
        time.sleep(0.05)
    pytest.fail(f"job {job_id} did not finish within {timeout} s; last seen: {last}")


def wait_until_ready(client: httpx.Client, instance_id: str, timeout: float = JOB_TIMEOUT_SECONDS) -> dict[str, Any]:
    """Poll `GET /api/instances/{id}` until readiness marked it (`readyAt` set); returns that view."""
    deadline = time.monotonic() + timeout
    view: Any = None
    while time.monotonic() < deadline:
        view = client.get(f"/api/instances/{instance_id}").json()
        if view.get("readyAt") is not None:
            return view
        time.sleep(0.05)
    pytest.fail(f"instance {instance_id} was not marked ready within {timeout} s; last seen: {view}")


def create_instance(client: httpx.Client, **overrides: Any) -> dict[str, Any]:
    """POST a create (202 expected) and return the answer: `{"instance": {...}, "jobId": ...}`."""
    response = client.post("/api/instances", json=create_body(**overrides))
    assert response.status_code == 202, response.text
    return response.json()


def create_running(client: httpx.Client, **overrides: Any) -> dict[str, Any]:
    """Create an instance and wait until its create job succeeded; returns the instance as GET shows it."""
    accepted = create_instance(client, **overrides)
    job = wait_for_job(client, accepted["jobId"])
    assert job["state"] == "succeeded", job
    return client.get(f"/api/instances/{accepted['instance']['id']}").json()


def run_action(client: httpx.Client, instance_id: str, action: str) -> dict[str, Any]:
    """Request start/stop/restart/delete (202 expected) and wait for its job; returns the finished job."""
    if action == "delete":
        response = client.delete(f"/api/instances/{instance_id}")
    else:
        response = client.post(f"/api/instances/{instance_id}/{action}")
    assert response.status_code == 202, response.text
    return wait_for_job(client, response.json()["jobId"])


def wait_for_list(
    client: httpx.Client,
    condition: Callable[[dict[str, Any]], bool],
    timeout: float = JOB_TIMEOUT_SECONDS,
    **params: Any,
) -> dict[str, Any]:
    """Poll `GET /api/instances` until `condition(page)` holds (lists show what the background sync saw last)."""
    deadline = time.monotonic() + timeout
    page: Any = None
    while time.monotonic() < deadline:
        page = client.get("/api/instances", params=params).json()
        if condition(page):
            return page
        time.sleep(0.05)
    pytest.fail(f"the list did not reach the expected state within {timeout} s; last seen: {page}")
