"""Cost guards: provisioning timeout, idle auto-stop and an optional maximum lifetime.

The decisions are pure functions of (record, activity, now, policy), so each rule is tested alone. The executor
runs them over every record and performs an action once across replicas: it takes a per-instance action lease in
Valkey (SET NX PX), re-reads the instance on Novita, decides again on the fresh status, acts, writes the action on
the record and emits a webhook event. The lease is kept until it expires, as a cool-down: no replica repeats the
action while Novita catches up.

Rules (times in seconds; all configurable, see `CostGuardPolicy`):
- provisioning timeout: Novita status toCreate/creating/pulling for `provisioning_timeout_seconds` since the record
  was created -> delete (pulling is billed; a stuck pull never finishes by itself).
- idle auto-stop: `running` with no heartbeat for `idle_timeout_seconds` -> stop; an instance is never stopped
  within `startup_grace_seconds` of becoming `running`. Monthly (prepaid) instances are left alone: stopping them
  saves nothing.
- maximum lifetime (off by default): stop a running instance `max_lifetime_seconds` after its record was created.
- dry run: decide and log, act not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from redis.asyncio import Redis

from app.core.clock import SYSTEM_CLOCK, WallClock
from app.core.redis import Lease
from app.fleet.records import RecordNotFound, RecordStore
from app.fleet.schemas import InstanceRecord, InstanceState
from app.fleet.states import PROVISIONING_STATUSES, RUNNING_STATUS
from app.lifecycle.activity import Activity, ActivityStore
from app.lifecycle.keys import KEY_PREFIX
from app.lifecycle.webhooks import EventSink
from app.novita.client import NovitaClient
from app.novita.errors import NovitaError, NovitaNotFound
from app.novita.models import Instance

logger = logging.getLogger(__name__)

# Our states in which an action was already requested (by a user or a guard): the guards wait for its outcome.
_ACTION_PENDING = frozenset({InstanceState.STOPPING, InstanceState.DELETING, InstanceState.DELETED})
_EVENT_TYPES = {"stop": "instance.auto_stopped", "delete": "instance.auto_deleted"}
# Records decided per round trip of activity reads.
_BATCH = 500


@dataclass(frozen=True)
class CostGuardPolicy:
    """Thresholds of the guards (seconds); `max_lifetime_seconds=None` turns the lifetime guard off."""

    provisioning_timeout_seconds: float = 1800.0
    idle_stop_enabled: bool = True
    idle_timeout_seconds: float = 1800.0
    startup_grace_seconds: float = 2700.0
    max_lifetime_seconds: float | None = None
    dry_run: bool = False
    action_lock_seconds: float = 300.0


class Guard(StrEnum):
    """Which guard decided."""

    PROVISIONING_TIMEOUT = "provisioning_timeout"
    IDLE_STOP = "idle_stop"
    MAX_LIFETIME = "max_lifetime"


@dataclass(frozen=True)
class GuardDecision:
    """An action a guard asks for, and why (the reason is written on the record and sent as a webhook)."""

    guard: Guard
    action: Literal["stop", "delete"]
    reason: str


def provisioning_timeout(
    record: InstanceRecord, activity: Activity, now: float, policy: CostGuardPolicy
) -> GuardDecision | None:
    """Delete an instance still provisioning `provisioning_timeout_seconds` after it was requested."""
    if record.novita_instance_id is None or record.novita_status not in PROVISIONING_STATUSES:
        return None
    age = now - record.created_at
    if age < policy.provisioning_timeout_seconds:
        return None
    return GuardDecision(
        Guard.PROVISIONING_TIMEOUT,
        "delete",
        f"still {record.novita_status} {age:.0f} s after the request (limit {policy.provisioning_timeout_seconds:g} s)",
    )


def idle_stop(record: InstanceRecord, activity: Activity, now: float, policy: CostGuardPolicy) -> GuardDecision | None:
    """Stop a running instance idle for `idle_timeout_seconds`, not within the start-up grace period."""
    if not policy.idle_stop_enabled or not _stoppable(record):
        return None
    if activity.status != RUNNING_STATUS or activity.status_since is None:
        return None  # since when it runs is not known yet: the next pass, after reconciliation observed it, decides
    running_for = now - activity.status_since
    if running_for < policy.startup_grace_seconds:
        return None
    last_activity = max(activity.status_since, activity.last_used_at or activity.status_since)
    idle_for = now - last_activity
    if idle_for < policy.idle_timeout_seconds:
        return None
    if activity.last_used_at is None or activity.last_used_at < activity.status_since:
        heard = f"no heartbeat since it started {running_for:.0f} s ago"
    else:
        heard = f"last heartbeat {idle_for:.0f} s ago"
    return GuardDecision(
        Guard.IDLE_STOP,
        "stop",
        f"idle: {heard} (idle limit {policy.idle_timeout_seconds:g} s)",
    )


def max_lifetime(
    record: InstanceRecord, activity: Activity, now: float, policy: CostGuardPolicy
) -> GuardDecision | None:
    """Stop a running instance `max_lifetime_seconds` after its record was created."""
    if policy.max_lifetime_seconds is None or not _stoppable(record):
        return None
    age = now - record.created_at
    if age < policy.max_lifetime_seconds:
        return None
    limit = policy.max_lifetime_seconds
    return GuardDecision(Guard.MAX_LIFETIME, "stop", f"reached its maximum lifetime ({age:.0f} s, limit {limit:g} s)")


def decide(record: InstanceRecord, activity: Activity, now: float, policy: CostGuardPolicy) -> GuardDecision | None:
    """The first guard that asks for an action, or None."""
    if record.state in _ACTION_PENDING:
        return None
    for rule in (provisioning_timeout, max_lifetime, idle_stop):
        decision = rule(record, activity, now, policy)
        if decision is not None:
            return decision
    return None


def _stoppable(record: InstanceRecord) -> bool:
    return (
        record.novita_instance_id is not None
        and record.novita_status == RUNNING_STATUS
        and record.billing_mode != "monthly"
    )


@dataclass(frozen=True)
class GuardOutcome:
    """What the executor did about one decision."""

    record_id: str
    decision: GuardDecision
    performed: bool
    error: str | None = None


class CostGuardExecutor:
    """Runs the guards over every record; each action happens once across replicas (a lease per instance)."""

    def __init__(
        self,
        store: RecordStore,
        novita: NovitaClient,
        redis: Redis,
        activity: ActivityStore,
        events: EventSink,
        policy: CostGuardPolicy,
        clock: WallClock = SYSTEM_CLOCK,
    ) -> None:
        self._store = store
        self._novita = novita
        self._redis = redis
        self._activity = activity
        self._events = events
        self._policy = policy
        self._clock = clock

    async def run_once(self) -> list[GuardOutcome]:
        """One pass over every record; returns the decisions taken (in dry run: the ones that would be)."""
        outcomes: list[GuardOutcome] = []
        batch: list[InstanceRecord] = []
        async for record in self._store.iter_records():
            batch.append(record)
            if len(batch) == _BATCH:
                outcomes.extend(await self._run_batch(batch))
                batch = []
        outcomes.extend(await self._run_batch(batch))
        return outcomes

    async def _run_batch(self, records: list[InstanceRecord]) -> list[GuardOutcome]:
        """Decide on a batch of records (their activity read in one round trip), then act where needed."""
        outcomes: list[GuardOutcome] = []
        activities = await self._activity.get_many([record.id for record in records]) if records else []
        for record, activity in zip(records, activities, strict=True):
            decision = decide(record, activity, self._clock(), self._policy)
            if decision is None:
                continue
            if self._policy.dry_run:
                logger.info("cost guard (dry run): would act", extra=_log_fields(record, decision))
                outcomes.append(GuardOutcome(record.id, decision, performed=False))
                continue
            outcome = await self._act_once(record)
            if outcome is not None:
                outcomes.append(outcome)
        return outcomes

    async def _act_once(self, record: InstanceRecord) -> GuardOutcome | None:
        lease = Lease(self._redis, f"{KEY_PREFIX}action-lock:{record.id}", self._policy.action_lock_seconds)
        if not await lease.acquire():
            return None  # another replica is acting on this instance
        decision = await self._decide_on_fresh_state(record)
        if decision is None:
            await lease.release()
            return None
        assert record.novita_instance_id is not None
        error: str | None = None
        try:
            if decision.action == "delete":
                await self._novita.delete_instance(record.novita_instance_id)
            else:
                await self._novita.stop_instance(record.novita_instance_id)
        except NovitaNotFound:
            pass  # gone already: what the action wanted; reconciliation marks the record
        except NovitaError as exc:
            error = str(exc)
        await self._record(record.id, decision, error)
        return GuardOutcome(record.id, decision, performed=error is None, error=error)

    async def _decide_on_fresh_state(self, record: InstanceRecord) -> GuardDecision | None:
        """Decide again on Novita's current status, so a stale record never stops a just-restarted instance."""
        assert record.novita_instance_id is not None
        try:
            live: Instance = await self._novita.get_instance(record.novita_instance_id)
        except NovitaError:
            return None  # not found or unreachable: reconciliation settles the record first
        now = self._clock()
        await self._activity.observe_status(record.id, live.status, now)
        error_text = live.error_text
        fresh = record.model_copy(update={"novita_status": live.status})
        if live.status != record.novita_status:
            try:
                fresh = await self._store.update(record.id, lambda r: r.apply_novita(live.status, error_text))
            except RecordNotFound:
                return None
        return decide(fresh, await self._activity.get(record.id), now, self._policy)

    async def _record(self, record_id: str, decision: GuardDecision, error: str | None) -> None:
        action = f"auto_{decision.action}"
        detail = f"{decision.guard.value}: {decision.reason}"

        def note(record: InstanceRecord) -> None:
            if error is None:
                record.state = InstanceState.DELETING if decision.action == "delete" else InstanceState.STOPPING
                record.add_event(action, detail)
            else:
                record.add_event(f"{action}_failed", f"{detail}; Novita: {error}")
            record.updated_at = self._clock()

        try:
            record = await self._store.update(record_id, note)
        except RecordNotFound:
            return
        log = logger.warning if error else logger.info
        log(
            "cost guard acted" if error is None else "cost guard action failed",
            extra={**_log_fields(record, decision), "error": error},
        )
        event_type = _EVENT_TYPES[decision.action] if error is None else "instance.auto_action_failed"
        await self._events.emit(
            event_type,
            record_id,
            {
                "guard": decision.guard.value,
                "action": decision.action,
                "reason": decision.reason,
                "novitaInstanceId": record.novita_instance_id,
                "error": error,
            },
        )


def _log_fields(record: InstanceRecord, decision: GuardDecision) -> dict[str, str | None]:
    return {
        "instanceId": record.id,
        "novitaInstanceId": record.novita_instance_id,
        "guard": decision.guard.value,
        "action": decision.action,
        "reason": decision.reason,
    }
