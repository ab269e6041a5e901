"""Spot recovery (opt-in twice): a spot instance Novita reclaimed (`exited` without anyone asking) is recovered,
when the deployment enables it (`SPOT_RECOVERY_ENABLED`) and the instance was created with `autoMigrate: true`.
Migration loses the data on the instance's own disks (Novita: "any new data on the system disk and local disk will
not be preserved"), so no instance is migrated unless its owner asked for it.

Recovery is Novita's migrate (`POST /gpu/instance/migrate`: the instance moves to other hardware), passed in as
`recover` so the module does not depend on how the client spells it. Each instance is recovered at most once per
`min_interval_seconds` (the time of the last attempt is written before the attempt, so a crash does not lead to a
second one), under a per-instance lease so that two replicas never both try. Every attempt is written on the record
(`spot_recovery_started` / `spot_recovery_failed` with Novita's error) and sent as a webhook to the owner.
An instance a user or a cost guard stopped is not a reclaimed one and is left stopped.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from app.core.clock import SYSTEM_CLOCK, WallClock
from app.core.redis import Lease
from app.fleet.records import RecordNotFound, RecordStore
from app.fleet.schemas import InstanceRecord, InstanceState
from app.fleet.states import STOPPED_STATUS
from app.lifecycle.activity import ActivityStore
from app.lifecycle.keys import KEY_PREFIX
from app.lifecycle.webhooks import EventSink
from app.novita.client import NovitaClient
from app.novita.errors import NovitaError

logger = logging.getLogger(__name__)

# Novita's spotStatus values that say the stop was a reclaim (reference section 1.5).
RECLAIM_SPOT_STATUSES = frozenset({"notified", "reclaiming", "terminated"})
# Record events that mean someone asked for the instance to stop, or to run again, most recent wins.
_STOP_EVENTS = frozenset({"stop_requested", "auto_stop"})
_RUN_EVENTS = frozenset(
    {
        "create_requested",
        "start_requested",
        "restart_requested",
        "created",
        "found_existing",
        "adopted",
        "rebuilt",
        "spot_recovery_started",
    }
)


@dataclass(frozen=True)
class SpotPolicy:
    """Whether recovery runs, how often per instance at most, and how long one attempt holds its lease."""

    enabled: bool = False
    min_interval_seconds: float = 4 * 3600.0
    lock_seconds: float = 120.0


@dataclass(frozen=True)
class SpotOutcome:
    """One recovery attempt."""

    record_id: str
    novita_instance_id: str
    error: str | None = None


def stop_was_requested(record: InstanceRecord) -> bool:
    """Whether the latest stop-or-run event on the record is a stop someone asked for."""
    for event in reversed(record.events):
        if event.action in _STOP_EVENTS:
            return True
        if event.action in _RUN_EVENTS:
            return False
    return False


class SpotRecovery:
    """Finds reclaimed spot instances and recovers each at most once per interval."""

    def __init__(
        self,
        store: RecordStore,
        novita: NovitaClient,
        redis: Redis,
        activity: ActivityStore,
        events: EventSink,
        policy: SpotPolicy,
        recover: Callable[[str], Awaitable[None]],
        clock: WallClock = SYSTEM_CLOCK,
    ) -> None:
        self._store = store
        self._novita = novita
        self._redis = redis
        self._activity = activity
        self._events = events
        self._policy = policy
        self._recover = recover
        self._clock = clock

    async def run_once(self) -> list[SpotOutcome]:
        """One pass; nothing when the policy is disabled."""
        if not self._policy.enabled:
            return []
        outcomes = []
        async for record in self._store.iter_records():
            # Only what the sync last saw stopped can have been reclaimed: the others cost no Novita call.
            if (
                record.billing_mode != "spot"
                or not record.auto_migrate
                or record.novita_instance_id is None
                or record.novita_status != STOPPED_STATUS
                or record.state in (InstanceState.DELETING, InstanceState.DELETED)
            ):
                continue
            outcome = await self._check(record)
            if outcome is not None:
                outcomes.append(outcome)
        return outcomes

    async def _check(self, record: InstanceRecord) -> SpotOutcome | None:
        assert record.novita_instance_id is not None
        try:
            live = await self._novita.get_instance(record.novita_instance_id)
        except NovitaError:
            return None  # reconciliation deals with vanished instances; an outage is retried next pass
        reclaimed = live.status == STOPPED_STATUS and (
            live.spot_status in RECLAIM_SPOT_STATUSES or not stop_was_requested(record)
        )
        if not reclaimed:
            return None
        lease = Lease(self._redis, f"{KEY_PREFIX}spot-lock:{record.id}", self._policy.lock_seconds)
        if not await lease.acquire():
            return None
        try:
            now = self._clock()
            last = (await self._activity.get(record.id)).last_spot_migration_at
            if last is not None and now - last < self._policy.min_interval_seconds:
                return None
            await self._activity.mark_spot_migration(record.id, now)
            return await self._attempt(record.id, record.novita_instance_id)
        finally:
            await lease.release()

    async def _attempt(self, record_id: str, novita_id: str) -> SpotOutcome:
        error: str | None = None
        try:
            await self._recover(novita_id)
        except NovitaError as exc:
            error = str(exc)
        action = "spot_recovery_started" if error is None else "spot_recovery_failed"
        detail = "reclaimed spot instance: recovery requested" if error is None else f"Novita: {error}"

        def note(record: InstanceRecord) -> None:
            record.add_event(action, detail)
            record.updated_at = self._clock()

        with contextlib.suppress(RecordNotFound):  # deleted meanwhile: the webhook still tells the owner
            await self._store.update(record_id, note)
        (logger.warning if error else logger.info)(
            "spot recovery", extra={"instanceId": record_id, "novitaInstanceId": novita_id, "error": error}
        )
        await self._events.emit(f"instance.{action}", record_id, {"novitaInstanceId": novita_id, "error": error})
        return SpotOutcome(record_id, novita_id, error)
