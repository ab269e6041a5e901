"""The app's long-lived objects, built once per app and reached from routes through `get_container`."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from fastapi import Request

from app.core.cache import Cache
from app.core.config import Settings
from app.core.logging import SecretRedactor
from app.core.metrics import Metrics
from app.core.ratelimit import RateLimiter
from app.core.redis import RedisManager
from app.health.novita import CHECK_TASK, NovitaHealth
from app.instances.service import InstanceService, cached_view_keys
from app.instances.store import InstanceStore
from app.jobs.queue import JobQueue
from app.jobs.service import JobControl
from app.jobs.worker import Worker
from app.lifecycle.automation import LifecycleAutomation, lifecycle_config
from app.lifecycle.scheduler import PeriodicTask
from app.novita.client import NovitaClient
from app.novita.ratebudget import LocalBudget, SharedRateBudget
from app.novita.resilience import Clock
from app.products.service import ProductService


@dataclass
class Lifecycle:
    """Start-up progress that health endpoints report."""

    started_at: float = field(default_factory=time.monotonic)
    index_ready: bool = False  # the instance list index exists (built from older records if needed)
    ready_once: bool = False  # Valkey answered and the worker started, at least once since the process began
    shutting_down: bool = False

    @property
    def uptime_seconds(self) -> float:
        """Seconds since the app was built."""
        return time.monotonic() - self.started_at


@dataclass
class AppContainer:
    """Everything a request or a job handler needs; one per app."""

    settings: Settings
    metrics: Metrics
    redis: RedisManager
    novita: NovitaClient
    novita_health: NovitaHealth  # what /health says about Novita, without a call per request
    queue: JobQueue
    jobs: JobControl  # cancel and requeue
    cache: Cache
    rate_limiter: RateLimiter
    instances: InstanceService
    products: ProductService
    automation: LifecycleAutomation  # reconciliation, cost guards, webhooks, spot recovery
    worker: Worker
    lifecycle: Lifecycle
    redact: SecretRedactor  # for any text that leaves the process (health reasons), besides the log filter

    @classmethod
    def build(cls, settings: Settings) -> AppContainer:
        """Wire the objects together; nothing connects yet."""
        metrics = Metrics()
        redis = RedisManager(settings)
        rate_budget = SharedRateBudget(
            redis, settings.novita_rate_limit_per_second, burst=settings.novita_rate_limit_burst,
            fallback=LocalBudget(settings.novita_rate_limit_fallback_per_second, Clock()),
        )
        novita = NovitaClient(
            settings.novita_base_url,
            settings.novita_api_key.get_secret_value(),
            timeout_seconds=settings.novita_timeout_seconds,
            max_attempts=settings.novita_max_attempts,
            rate_limit_per_second=settings.novita_rate_limit_per_second,
            breaker_failure_threshold=settings.novita_breaker_failure_threshold,
            breaker_reset_seconds=settings.novita_breaker_reset_seconds,
            rate_budget=rate_budget,
        )
        queue = JobQueue(redis)
        cache = Cache(redis, metrics, lock_seconds=settings.cache_lock_seconds)
        store = InstanceStore(redis)
        novita_health = NovitaHealth(
            novita, redis.client, check_interval_seconds=settings.novita_health_check_interval_seconds,
            check_timeout_seconds=settings.novita_health_timeout_seconds,
        )

        async def forget_cached(novita_ids: list[str]) -> None:
            await cache.invalidate(keys=cached_view_keys(novita_ids))

        automation = LifecycleAutomation(
            lifecycle_config(settings), redis.client, novita, store, recover_spot=novita.migrate_instance,
            extra_tasks=[PeriodicTask(CHECK_TASK, settings.novita_health_check_interval_seconds, novita_health.check)],
            wake_jobs=queue.wake, forget_cached=forget_cached,
        )
        instances = InstanceService(
            settings=settings, store=store, queue=queue, novita=novita, cache=cache, activity=automation.activity,
            webhooks=automation.events,
        )
        return cls(
            settings=settings,
            metrics=metrics,
            redis=redis,
            novita=novita,
            novita_health=novita_health,
            queue=queue,
            jobs=JobControl(queue, retention_seconds=settings.job_retention_seconds),
            cache=cache,
            rate_limiter=RateLimiter(
                redis, metrics, limit=settings.rate_limit_requests, window_seconds=settings.rate_limit_window_seconds
            ),
            instances=instances,
            products=ProductService(settings, novita, cache),
            automation=automation,
            worker=Worker(queue, settings, metrics),
            lifecycle=Lifecycle(),
            redact=SecretRedactor(settings.secret_values()),
        )


async def get_container(request: Request) -> AppContainer:
    """FastAPI dependency: the container of the app serving this request (async: no threadpool hop per request)."""
    container: AppContainer = request.app.state.container
    return container
