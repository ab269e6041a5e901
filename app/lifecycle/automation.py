"""The lifecycle automations assembled for one app process: what the lifespan starts and stops.

`LifecycleAutomation` builds the activity store, webhook outbox and notifier, reconciler, cost guards and spot
recovery from a `LifecycleConfig`, and runs them from one `LifecycleScheduler`. `start()` returns at once: start-up
never waits on the fleet's size or on Novita. In the background it reconciles first and waits for that up to
`startup_reconcile_timeout_seconds` before the periodic work starts (so records lost with Valkey are usually back
before any guard decides); a longer reconciliation goes on in the background (a warning says so, `/health` shows its
progress) while the scheduler ticks. Every replica does this; the leases make each piece of work happen once. All of
it runs at the background priority of the shared Novita budget.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.billing.budgets import BudgetService
from app.core.clock import SYSTEM_CLOCK, WallClock
from app.core.config import Settings
from app.fleet.records import RecordStore
from app.lifecycle.activity import ActivityStore
from app.lifecycle.budget_guard import BudgetGuard, BudgetGuardPolicy
from app.lifecycle.cost_guards import CostGuardExecutor, CostGuardPolicy
from app.lifecycle.reconcile import Reconciler
from app.lifecycle.scheduler import LifecycleScheduler, PeriodicTask
from app.lifecycle.spot import SpotPolicy, SpotRecovery
from app.lifecycle.webhooks import DeliveryPolicy, UrlGuard, WebhookNotifier, WebhookOutbox
from app.novita.client import NovitaClient
from app.novita.errors import NovitaError
from app.novita.ratebudget import Priority, novita_priority

logger = logging.getLogger(__name__)


RECONCILE_TASK = "reconcile"
# How often the scheduler asks whether a sync is due (on its interval, or because a job asked for one).
_SYNC_CHECK_SECONDS = 1.0


@dataclass(frozen=True)
class LifecycleConfig:
    """Every setting of the automations (see the README's "Lifecycle automation" section for env vars)."""

    webhook_url: str | None = None
    webhook_signing_key: bytes | None = None  # from WEBHOOK_SECRET (Settings.webhook_signing_key)
    webhook_block_private: bool = False  # True in production unless WEBHOOK_ALLOW_PRIVATE_TARGETS
    delivery: DeliveryPolicy = field(default_factory=DeliveryPolicy)
    guards: CostGuardPolicy = field(default_factory=CostGuardPolicy)
    spot: SpotPolicy = field(default_factory=SpotPolicy)
    budget_guard: BudgetGuardPolicy = field(default_factory=BudgetGuardPolicy)
    cost_guard_interval_seconds: float = 60.0
    budget_check_interval_seconds: float = 60.0
    reconcile_interval_seconds: float = 10.0
    reconcile_lease_seconds: float = 15.0
    reconcile_max_vanish_checks: int = 10
    webhook_delivery_interval_seconds: float = 5.0
    spot_check_interval_seconds: float = 300.0
    scheduler_tick_seconds: float = 1.0
    startup_reconcile_timeout_seconds: float = 10.0


def lifecycle_config(settings: Settings) -> LifecycleConfig:
    """The automations' configuration from the app's settings (the env vars are listed in the README)."""
    return LifecycleConfig(
        webhook_url=settings.webhook_url,
        webhook_signing_key=settings.webhook_signing_key,
        webhook_block_private=settings.is_production and not settings.webhook_allow_private_targets,
        delivery=DeliveryPolicy(
            max_attempts=settings.webhook_max_attempts,
            backoff_base_seconds=settings.webhook_backoff_base_seconds,
            backoff_max_seconds=settings.webhook_backoff_max_seconds,
            timeout_seconds=settings.webhook_timeout_seconds,
            lock_seconds=settings.webhook_timeout_seconds * 2 + 5,
        ),
        guards=CostGuardPolicy(
            provisioning_timeout_seconds=settings.instance_provisioning_timeout_seconds,
            idle_stop_enabled=settings.auto_stop_enabled,
            idle_timeout_seconds=settings.auto_stop_idle_seconds,
            startup_grace_seconds=settings.auto_stop_startup_grace_seconds,
            max_lifetime_seconds=settings.max_instance_lifetime_seconds or None,
            dry_run=settings.auto_stop_dry_run,
            action_lock_seconds=settings.cost_guard_action_lock_seconds,
        ),
        spot=SpotPolicy(
            enabled=settings.spot_recovery_enabled, min_interval_seconds=settings.spot_recovery_min_interval_seconds
        ),
        budget_guard=BudgetGuardPolicy(
            auto_stop=settings.budget_auto_stop,
            dry_run=settings.budget_auto_stop_dry_run,
            action_lock_seconds=settings.cost_guard_action_lock_seconds,
        ),
        cost_guard_interval_seconds=settings.cost_guard_interval_seconds,
        budget_check_interval_seconds=settings.budget_check_interval_seconds,
        reconcile_interval_seconds=settings.reconcile_interval_seconds,
        reconcile_lease_seconds=settings.reconcile_lease_seconds,
        reconcile_max_vanish_checks=settings.reconcile_max_vanish_checks,
        webhook_delivery_interval_seconds=settings.webhook_delivery_interval_seconds,
        spot_check_interval_seconds=settings.spot_check_interval_seconds,
        scheduler_tick_seconds=settings.lifecycle_tick_seconds,
        startup_reconcile_timeout_seconds=settings.reconcile_startup_timeout_seconds,
    )


class LifecycleAutomation:
    """All periodic lifecycle work of one process; `activity` (heartbeats) and `events` are shared with the API."""

    def __init__(
        self,
        config: LifecycleConfig,
        redis: Redis,
        novita: NovitaClient,
        store: RecordStore,
        *,
        recover_spot: Callable[[str], Awaitable[None]] | None = None,
        extra_tasks: Sequence[PeriodicTask] = (),
        wake_jobs: Callable[[list[str]], Awaitable[None]] | None = None,
        forget_cached: Callable[[list[str]], Awaitable[None]] | None = None,
        budgets: BudgetService | None = None,
        clock: WallClock = SYSTEM_CLOCK,
    ) -> None:
        self.config = config
        self._store = store
        self._clock = clock
        self.activity = ActivityStore(redis)
        guard = UrlGuard(block_private=config.webhook_block_private)
        self.outbox = (
            WebhookOutbox(
                redis, signing_key=config.webhook_signing_key, guard=guard, policy=config.delivery, clock=clock
            )
            if config.webhook_signing_key
            else None
        )
        self.events = WebhookNotifier(redis, self.outbox, guard, global_url=config.webhook_url, clock=clock)
        # A pending record's create job gets until its own deadline to find a lost instance before we adopt it.
        self.reconciler = Reconciler(
            novita,
            store,
            redis,
            self.activity,
            self.events,
            lease_seconds=config.reconcile_lease_seconds,
            adopt_pending_after_seconds=config.guards.provisioning_timeout_seconds,
            max_vanish_checks=config.reconcile_max_vanish_checks,
            wake_jobs=wake_jobs,
            forget_cached=forget_cached,
            clock=clock,
        )
        self.cost_guards = CostGuardExecutor(store, novita, redis, self.activity, self.events, config.guards, clock)
        tasks = [
            # Checked every second: a sync runs once its interval passed, or sooner when a job asked for one.
            PeriodicTask(
                RECONCILE_TASK,
                min(_SYNC_CHECK_SECONDS, config.reconcile_interval_seconds),
                self._sync_if_due,
                lease_seconds=config.reconcile_lease_seconds,
            ),
            PeriodicTask("cost-guards", config.cost_guard_interval_seconds, self.cost_guards.run_once),
        ]
        if self.outbox is not None:
            tasks.append(
                PeriodicTask(
                    "webhook-delivery",
                    config.webhook_delivery_interval_seconds,
                    self.outbox.deliver_due,
                    lease_seconds=config.delivery.lock_seconds,
                )
            )
        self.budget_guard: BudgetGuard | None = None
        if budgets is not None:
            self.budget_guard = BudgetGuard(budgets, store, novita, redis, self.events, config.budget_guard, clock)
            tasks.append(PeriodicTask("budgets", config.budget_check_interval_seconds, self.budget_guard.run_once))
        self.spot: SpotRecovery | None = None
        if config.spot.enabled:
            if recover_spot is None:
                raise ValueError("spot recovery is enabled but no recovery action was given")
            self.spot = SpotRecovery(store, novita, redis, self.activity, self.events, config.spot, recover_spot, clock)
            tasks.append(PeriodicTask("spot-recovery", config.spot_check_interval_seconds, self.spot.run_once))
        tasks.extend(extra_tasks)  # periodic work of other parts of the app (the background Novita health check)
        self.scheduler = LifecycleScheduler(redis, tasks, tick_seconds=config.scheduler_tick_seconds, clock=clock)
        self._loop: asyncio.Task[None] | None = None
        self.startup_reconcile: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Reconcile and then run the periodic work, all in the background; returns at once."""
        with novita_priority(Priority.BACKGROUND):  # the tasks inherit the priority
            self.startup_reconcile = asyncio.create_task(self._reconcile_at_startup(), name="startup-reconcile")
            self._loop = asyncio.create_task(self._run(self.startup_reconcile), name="lifecycle-scheduler")

    async def _sync_if_due(self) -> None:
        """Reconcile (the status sync) when its interval has passed since the last one began, or a job asked."""
        last_started = float((await self._store.sync_status()).get("startedAt") or 0.0)
        if (
            self._clock() - last_started >= self.config.reconcile_interval_seconds
            or await self._store.take_sync_request()
        ):
            await self.reconciler.run()

    async def _reconcile_at_startup(self) -> None:
        try:
            if await self.reconciler.run() is not None:
                await self.scheduler.record_run(RECONCILE_TASK)  # the first tick need not do it again
        except (NovitaError, RedisError, OSError) as error:
            logger.warning(
                "start-up reconciliation failed; the periodic one will retry",
                extra={"error": str(error) or type(error).__name__},
            )

    async def _run(self, startup: asyncio.Task[None]) -> None:
        bound = self.config.startup_reconcile_timeout_seconds
        done, _ = await asyncio.wait({startup}, timeout=bound)
        if not done:
            logger.warning(
                "start-up reconciliation is taking longer than its bound; it goes on in the background "
                "(progress in /health) and the periodic work starts now",
                extra={"boundSeconds": bound},
            )
        await self.scheduler.run_forever()

    async def stop(self, timeout_seconds: float = 5.0) -> None:
        """Stop ticking (a task cut short runs again next period) and close the outbox's connections."""
        tasks = {task for task in (self.startup_reconcile, self._loop) if task is not None}
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout_seconds)
            if pending:
                logger.error("the lifecycle scheduler did not stop in time; leaving it behind")
            for task in tasks - pending:
                if not task.cancelled() and task.exception() is not None:
                    logger.error("the lifecycle work had failed", exc_info=task.exception())
        if self.outbox is not None:
            await self.outbox.aclose()

    @property
    def running(self) -> bool:
        """True while the scheduler loop is alive."""
        return self._loop is not None and not self._loop.done()
