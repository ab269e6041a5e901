"""The API served over real HTTP (uvicorn in a background thread) against the real redis-server and the fake Novita.

Fixtures:
- `api_server_factory` (function): `start(**setting_overrides) -> ApiServer`; every server it started is shut down
  gracefully at the end of the test. Use it for several replicas or non-default settings.
- `api_server` (function): one ready server with the test settings of `make_test_settings()`.
Both flush the shared redis-server and reset the fake Novita first, so each test starts from empty state, and clear
the fake's faults afterwards, whether the test passed or not.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from app.container import AppContainer
from app.core.config import Settings
from app.core.metrics import Metrics
from app.core.redis import RedisManager
from app.jobs.queue import JobQueue
from app.jobs.worker import Worker
from app.main import create_app

# Fixtures defined beside their helpers, offered here to every test module of tests/app.
from tests.app.lifecycle_helpers import lifecycle_env, webhook_receiver  # noqa: F401
from tests.fakes.fixtures import FakeNovitaHandle
from tests.fixtures_redis import RedisServer

_READY_TIMEOUT_SECONDS = 15.0

# Short timings so retries, reclaims and polls happen in fractions of a second.
FAST_TIMINGS: dict[str, Any] = {
    "shutdown_grace_seconds": 2.0,
    "redis_connect_timeout_seconds": 1.0,
    "redis_socket_timeout_seconds": 2.0,
    "redis_startup_retry_max_delay_seconds": 0.3,
    "redis_monitor_interval_seconds": 0.2,
    "job_read_block_seconds": 0.2,
    "job_visibility_timeout_seconds": 2.0,
    "job_reclaim_interval_seconds": 0.2,
    "job_scheduler_interval_seconds": 0.05,
    "job_retry_base_seconds": 0.05,
    "job_retry_max_seconds": 0.5,
    "job_concurrency": 2,
}


def fast_settings(redis_url: str, **overrides: Any) -> Settings:
    """Settings for tests below the HTTP layer (queue, cache, Valkey): `FAST_TIMINGS`, a never-used Novita key."""
    return Settings(redis_url=redis_url, novita_api_key="unused-below-http", **{**FAST_TIMINGS, **overrides})


def make_test_settings(redis_url: str, novita: FakeNovitaHandle, pid_file: Path, **overrides: Any) -> Settings:
    """Settings for an app under test: the fake Novita, a fresh client key, `FAST_TIMINGS`, then `overrides`."""
    values: dict[str, Any] = {
        **FAST_TIMINGS,
        "app_env": "development",
        "redis_url": redis_url,
        "novita_api_key": novita.api_key,
        "novita_base_url": novita.base_url,
        "novita_timeout_seconds": 2.0,
        "novita_max_attempts": 2,
        "novita_rate_limit_per_second": 1000.0,
        "api_keys": "tests:" + secrets.token_hex(16),  # a bootstrap key: the tests act as an admin of no team
        "api_key_hash_secret": secrets.token_hex(24),
        "pid_file": pid_file,
        "log_level": "INFO",
        "instance_poll_interval_seconds": 0.2,
        "instance_provisioning_timeout_seconds": 30.0,
        # Jobs watch their instances through the background sync: run it often, like the polls above.
        "reconcile_interval_seconds": 0.2,
        "reconcile_lease_seconds": 3.0,
        "lifecycle_tick_seconds": 0.05,
    }
    values.update(overrides)
    return Settings(**values)


class ApiServer:
    """A running app: `base_url`, `api_key` (an admin's), its `container` (queue, redis, worker...), a ready
    `client()`, and `new_key()` for the keys of teams."""

    def __init__(self, app: FastAPI, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.container: AppContainer = app.state.container
        keys = [key.get_secret_value() for key in settings.client_api_keys.values()]
        self.api_key = keys[0] if keys else ""  # no keys: a development server open to all
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        self._server = uvicorn.Server(
            uvicorn.Config(app, lifespan="on", log_config=None, access_log=False, timeout_graceful_shutdown=5)
        )
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [listener]}, name="api-server", daemon=True
        )

    @property
    def redis_url(self) -> str:
        """The Valkey URL the server uses (`make_test_settings` always sets one)."""
        assert self.settings.redis_url is not None
        return self.settings.redis_url.get_secret_value()

    def start(self) -> None:
        """Serve in a background thread; returns once uvicorn listens (not necessarily ready)."""
        self._thread.start()
        deadline = time.monotonic() + _READY_TIMEOUT_SECONDS
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the API server did not start")
            time.sleep(0.01)

    def client(self, *, authenticated: bool = True, timeout: float = 10.0, key: str | None = None) -> httpx.Client:
        """An HTTP client to this server, sending `key` (default: the admin's `api_key`) unless
        `authenticated=False`."""
        sent = key if key is not None else self.api_key
        headers = {"X-API-Key": sent} if authenticated and sent else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def new_key(self, team: str | None, scope: str = "operate", name: str | None = None) -> str:
        """A key created through `POST /api/keys` by the admin: returns the key itself."""
        body = {"name": name or f"{team or 'admin'}-{scope}-{secrets.token_hex(3)}", "team": team, "scope": scope}
        with self.client() as client:
            answer = client.post("/api/keys", json=body)
        assert answer.status_code == 201, answer.text
        key: str = answer.json()["key"]
        return key

    def dashboard(self, key: str) -> httpx.Client:
        """A browser-like client signed in to /ui with `key` (the form's CSRF token read from the page); close it."""
        client = httpx.Client(base_url=self.base_url, timeout=10.0)
        token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/ui/login").text)
        assert token is not None, "the sign-in form has no CSRF token"
        signed_in = client.post("/ui/login", data={"csrf_token": token.group(1), "api_key": key})
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/ui/instances", signed_in.text
        return client

    def wait_until(self, path: str, status: int, timeout: float = _READY_TIMEOUT_SECONDS) -> httpx.Response:
        """Poll `path` until it answers `status`; fails the test with the last answer otherwise."""
        deadline = time.monotonic() + timeout
        with self.client(timeout=3.0) as client:
            while True:
                try:
                    response = client.get(path)
                    if response.status_code == status:
                        return response
                    last = f"{response.status_code} {response.text}"
                except httpx.HTTPError as error:
                    last = repr(error)
                if time.monotonic() > deadline:
                    pytest.fail(f"{path} did not answer {status} within {timeout} s; last answer: {last}")
                time.sleep(0.05)

    def wait_ready(self, timeout: float = _READY_TIMEOUT_SECONDS) -> None:
        """Wait for /readyz 200."""
        self.wait_until("/readyz", 200, timeout)

    def stop(self) -> None:
        """Graceful shutdown, as on SIGTERM: uvicorn stops, the lifespan drains the worker."""
        self._server.should_exit = True
        self._thread.join(timeout=30)
        if self._thread.is_alive():
            raise RuntimeError("the API server did not shut down within 30 s")


StartServer = Callable[..., ApiServer]


@pytest.fixture
def api_server_factory(
    redis_server: RedisServer, fake_novita: FakeNovitaHandle, tmp_path: Path
) -> Iterator[StartServer]:
    """`start(wait_ready=True, redis_url=None, **setting_overrides)`: serve one more app; all stop after the test."""
    redis_server.start()  # a previous test may have left it stopped
    redis_server.flushall()
    fake_novita.reset()
    servers: list[ApiServer] = []

    def start(*, wait_ready: bool = True, redis_url: str | None = None, **overrides: Any) -> ApiServer:
        pid_file = tmp_path / f"app-{len(servers)}.pid"
        settings = make_test_settings(redis_url or redis_server.url, fake_novita, pid_file, **overrides)
        server = ApiServer(create_app(settings), settings)
        servers.append(server)
        server.start()
        if wait_ready:
            server.wait_ready()
        return server

    yield start
    # The fake is shared by the session: a test that failed before clearing its faults must not pass them on.
    fake_novita.clear_faults()
    for server in reversed(servers):
        server.stop()


@pytest.fixture
def api_server(api_server_factory: StartServer) -> ApiServer:
    """One ready API server on the shared redis-server and fake Novita."""
    return api_server_factory()


@pytest.fixture
def client(api_server: ApiServer) -> Iterator[httpx.Client]:
    """An authenticated HTTP client to `api_server`."""
    with api_server.client() as client:
        yield client


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll an async condition until true; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


class QueueKit:
    """Builds queues and workers on the shared redis-server and tears them all down after the test."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.metrics = Metrics()  # shared by the test's workers
        self._managers: list[RedisManager] = []
        self._workers: list[Worker] = []

    async def queue(self, **overrides: Any) -> JobQueue:
        """A connected queue with its own Valkey connections."""
        manager = RedisManager(fast_settings(self.server.url, **overrides))
        self._managers.append(manager)
        await manager.wait_until_connected()
        return JobQueue(manager)

    def worker(self, queue: JobQueue, handlers: dict[str, Any], name: str, **overrides: Any) -> Worker:
        """A worker (not started) with `handlers` registered."""
        worker = Worker(queue, fast_settings(self.server.url, **overrides), self.metrics, consumer_name=name)
        for kind, handler in handlers.items():
            worker.register(kind, handler)
        self._workers.append(worker)
        return worker

    async def job_state(self, queue: JobQueue, job_id: str) -> str | None:
        job = await queue.get(job_id)
        return None if job is None else job.state

    async def close(self) -> None:
        for worker in self._workers:
            await worker.stop(grace_seconds=0.5)
        for manager in self._managers:
            await manager.close()


@pytest.fixture
async def kit(redis_server: RedisServer) -> AsyncIterator[QueueKit]:
    redis_server.start()
    redis_server.flushall()
    queue_kit = QueueKit(redis_server)
    yield queue_kit
    await queue_kit.close()
