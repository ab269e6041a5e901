"""The composition root: the app's long-lived objects, built and wired once per app.

It sits at the top of `app/` (it imports every package; none imports it). Routes reach what it built through
`app.core.deps.provide`, by type; job handlers are registered on the worker here.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.access.keys import KeyRing
from app.billing.budgets import NO_TEAM, BudgetService, DefaultBudget, release_hook
from app.billing.costs import CostService
from app.core.cache import Cache
from app.core.config import Settings
from app.core.deps import Services
from app.core.logging import SecretRedactor
from app.core.metrics import Metrics
from app.core.process import ProcessState
from app.core.ratelimit import RateLimiter
from app.core.redis import RedisManager
from app.fleet import meter
from app.fleet.store import InstanceStore
from app.health.novita import CHECK_TASK, NovitaHealth
from app.health.sources import HealthSources
from app.instances.handlers import InstanceJobHandlers
from app.instances.service import InstanceService, cached_view_keys
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
    keys: KeyRing  # API keys as principals: the bootstrap admins of API_KEYS and those stored in Valkey
    instances: InstanceService
    products: ProductService
    costs: CostService
    budgets: BudgetService
    automation: LifecycleAutomation  # reconciliation, cost guards, webhooks, spot recovery
    worker: Worker
    process: ProcessState
    redact: SecretRedactor  # for any text that leaves the process (health reasons), besides the log filter

    @classmethod
    def build(cls, settings: Settings) -> AppContainer:
        """Wire the objects together; nothing connects yet."""
        metrics = Metrics()
        redis = RedisManager(settings)
        rate_budget = SharedRateBudget(
            redis,
            settings.novita_rate_limit_per_second,
            burst=settings.novita_rate_limit_burst,
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
        costs = CostService(redis, store)
        budgets = BudgetService(
            redis,
            store,
            costs,
            DefaultBudget(
                max_gpus=settings.budget_default_max_gpus,
                max_spend_per_day=settings.budget_default_max_spend_per_day,
                max_spend_per_month=settings.budget_default_max_spend_per_month,
            ),
        )
        store.on_transition(release_hook)

        def count_spend(segment: meter.Segment) -> None:
            metrics.spend.labels(team=segment.team or NO_TEAM).inc(float(segment.cost()))

        store.on_segment(count_spend)
        novita_health = NovitaHealth(
            novita,
            redis.client,
            check_interval_seconds=settings.novita_health_check_interval_seconds,
            check_timeout_seconds=settings.novita_health_timeout_seconds,
        )

        async def forget_cached(novita_ids: list[str]) -> None:
            await cache.invalidate(keys=cached_view_keys(novita_ids))

        automation = LifecycleAutomation(
            lifecycle_config(settings),
            redis.client,
            novita,
            store,
            recover_spot=novita.migrate_instance,
            extra_tasks=[PeriodicTask(CHECK_TASK, settings.novita_health_check_interval_seconds, novita_health.check)],
            wake_jobs=queue.wake,
            forget_cached=forget_cached,
            budgets=budgets,
        )
        instances = InstanceService(
            settings=settings,
            store=store,
            queue=queue,
            novita=novita,
            cache=cache,
            activity=automation.activity,
            webhooks=automation.events,
            budgets=budgets,
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
            keys=KeyRing(redis, settings.api_key_hashing_key, settings.client_api_keys),
            instances=instances,
            products=ProductService(settings, novita, cache),
            costs=costs,
            budgets=budgets,
            automation=automation,
            worker=Worker(queue, settings, metrics),
            process=ProcessState(),
            redact=SecretRedactor(settings.secret_values()),
        )

    def services(self) -> Services:
        """What routes may ask for by type (`app.core.deps.provide`)."""
        services = Services()
        services.add(Settings, self.settings)
        services.add(Metrics, self.metrics)
        services.add(RedisManager, self.redis)
        services.add(NovitaHealth, self.novita_health)
        services.add(JobQueue, self.queue)
        services.add(JobControl, self.jobs)
        services.add(RateLimiter, self.rate_limiter)
        services.add(KeyRing, self.keys)
        services.add(InstanceStore, self.instances.store)
        services.add(InstanceService, self.instances)
        services.add(ProductService, self.products)
        services.add(CostService, self.costs)
        services.add(BudgetService, self.budgets)
        services.add(Worker, self.worker)
        services.add(ProcessState, self.process)
        services.add(SecretRedactor, self.redact)
        services.add(
            HealthSources,
            HealthSources(
                redis=self.redis,
                queue=self.queue,
                worker=self.worker,
                process=self.process,
                novita_health=self.novita_health,
                records=self.instances.store,
                metrics=self.metrics,
                redact=self.redact,
            ),
        )
        return services

    def register_job_handlers(self) -> None:
        """Put the instance job handlers on the worker."""
        handlers = InstanceJobHandlers(
            self.settings,
            self.instances.store,
            self.novita,
            self.products,
            self.instances,
            self.automation.events,
        )
        handlers.register(self.worker, self.jobs)
