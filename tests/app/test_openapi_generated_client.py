"""A client generated from the running app's `/openapi.json` (openapi-python-client, into a temporary directory)
drives the whole workflow: products, create, get, list, heartbeat, stop/start/restart/delete, jobs, health, and an
answer of every error class. The generated client raises on any status its operation does not declare, and every
answer must parse into the model declared for it (errors into `Problem`), so a spec that lies fails here.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.app.conftest import ApiServer, StartServer
from tests.app.instances_client import create_body
from tests.fakes.fixtures import FakeNovitaHandle

PACKAGE = "ngpu_generated_client"
GENERATOR_CONFIG = f"package_name_override: {PACKAGE}\nproject_name_override: ngpu-generated-client\npost_hooks: []\n"
JOB_TIMEOUT_SECONDS = 20.0


def generate_client(spec: dict[str, Any], directory: Path) -> ModuleType:
    """Run openapi-python-client on `spec` and import the package it wrote (the generator must not complain)."""
    (directory / "openapi.json").write_text(json.dumps(spec))
    (directory / "config.yaml").write_text(GENERATOR_CONFIG)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "openapi_python_client",
            "generate",
            "--path",
            "openapi.json",
            "--output-path",
            "generated",
            "--meta",
            "none",
            "--config",
            "config.yaml",
        ],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Warnings mean parts of the spec the generator could not turn into typed code.
    assert "warning" not in (result.stdout + result.stderr).lower(), result.stdout + result.stderr
    package_root = directory / "pkg"
    package_root.mkdir()
    (directory / "generated").rename(package_root / PACKAGE)
    sys.path.insert(0, str(package_root))
    return importlib.import_module(PACKAGE)


@pytest.fixture
def generated(api_server_factory: StartServer, tmp_path: Path) -> Iterator[tuple[ApiServer, ModuleType]]:
    # The status sync runs only when a job asks (a long interval): its own successful listings would otherwise reset
    # the breaker's count of consecutive failures that the last step of the workflow opens it with.
    server = api_server_factory(
        rate_limit_requests=0,
        novita_timeout_seconds=0.5,
        novita_breaker_reset_seconds=0.5,
        novita_breaker_failure_threshold=3,
        reconcile_interval_seconds=3600,
    )
    spec = httpx.get(f"{server.base_url}/openapi.json", timeout=10).json()
    package = generate_client(spec, tmp_path)
    try:
        yield server, package
    finally:
        sys.path.remove(str(tmp_path / "pkg"))
        for name in [name for name in sys.modules if name == PACKAGE or name.startswith(PACKAGE + ".")]:
            del sys.modules[name]


class Driver:
    """Calls generated operations and checks each answer: declared status, parsed into its declared model."""

    def __init__(self, package: ModuleType, server: ApiServer) -> None:
        self.package = package
        self.models = importlib.import_module(f"{PACKAGE}.models")
        self.client = package.AuthenticatedClient(
            base_url=server.base_url, token=server.api_key, raise_on_unexpected_status=True, timeout=httpx.Timeout(15.0)
        )
        self.anonymous = package.Client(base_url=server.base_url, raise_on_unexpected_status=True)
        self.statuses: set[tuple[str, int]] = set()

    def op(self, tag: str, name: str) -> ModuleType:
        return importlib.import_module(f"{PACKAGE}.api.{tag}.{name}")

    def call(self, tag: str, name: str, expected: int, *, client: Any = None, **arguments: Any) -> Any:
        """Call one operation, expect `expected`, and return the parsed answer (typed model or Problem)."""
        response = self.op(tag, name).sync_detailed(client=client or self.client, **arguments)
        assert response.status_code == expected, (name, response.status_code, response.content[:500])
        parsed = response.parsed
        if expected >= 400:
            assert isinstance(parsed, self.models.Problem), (name, parsed)
            assert parsed.status == expected and parsed.title and parsed.detail
        else:
            assert parsed is not None and not isinstance(parsed, self.models.Problem), (name, parsed)
        self.statuses.add((name, expected))
        return response

    def wait_for_job(self, job_id: str) -> Any:
        deadline = time.monotonic() + JOB_TIMEOUT_SECONDS
        while True:
            job = self.call("jobs", "get_job", 200, job_id=job_id).parsed
            if job.state.value in ("succeeded", "failed", "dead") or time.monotonic() > deadline:
                return job
            time.sleep(0.05)

    def accepted(self, response: Any) -> Any:
        """A 202: its `Location` names its job, which succeeds."""
        accepted = response.parsed
        assert response.headers["location"] == f"/api/jobs/{accepted.job_id}"
        job = self.wait_for_job(accepted.job_id)
        assert job.state.value == "succeeded", job
        return accepted


def test_the_whole_workflow_through_a_generated_client(
    generated: tuple[ApiServer, ModuleType], fake_novita: FakeNovitaHandle
) -> None:
    server, package = generated
    drive = Driver(package, server)
    models = drive.models

    # Health, liveness and metrics.
    assert drive.call("health", "livez", 200).parsed.status.value == "ok"
    assert drive.call("health", "readyz", 200).parsed.status.value == "ready"
    health = drive.call("health", "health", 200).parsed
    assert health.services.redis.value == "up" and health.queue is not None
    assert "novita_calls" in drive.call("health", "metrics", 200).content.decode()

    # Catalogue.
    products = drive.call("products", "list_products", 200, gpu_name="RTX 4090").parsed
    assert products.items and all(item.name == "RTX 4090 24GB" for item in products.items)
    assert {region.id for region in drive.call("products", "list_regions", 200).parsed.items} >= {"us-ca-6"}

    # Create (with the new fields), get, list, heartbeat.
    body = models.CreateInstanceRequest.from_dict(
        create_body(
            billingMode="spot",
            autoMigrate=True,
            minCudaVersion="12.2",
            tools=[{"name": "Jupyter", "port": 8889, "type": "http"}],
        )
    )
    created = drive.accepted(drive.call("instances", "create_instance", 202, body=body, idempotency_key="wf-1"))
    instance_id = created.instance.id
    view = drive.call("instances", "get_instance", 200, instance_id=instance_id).parsed
    assert view.state == models.InstanceState.RUNNING and view.auto_migrate is True
    page = drive.call("instances", "list_instances", 200, status=models.InstanceState.RUNNING, page_size=10).parsed
    assert instance_id in [item.id for item in page.items] and page.novita_synced is True
    assert drive.call("instances", "heartbeat", 200, instance_id=instance_id).parsed.instance_id == instance_id

    # The original service's routes: a timestamped heartbeat, stop-all's preview, actions by name.
    used_at = datetime.now(UTC) - timedelta(minutes=1)
    stamped = drive.call(
        "compat", "update_last_used", 200, instance_id=instance_id, body=models.LastUsedRequest(last_used_at=used_at)
    ).parsed
    assert stamped.last_used_at == pytest.approx(used_at.timestamp())
    preview = drive.call("compat", "stop_all", 200, body=models.StopAllRequest(dry_run=True)).parsed
    assert [item.instance_id for item in preview.items] == [instance_id] and preview.dry_run is True
    by_name = models.ByNameAction(instance_name=view.name)
    drive.accepted(drive.call("compat", "stop_by_name", 202, body=by_name))
    drive.call("compat", "stop_by_name", 409, body=by_name)  # already stopped
    drive.call("compat", "start_by_name", 404, body=models.ByNameStart(instance_name="nobody"))
    drive.call("compat", "stop_all", 422, body=models.StopAllRequest(dry_run=False))  # not confirmed

    # Actions by id, each followed through its job.
    drive.call("instances", "stop_instance", 409, instance_id=instance_id)  # already stopped
    drive.accepted(drive.call("instances", "start_instance", 202, instance_id=instance_id))
    drive.accepted(drive.call("instances", "restart_instance", 202, instance_id=instance_id))
    drive.accepted(drive.call("instances", "delete_instance", 202, instance_id=instance_id))
    assert drive.call("instances", "get_instance", 200, instance_id=instance_id).parsed.state.value == "deleted"
    assert drive.call("jobs", "list_dead_letters", 200, limit=10).parsed.items == []

    # Errors, each parsed as a Problem.
    drive.call("instances", "get_instance", 404, instance_id="0123456789abcdef")
    drive.call("jobs", "get_job", 404, job_id="no-such-job")
    drive.call("instances", "list_instances", 422, page_size=1000)
    drive.call(
        "instances",
        "create_instance",
        422,
        body=models.CreateInstanceRequest.from_dict(create_body(productId="4090-us-ca-6")),
    )  # productName and productId both given
    drive.call("products", "list_regions", 401, client=drive.anonymous)
    drive.call("instances", "create_instance", 401, client=drive.anonymous, body=body)

    # Novita's failures, on operations that call it (distinct regions: nothing comes from the cache).
    fake_novita.add_faults({"path": "/products", "kind": "server_error", "count": 2})
    drive.call("products", "list_products", 502, region="fault-502")
    fake_novita.add_faults({"path": "/products", "kind": "rate_limit", "retryAfter": 1, "count": 2})
    limited = drive.call("products", "list_products", 429, region="fault-429")
    assert limited.headers["retry-after"] == "1"
    fake_novita.add_faults({"path": "/products", "kind": "timeout", "delaySeconds": 1.0, "count": 2})
    drive.call("products", "list_products", 504, region="fault-504")
    # Every path fails, so a background call (readiness, the health check) cannot reset the breaker's count.
    fake_novita.add_faults({"path": "*", "kind": "server_error", "count": None})
    # The third failure in a row opens the breaker: the retry fails fast, and the answer is a 503.
    unavailable = drive.call("products", "list_products", 503, region="fault-503")
    assert int(unavailable.headers["retry-after"]) >= 1

    assert {status for _, status in drive.statuses} >= {200, 202, 401, 404, 409, 422, 429, 502, 503, 504}
