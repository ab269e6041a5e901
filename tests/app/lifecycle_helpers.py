"""Shared pieces of the lifecycle tests: a Valkey client and record store on the real redis-server, a Novita client
on the fake Novita, a manual wall clock, a local webhook receiver on 127.0.0.1, and instance/record builders.

tests/app/conftest.py offers the fixtures (`lifecycle_env`, `webhook_receiver`) to every test module.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from redis.asyncio import Redis

from app.core.config import Settings
from app.core.redis import RedisManager
from app.fleet.schemas import BillingMode, InstanceRecord, InstanceState, PortSpec
from app.fleet.store import InstanceStore
from app.fleet.views import upstream_name
from app.instances.service import new_record_id
from app.lifecycle.activity import ActivityStore
from app.lifecycle.webhooks import WebhookEvent
from app.novita.client import NovitaClient
from app.novita.models import CreateInstanceRequest
from tests.fakes.fixtures import FakeNovitaHandle
from tests.fixtures_redis import RedisServer


class ManualWallClock:
    """Unix-seconds clock that moves only when told to (`clock()` reads it)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds


@dataclass
class RecordingSink:
    """An `EventSink` that keeps what was emitted (for tests that look at events, not deliveries)."""

    events: list[WebhookEvent] = field(default_factory=list)

    async def emit(self, event_type: str, instance_id: str | None, data: dict[str, Any]) -> WebhookEvent:
        event = WebhookEvent(type=event_type, instance_id=instance_id, data=data, occurred_at=time.time())
        self.events.append(event)
        return event

    def types(self) -> list[str]:
        """The emitted event types, in order."""
        return [event.type for event in self.events]


@dataclass
class LifecycleEnv:
    """Everything a lifecycle test needs, on the real redis-server (flushed) and the fake Novita (reset)."""

    redis: Redis
    redis_manager: RedisManager
    store: InstanceStore
    activity: ActivityStore
    novita: NovitaClient
    fake: FakeNovitaHandle
    clock: ManualWallClock
    redis_server: RedisServer

    def new_novita_client(self) -> NovitaClient:
        """Another client to the fake (e.g. for a second replica)."""
        return novita_client(self.fake)


def novita_client(fake: FakeNovitaHandle) -> NovitaClient:
    """A Novita client to the fake with short timeouts and no rate limiting to speak of."""
    return NovitaClient(
        fake.base_url,
        fake.api_key,
        timeout_seconds=3.0,
        max_attempts=2,
        backoff_base_seconds=0.01,
        backoff_max_seconds=0.05,
        rate_limit_per_second=1000.0,
    )


@pytest.fixture
async def lifecycle_env(redis_server: RedisServer, novita: FakeNovitaHandle) -> AsyncIterator[LifecycleEnv]:
    """A flushed Valkey, a reset fake Novita, clients to both and a manual clock."""
    redis_server.start()
    redis_server.flushall()
    settings = Settings(redis_url=redis_server.url, novita_api_key="unused-in-lifecycle-tests")
    manager = RedisManager(settings)
    client = novita_client(novita)
    env = LifecycleEnv(
        redis=manager.client,
        redis_manager=manager,
        store=InstanceStore(manager),
        activity=ActivityStore(manager.client),
        novita=client,
        fake=novita,
        clock=ManualWallClock(),
        redis_server=redis_server,
    )
    try:
        yield env
    finally:
        await client.aclose()
        await manager.close()


async def create_on_novita(
    env: LifecycleEnv, name: str, *, billing_mode: BillingMode = "onDemand", ports: str | None = None
) -> str:
    """Create an instance on the fake Novita (RTX 4090 in us-ca-6) and return its Novita id."""
    return await env.novita.create_instance(
        CreateInstanceRequest(
            name=name,
            product_id="4090-us-ca-6",
            gpu_num=1,
            rootfs_size=20,
            image_url="docker.io/library/ubuntu:22.04",
            ports=ports,
            billing_mode=billing_mode,
        )
    )


def make_record(
    *,
    name: str = "trainer",
    novita_instance_id: str | None = None,
    novita_status: str | None = None,
    created_at: float,
    billing_mode: BillingMode = "onDemand",
    record_id: str | None = None,
    auto_migrate: bool = False,
) -> InstanceRecord:
    """A record as the API writes it, optionally already holding a Novita id and status."""
    record_id = record_id or new_record_id()
    record = InstanceRecord(
        id=record_id,
        name=name,
        upstream_name=upstream_name(name, record_id),
        novita_instance_id=novita_instance_id,
        product_name="RTX 4090 24GB",
        gpu_num=1,
        rootfs_size=20,
        image_url="docker.io/library/ubuntu:22.04",
        billing_mode=billing_mode,
        auto_migrate=auto_migrate,
        ports=[PortSpec(port=8888, type="http")],
        created_at=created_at,
        updated_at=created_at,
    )
    if novita_status is not None:
        record.apply_novita(novita_status, None)
    else:
        record.state = InstanceState.PENDING
    return record


async def managed_instance(
    env: LifecycleEnv,
    *,
    status: str,
    billing_mode: BillingMode = "onDemand",
    name: str = "trainer",
    auto_migrate: bool = False,
) -> InstanceRecord:
    """A record of ours with a matching instance on the fake Novita, frozen in `status` (created at clock time)."""
    record_id = new_record_id()
    novita_id = await create_on_novita(env, upstream_name(name, record_id), billing_mode=billing_mode)
    env.fake.set_state(novita_id, status=status, frozen=True)
    record = make_record(
        name=name,
        record_id=record_id,
        novita_instance_id=novita_id,
        novita_status=status,
        created_at=env.clock(),
        billing_mode=billing_mode,
        auto_migrate=auto_migrate,
    )
    assert await env.store.create(record, {})
    await env.store.drop_spec(record.id)
    return record


@dataclass
class ReceivedWebhook:
    """One request the receiver got."""

    headers: dict[str, str]
    body: bytes


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that records POSTs and answers with scripted statuses (then 200)."""

    def __init__(self) -> None:
        self.received: list[ReceivedWebhook] = []
        self.statuses: list[int] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    receiver.received.append(ReceivedWebhook({k.lower(): v for k, v in self.headers.items()}, body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies received, in order."""
        return [json.loads(item.body) for item in self.received]

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A local webhook receiver on 127.0.0.1."""
    receiver = WebhookReceiver()
    try:
        yield receiver
    finally:
        receiver.close()
