"""The budget guard: each period (once across replicas), it closes the cost meters' intervals open for over an hour
(so the spend counter of /metrics moves), releases the GPU reservations a killed process left behind, and compares
each team's spend with its day and month limits.

- Crossing 80 % and 100 % of a spend limit sends `budget.threshold_crossed` once per team, limit, period and
  threshold (a SET NX marker in Valkey, so no replica sends it twice).
- At 100 %, with `auto_stop` on (off by default), the team's instances that hold GPUs are stopped on Novita and
  `instance.auto_stopped` is sent with guard `budget`; `dry_run` logs what it would stop and acts not, like the
  cost guards. New creates and starts are refused by the budget check in the meantime.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from redis.asyncio import Redis

from app.billing.budgets import BudgetService, SpendUse, holds_gpus
from app.core.clock import SYSTEM_CLOCK, WallClock
from app.core.redis import Lease, texts
from app.fleet import meter
from app.fleet.records import RecordNotFound, RecordStore
from app.fleet.schemas import InstanceRecord, InstanceState
from app.lifecycle.keys import KEY_PREFIX
from app.lifecycle.webhooks import EventSink
from app.novita.client import NovitaClient
from app.novita.errors import NovitaError, NovitaNotFound

logger = logging.getLogger(__name__)

THRESHOLDS = (80, 100)
# An open billed interval older than this is closed and reopened (the spend counter of /metrics moves, and the
# meter's sorted sets grow by at most one interval per instance and hour).
METER_CHECKPOINT_SECONDS = 3600.0
METER_READ_BATCH = 500  # records read per round trip when checking which open intervals to checkpoint
_ALERT_MARKER_SECONDS = 40 * 86400  # longer than any period it marks
# States in which an instance holds GPUs that a stop gives back (an action already requested is left to finish).
_STOPPABLE = frozenset(
    {InstanceState.RUNNING, InstanceState.STARTING, InstanceState.RESTARTING, InstanceState.PROVISIONING}
)


@dataclass(frozen=True)
class BudgetGuardPolicy:
    """`auto_stop`: stop a team's instances at 100 % of a spend limit; `dry_run`: only say so."""

    auto_stop: bool = False
    dry_run: bool = False
    action_lock_seconds: float = 300.0


@dataclass(frozen=True)
class BudgetOutcome:
    """What one pass did about a team: the alerts it sent and the instances it stopped (or would stop)."""

    team: str | None
    alerts: list[tuple[str, int]]  # (budget, threshold)
    stopped: list[str]
    performed: bool  # False in dry run


class BudgetGuard:
    """One pass at a time, from the lifecycle scheduler."""

    def __init__(
        self,
        budgets: BudgetService,
        store: RecordStore,
        novita: NovitaClient,
        redis: Redis,
        events: EventSink,
        policy: BudgetGuardPolicy,
        clock: WallClock = SYSTEM_CLOCK,
    ) -> None:
        self._budgets = budgets
        self._store = store
        self._novita = novita
        self._redis = redis
        self._events = events
        self._policy = policy
        self._clock = clock

    async def run_once(self) -> list[BudgetOutcome]:
        """Checkpoint the meters, release stale reservations, then alert and (maybe) stop per team."""
        await self.checkpoint_meters()
        await self._budgets.release_stale(self._clock())
        outcomes = []
        for team in await self._budgets.teams():
            outcome = await self._check_team(team)
            if outcome.alerts or outcome.stopped:
                outcomes.append(outcome)
        return outcomes

    async def checkpoint_meters(self) -> None:
        """Close the open billed intervals older than `METER_CHECKPOINT_SECONDS` at now and open the next ones."""
        now = self._clock()
        open_ids = sorted(texts(await self._redis.smembers(meter.OPEN_KEY)))
        # Read in batches (a whole running fleet is open: 10,000 reads one by one took seconds every minute).
        for start in range(0, len(open_ids), METER_READ_BATCH):
            batch = open_ids[start : start + METER_READ_BATCH]
            records = await self._store.get_many(batch)
            gone = set(batch).difference(record.id for record in records)
            if gone:
                await self._redis.srem(meter.OPEN_KEY, *gone)  # expired with their meter open: nothing to bill
            for record in records:
                if now - (record.billing_since or now) < METER_CHECKPOINT_SECONDS:
                    continue
                with contextlib.suppress(RecordNotFound):
                    await self._store.update(record.id, _unchanged, checkpoint_meter=True)

    async def _check_team(self, team: str | None) -> BudgetOutcome:
        alerts: list[tuple[str, int]] = []
        exhausted = False
        for use in await self._budgets.spend_use(team):
            for threshold in THRESHOLDS:
                if use.percent >= threshold and await self._first_alert(team, use, threshold):
                    alerts.append((use.budget, threshold))
                    await self._events.emit("budget.threshold_crossed", None, _alert_data(team, use, threshold))
            exhausted = exhausted or use.spent >= use.limit
        stopped: list[str] = []
        if exhausted and self._policy.auto_stop:
            stopped = await self._stop_team(team)
        return BudgetOutcome(team, alerts, stopped, performed=not self._policy.dry_run)

    async def _first_alert(self, team: str | None, use: SpendUse, threshold: int) -> bool:
        marker = f"{KEY_PREFIX}budget-alert:{team or '-'}:{use.budget}:{use.period}:{threshold}"
        return bool(await self._redis.set(marker, "1", nx=True, ex=_ALERT_MARKER_SECONDS))

    async def _stop_team(self, team: str | None) -> list[str]:
        targets = [
            record
            async for record in self._store.iter_records()
            if record.team == team and record.state in _STOPPABLE and holds_gpus(record) and record.novita_instance_id
        ]
        stopped = []
        for record in targets:
            if self._policy.dry_run:
                logger.info("budget guard (dry run): would stop", extra=_log_fields(record))
                stopped.append(record.id)
            elif await self._stop(record):
                stopped.append(record.id)
        return stopped

    async def _stop(self, record: InstanceRecord) -> bool:
        lease = Lease(self._redis, f"{KEY_PREFIX}action-lock:{record.id}", self._policy.action_lock_seconds)
        if not await lease.acquire():
            return False  # another replica, or a cost guard, is acting on it
        assert record.novita_instance_id is not None
        error: str | None = None
        try:
            await self._novita.stop_instance(record.novita_instance_id)
        except NovitaNotFound:
            pass  # gone already; reconciliation marks the record
        except NovitaError as exc:
            error = str(exc)
        reason = f"team {record.team!r} reached a spend budget"

        def note(current: InstanceRecord) -> None:
            if error is None:
                current.state = InstanceState.STOPPING
                current.add_event("auto_stop", f"budget: {reason}")
            else:
                current.add_event("auto_stop_failed", f"budget: {reason}; Novita: {error}")
            current.updated_at = self._clock()

        try:
            await self._store.update(record.id, note)
        except RecordNotFound:
            return False
        logger.info(
            "budget guard stopped an instance" if error is None else "budget guard stop failed",
            extra={**_log_fields(record), "error": error},
        )
        await self._events.emit(
            "instance.auto_stopped" if error is None else "instance.auto_action_failed",
            record.id,
            {
                "guard": "budget",
                "action": "stop",
                "reason": reason,
                "team": record.team,
                "novitaInstanceId": record.novita_instance_id,
                "error": error,
            },
        )
        return error is None


def _unchanged(record: InstanceRecord) -> None:
    """A record change that changes nothing (the checkpoint moves only the meter)."""


def _alert_data(team: str | None, use: SpendUse, threshold: int) -> dict[str, str | int | None]:
    return {
        "team": team,
        "budget": use.budget,
        "period": use.period,
        "threshold": threshold,
        "limit": str(use.limit),
        "current": meter.shown(use.spent),
    }


def _log_fields(record: InstanceRecord) -> dict[str, str | None]:
    return {"instanceId": record.id, "team": record.team, "novitaInstanceId": record.novita_instance_id}
