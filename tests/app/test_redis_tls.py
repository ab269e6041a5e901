"""Valkey over TLS, as on Aiven: `rediss://`/`valkeys://` with a password and a CA the test makes (trustme)."""

from __future__ import annotations

import asyncio
import time

from app.core.metrics import Metrics
from app.core.redis import RedisManager
from app.jobs.queue import JobContext, JobQueue
from app.jobs.worker import Worker
from tests.app.conftest import StartServer, fast_settings
from tests.fixtures_redis import RedisServer


async def test_a_job_runs_over_tls_with_the_test_ca_and_an_aiven_style_url(redis_tls_server: RedisServer) -> None:
    assert redis_tls_server.ca_path is not None
    aiven_url = redis_tls_server.url.replace("rediss://", "valkeys://")  # the scheme the Aiven console shows
    settings = fast_settings(aiven_url, redis_ca_cert=redis_tls_server.ca_path)
    manager = RedisManager(settings)
    assert manager.uses_tls
    await asyncio.wait_for(manager.wait_until_connected(), 10)
    queue = JobQueue(manager)
    worker = Worker(queue, settings, Metrics(), consumer_name="tls")

    async def over_tls(context: JobContext) -> dict[str, bool]:
        return {"tls": True}

    worker.register("demo.tls", over_tls)
    await worker.start()
    try:
        job = await queue.enqueue("demo.tls", {})
        deadline = time.monotonic() + 10
        while (current := await queue.get(job.id)) is not None and current.state != "succeeded":
            assert time.monotonic() < deadline, "job over TLS did not finish"
            await asyncio.sleep(0.02)
        assert current is not None and current.result == {"tls": True}
    finally:
        await worker.stop(grace_seconds=0.5)
        await manager.close()


async def test_tls_certificate_is_verified_and_the_password_never_shows(redis_tls_server: RedisServer) -> None:
    # Without our CA the server's certificate is untrusted: the connection must be refused, not silently accepted.
    manager = RedisManager(fast_settings(redis_tls_server.url))
    try:
        assert await manager.ping(timeout_seconds=3) is False
        assert manager.last_error is not None and "certificate" in manager.last_error.lower()
        assert redis_tls_server.password is not None and redis_tls_server.password not in manager.last_error
    finally:
        await manager.close()


def test_app_becomes_healthy_on_tls_valkey(api_server_factory: StartServer, redis_tls_server: RedisServer) -> None:
    redis_tls_server.flushall()
    server = api_server_factory(redis_url=redis_tls_server.url, redis_ca_cert=redis_tls_server.ca_path)
    with server.client() as client:
        health = client.get("/health")
    assert health.status_code == 200
    assert health.json()["services"]["redis"] == "up" and health.json()["status"] == "healthy"
    assert redis_tls_server.password and redis_tls_server.password not in health.text
