"""Per-team budgets: at most N GPUs at once, at most X USD per UTC day and per UTC month.

Limits live in Valkey (`ngpu:budget:<team>`, set by admins), with defaults from the stack for teams that have none.
GPUs are reserved per instance in one hash per team (`ngpu:budget:gpus:<team>`, field = record id, value =
`<gpus>:<reserved at>`), by a Lua script that checks the cap and reserves in one step: concurrent creates on any
number of replicas never exceed it. A reservation is released in the record's own transaction when the instance no
longer holds GPUs (stopped, deleted, or failed before Novita had it: `release_hook`), and a periodic pass drops those
a killed process left behind (`release_stale`). Spend is read from the cost meter; a create or start is refused once
the day's or month's spend reached its limit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import Field
from redis.asyncio.client import Pipeline

from app.billing.costs import CostService, day_start, month_start
from app.core.errors import AppError
from app.core.redis import RedisManager
from app.core.schemas import ApiModel, StrictRequestModel
from app.fleet import meter
from app.fleet.schemas import InstanceRecord, InstanceState
from app.fleet.store import InstanceStore

_PREFIX = "ngpu:budget:"
_TEAMS_KEY = _PREFIX + "teams"  # teams with limits set through the API
_RESERVING_TEAMS_KEY = _PREFIX + "reserving-teams"  # teams that ever reserved GPUs (for the stale pass)
# A reservation whose record is missing (its process died between the two writes) is dropped after this long.
STALE_RESERVATION_SECONDS = 60.0
NO_TEAM = "-"  # how the hash keys spell "no team"

BudgetName = Literal["maxGpus", "maxSpendPerDay", "maxSpendPerMonth"]

# KEYS[1] the team's reservation hash; ARGV: record id, gpus, cap (-1: none), now. Returns {granted, in use}.
_RESERVE_SCRIPT = """
local held = redis.call('HGET', KEYS[1], ARGV[1])
local used = 0
local entries = redis.call('HGETALL', KEYS[1])
for i = 2, #entries, 2 do
  used = used + tonumber(string.match(entries[i], '^(%d+)'))
end
if held then return {1, used} end
local want = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
if cap >= 0 and used + want > cap then return {0, used} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. ARGV[4])
return {1, used + want}
"""

# KEYS[1] the old team's reservation hash, KEYS[2] the new team's; ARGV[1] the record id. Moves a held reservation.
_MOVE_SCRIPT = """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if not held then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], held)
return 1
"""


def _team_key(team: str | None) -> str:
    return team or NO_TEAM


def _reservations_key(team: str | None) -> str:
    return f"{_PREFIX}gpus:{_team_key(team)}"


def _limits_key(team: str | None) -> str:
    return f"{_PREFIX}limits:{_team_key(team)}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


Money = Field(default=None, pattern=r"^\d{1,9}(\.\d{1,6})?$", description="USD, e.g. '250.00'; null: no limit")


class BudgetLimits(StrictRequestModel):
    """Body of `PUT /api/budgets/{team}`: each limit, or null for none (the stack's default then applies)."""

    max_gpus: int | None = Field(default=None, ge=0, le=100000, description="GPUs held at once; null: no limit")
    max_spend_per_day: str | None = Money
    max_spend_per_month: str | None = Money


class BudgetView(ApiModel):
    """A team's limits (its own or the stack's defaults) and what it uses now."""

    team: str | None
    max_gpus: int | None
    max_spend_per_day: str | None
    max_spend_per_month: str | None
    defaults: list[str] = Field(description="which limits come from the stack's defaults (none set for the team)")
    gpus_in_use: int = Field(description="GPUs reserved by the team's instances that hold them")
    spend_today: str = Field(description="USD since midnight UTC")
    spend_this_month: str = Field(description="USD since the first of the month, UTC")


class BudgetExceeded(AppError):
    """A create or start would break a team's budget (409: the team's current use conflicts with the request; a
    retry succeeds once the use goes down, which 402's payment semantics would not say)."""

    status, code, title = 409, "budget_exceeded", "Budget Exceeded"

    def __init__(self, team: str | None, budget: BudgetName, limit: str, current: str, requested: str) -> None:
        who = f"team {team!r}" if team else "instances without a team"
        super().__init__(
            f"{who} would break its budget {budget}: limit {limit}, current {current}, this request {requested}",
            extra={"team": team, "budget": budget, "limit": limit, "current": current, "requested": requested},
        )


@dataclass(frozen=True)
class DefaultBudget:
    """The stack's defaults (BUDGET_DEFAULT_*), for every team without limits of its own."""

    max_gpus: int | None = None
    max_spend_per_day: Decimal | None = None
    max_spend_per_month: Decimal | None = None


def holds_gpus(record: InstanceRecord) -> bool:
    """Whether the instance counts against its team's GPU cap."""
    if record.state in (InstanceState.STOPPED, InstanceState.DELETED):
        return False
    return not (record.state == InstanceState.FAILED and record.novita_instance_id is None)


def release_hook(pipe: Pipeline, before: InstanceState | None, record: InstanceRecord) -> None:
    """In the record's transaction: release its GPUs when it stops holding them (`InstanceStore.on_transition`).

    Only on the transition itself: a write to an already stopped record must not release the reservation a start
    took a moment before it marks the record `starting`.
    """
    if before not in (InstanceState.STOPPED, InstanceState.DELETED) and not holds_gpus(record):
        pipe.hdel(_reservations_key(record.team), record.id)


@dataclass(frozen=True)
class SpendUse:
    """A team's spend against one of its spend limits, in the current period."""

    budget: BudgetName
    period: str  # the UTC day (2026-12-02) or month (2026-12) it counts
    limit: Decimal
    spent: Decimal

    @property
    def percent(self) -> Decimal:
        return self.spent * 100 / self.limit if self.limit > 0 else Decimal(100)


class BudgetService:
    """Limits, reservations and the checks a create or start passes."""

    def __init__(self, redis: RedisManager, store: InstanceStore, costs: CostService, defaults: DefaultBudget) -> None:
        self._redis = redis
        self._store = store
        self._costs = costs
        self._defaults = defaults

    async def set_limits(self, team: str | None, limits: BudgetLimits) -> BudgetView:
        """Replace the team's limits (null fields: the stack's default)."""
        values = limits.model_dump(by_alias=True, exclude_none=True)
        client = self._redis.client
        async with client.pipeline(transaction=True) as pipe:
            pipe.delete(_limits_key(team))
            if values:
                pipe.hset(_limits_key(team), mapping={k: str(v) for k, v in values.items()})
            pipe.sadd(_TEAMS_KEY, _team_key(team))
            await pipe.execute()
        return await self.view(team)

    async def limits(self, team: str | None) -> tuple[BudgetLimits, list[str]]:
        """The limits in force for the team, and which of them are the stack's defaults."""
        own = {_text(k): _text(v) for k, v in (await self._redis.client.hgetall(_limits_key(team))).items()}
        defaults = {
            "maxGpus": self._defaults.max_gpus,
            "maxSpendPerDay": self._defaults.max_spend_per_day,
            "maxSpendPerMonth": self._defaults.max_spend_per_month,
        }
        merged: dict[str, Any] = {}
        from_defaults: list[str] = []
        for name, default in defaults.items():
            if name in own:
                merged[name] = int(own[name]) if name == "maxGpus" else own[name]
            elif default is not None:
                merged[name] = default if name == "maxGpus" else str(default)
                from_defaults.append(name)
        return BudgetLimits.model_validate(merged), from_defaults

    async def teams(self) -> list[str | None]:
        """Teams with limits of their own, or that reserved GPUs or spent anything."""
        client = self._redis.client
        names = {_text(m) for m in await client.smembers(_TEAMS_KEY)}
        names |= {_text(m) for m in await client.smembers(_RESERVING_TEAMS_KEY)}
        spent = {_text(m) for m in await client.smembers(meter.TEAMS_KEY)}
        names |= {m or NO_TEAM for m in spent}
        return [None if name == NO_TEAM else name for name in sorted(names)]

    async def gpus_in_use(self, team: str | None) -> int:
        entries = await self._redis.client.hgetall(_reservations_key(team))  # HGETALL: in the ACL user's commands
        return sum(int(_text(value).split(":", 1)[0]) for value in entries.values())

    async def view(self, team: str | None) -> BudgetView:
        """The team's limits and current use."""
        limits, from_defaults = await self.limits(team)
        now = self._costs.now()
        return BudgetView(
            team=team,
            max_gpus=limits.max_gpus,
            max_spend_per_day=limits.max_spend_per_day,
            max_spend_per_month=limits.max_spend_per_month,
            defaults=from_defaults,
            gpus_in_use=await self.gpus_in_use(team),
            spend_today=_money(await self._costs.spend(team, day_start(now), now)),
            spend_this_month=_money(await self._costs.spend(team, month_start(now), now)),
        )

    async def spend_use(self, team: str | None) -> list[SpendUse]:
        """The team's spend against each spend limit it has, in the current UTC day and month."""
        limits, _ = await self.limits(team)
        now = self._costs.now()
        moment = datetime.fromtimestamp(now, UTC)
        periods: list[tuple[BudgetName, str | None, float, str]] = [
            ("maxSpendPerDay", limits.max_spend_per_day, day_start(now), moment.strftime("%Y-%m-%d")),
            ("maxSpendPerMonth", limits.max_spend_per_month, month_start(now), moment.strftime("%Y-%m")),
        ]
        return [
            SpendUse(budget, period, Decimal(limit), await self._costs.spend(team, start, now))
            for budget, limit, start, period in periods
            if limit is not None
        ]

    async def check_spend(self, team: str | None) -> None:
        """Refuse (`BudgetExceeded`) when the team's spend today or this month reached its limit."""
        for use in await self.spend_use(team):
            if use.spent >= use.limit:
                raise BudgetExceeded(team, use.budget, str(use.limit), _money(use.spent), "more spend")

    async def reserve(self, team: str | None, record_id: str, gpus: int) -> None:
        """Check the spend limits, then reserve the GPUs atomically (idempotent per record); `BudgetExceeded` if
        either would break."""
        await self.check_spend(team)
        limits, _ = await self.limits(team)
        cap = limits.max_gpus if limits.max_gpus is not None else -1
        client = self._redis.client
        granted, used = await client.eval(
            _RESERVE_SCRIPT, 1, _reservations_key(team), record_id, str(gpus), str(cap), repr(time.time())
        )
        await client.sadd(_RESERVING_TEAMS_KEY, _team_key(team))
        if not int(granted):
            raise BudgetExceeded(team, "maxGpus", str(cap), str(int(used)), f"{gpus} GPUs")

    async def release(self, team: str | None, record_id: str) -> None:
        """Give the record's GPUs back (its create or start was not accepted after all)."""
        await self._redis.client.hdel(_reservations_key(team), record_id)

    async def move(self, from_team: str | None, to_team: str | None, record_id: str) -> None:
        """Carry the record's GPUs to its new team when an admin reassigns it, atomically (an admin's reassignment may
        take the new team past its cap: the next create or start of that team is refused until it is back under)."""
        client = self._redis.client
        moved = await client.eval(_MOVE_SCRIPT, 2, _reservations_key(from_team), _reservations_key(to_team), record_id)
        if int(moved):
            await client.sadd(_RESERVING_TEAMS_KEY, _team_key(to_team))

    async def release_stale(self, now: float | None = None) -> list[str]:
        """Drop reservations whose instance no longer holds GPUs, or whose record never got written (a process
        killed between the two writes) after `STALE_RESERVATION_SECONDS`; returns the record ids released."""
        at = time.time() if now is None else now
        released: list[str] = []
        client = self._redis.client
        for team_name in sorted(_text(m) for m in await client.smembers(_RESERVING_TEAMS_KEY)):
            team = None if team_name == NO_TEAM else team_name
            entries = {_text(k): _text(v) for k, v in (await client.hgetall(_reservations_key(team))).items()}
            for record_id, value in entries.items():
                reserved_at = float(value.split(":", 1)[1])
                if at - reserved_at < STALE_RESERVATION_SECONDS:
                    continue  # its create or start may still be writing the record
                record = await self._store.get(record_id)
                if record is None or not holds_gpus(record):
                    await client.hdel(_reservations_key(team), record_id)
                    released.append(record_id)
        return released


def _money(amount: Decimal) -> str:
    return str(amount.quantize(Decimal("0.01")))
