"""Readiness: after `running`, every exposed port must answer; one probe round per step, resumable from its inputs;
the readiness job ends at its deadline even while Novita is down."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from app.core.cache import Cache
from app.core.config import Settings
from app.core.metrics import Metrics
from app.fleet.actions import READINESS_JOB
from app.instances.handlers import InstanceJobHandlers
from app.instances.service import InstanceService
from app.jobs.queue import Job, JobContext, JobQueue, RetryLater
from app.lifecycle.readiness import GaveUp, ReadinessPolicy, ReadinessProbe, Ready, RetryAfter
from app.lifecycle.webhooks import UrlGuard, WebhookNotifier
from app.novita.models import Instance, PortMapping
from app.products.service import ProductService
from tests.app.lifecycle_helpers import LifecycleEnv, RecordingSink, managed_instance
from tests.loopback import free_port

POLICY = ReadinessPolicy(probe_timeout_seconds=1.0, retry_interval_seconds=5.0, max_wait_seconds=60.0)
T0 = 1_800_000_000.0


class AppServer:
    """A local HTTP app answering GETs with scripted statuses (then 200)."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.hits = 0
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                app.hits += 1
                self.send_response(app.statuses.pop(0) if app.statuses else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def app_server() -> Iterator[AppServer]:
    server = AppServer()
    try:
        yield server
    finally:
        server.close()


def instance(*mappings: PortMapping, status: str = "running") -> Instance:
    return Instance(id="n1", name="x", status=status, port_mappings=list(mappings))


async def test_ready_once_every_port_answers(app_server: AppServer) -> None:
    app_server.statuses = [502, 503]  # Novita's proxy before the app listens
    with socket.socket() as tcp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        target = instance(
            PortMapping(port=8888, type="http", endpoint=f"http://127.0.0.1:{app_server.port}/"),
            PortMapping(port=22, type="tcp", endpoint=f"127.0.0.1:{tcp.getsockname()[1]}"),
        )
        probe = ReadinessProbe(POLICY)

        first = await probe.step(target, probing_since=T0, now=T0)
        second = await probe.step(target, probing_since=T0, now=T0 + 5)
        third = await probe.step(target, probing_since=T0, now=T0 + 10)
        await probe.aclose()

    assert isinstance(first, RetryAfter) and first.seconds == 5.0 and "port 8888: HTTP 502" in first.reason
    assert isinstance(second, RetryAfter) and "HTTP 503" in second.reason
    assert isinstance(third, Ready) and len(third.endpoints) == 2
    assert app_server.hits == 3


async def test_an_app_answering_404_is_ready(app_server: AppServer) -> None:
    app_server.statuses = [404]
    probe = ReadinessProbe(POLICY)
    target = instance(PortMapping(port=80, type="http", endpoint=f"http://127.0.0.1:{app_server.port}"))
    assert isinstance(await probe.step(target, T0, T0), Ready)
    await probe.aclose()


async def test_gives_up_after_the_maximum_wait_and_not_before() -> None:
    target = instance(PortMapping(port=22, type="tcp", endpoint=f"127.0.0.1:{free_port()}"))
    probe = ReadinessProbe(POLICY)

    before = await probe.step(target, probing_since=T0, now=T0 + 55)
    after = await probe.step(target, probing_since=T0, now=T0 + 55.1)
    await probe.aclose()

    assert isinstance(before, RetryAfter) and "port 22" in before.reason
    assert isinstance(after, GaveUp) and "limit 60 s" in after.reason and "port 22" in after.reason


async def test_a_port_without_endpoint_is_waited_for_and_a_stopped_instance_gives_up() -> None:
    probe = ReadinessProbe(POLICY)
    waiting = await probe.step(instance(PortMapping(port=8888, type="http")), T0, T0)
    stopped = await probe.step(instance(status="exited"), T0, T0)
    no_ports = await probe.step(instance(), T0, T0)
    await probe.aclose()

    assert isinstance(waiting, RetryAfter) and "port 8888: no endpoint yet" in waiting.reason
    assert isinstance(stopped, GaveUp) and "exited" in stopped.reason
    assert isinstance(no_ports, Ready) and no_ports.endpoints == []


# -- the readiness job during a Novita outage (fake Novita faults, manual clock) ------------------------------------


async def test_the_readiness_job_gives_up_at_its_deadline_while_novita_is_down(lifecycle_env: LifecycleEnv) -> None:
    env = lifecycle_env
    record = await managed_instance(env, status="running")
    sink = RecordingSink()
    handlers = readiness_handlers(env, sink, max_wait_seconds=60.0, retry_interval_seconds=5.0)
    job = Job(
        id="readiness-1",
        kind=READINESS_JOB,
        payload={"instance_id": record.id},
        state="running",
        created_at=env.clock(),
    )
    context = JobContext(job=job, queue=JobQueue(env.redis_manager))
    env.fake.add_faults(
        {"path": "/gpu/instance", "method": "GET", "kind": "server_error", "status": 503, "count": None}
    )

    with pytest.raises(RetryLater) as first:
        await handlers.readiness(context)
    env.clock.advance(54.9)  # the next round (5 s on) would still start within the 60 s
    with pytest.raises(RetryLater):
        await handlers.readiness(context)
    env.clock.advance(0.2)
    outcome = await handlers.readiness(context)  # Novita never answered; the deadline holds anyway

    assert "Novita unavailable" in first.value.reason and first.value.delay_seconds == 5.0
    assert outcome is not None
    assert outcome["detail"].startswith("not ready: waited 55 s (limit 60 s): Novita unavailable")
    stored = await env.store.get(record.id)
    assert stored is not None and stored.ready_at is None
    assert [event.action for event in stored.events][-1] == "readiness_gave_up"
    assert sink.types() == ["instance.readiness_failed"]
    assert env.fake.call_count("GET", "/gpu/instance") >= 3  # it did ask Novita each round


async def test_the_readiness_job_still_succeeds_when_novita_comes_back_in_time(lifecycle_env: LifecycleEnv) -> None:
    env = lifecycle_env
    record = await managed_instance(env, status="running")
    sink = RecordingSink()
    handlers = readiness_handlers(env, sink, max_wait_seconds=60.0, retry_interval_seconds=5.0)
    job = Job(
        id="readiness-2",
        kind=READINESS_JOB,
        payload={"instance_id": record.id},
        state="running",
        created_at=env.clock(),
    )
    context = JobContext(job=job, queue=JobQueue(env.redis_manager))
    env.fake.add_faults({"path": "/gpu/instance", "method": "GET", "kind": "server_error", "count": 2})

    with pytest.raises(RetryLater):
        await handlers.readiness(context)  # both client attempts hit the fault
    env.clock.advance(30)
    outcome = await handlers.readiness(context)

    assert outcome is not None and outcome["detail"] == "ready"
    stored = await env.store.get(record.id)
    assert stored is not None and stored.ready_at is not None and sink.types() == ["instance.ready"]


def readiness_handlers(
    env: LifecycleEnv, sink: RecordingSink, *, max_wait_seconds: float, retry_interval_seconds: float
) -> InstanceJobHandlers:
    """The instance job handlers on the real Valkey and the fake Novita, deciding deadlines by the manual clock."""
    settings = Settings(
        redis_url=env.redis_server.url,
        novita_api_key=env.fake.api_key,
        readiness_max_wait_seconds=max_wait_seconds,
        readiness_retry_interval_seconds=retry_interval_seconds,
    )
    cache = Cache(env.redis_manager, Metrics())
    queue = JobQueue(env.redis_manager)
    no_instance_webhooks = WebhookNotifier(env.redis, None, UrlGuard(block_private=True), global_url=None)
    instances = InstanceService(
        settings=settings,
        store=env.store,
        queue=queue,
        novita=env.novita,
        cache=cache,
        activity=env.activity,
        webhooks=no_instance_webhooks,
    )
    return InstanceJobHandlers(
        settings, env.store, env.novita, ProductService(settings, env.novita, cache), instances, sink, clock=env.clock
    )
