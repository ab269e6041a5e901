"""Cost reports over the meter's intervals: by team, by instance or by UTC day, for any period.

Closed intervals are read from the meter's sorted sets (scored by their end, so a period reads only the intervals
that end in or after it); the intervals still open are read from their records, up to now.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Literal

from pydantic import Field

from app.core.clock import SYSTEM_CLOCK, WallClock
from app.core.redis import RedisManager
from app.core.schemas import ApiModel
from app.fleet import meter
from app.fleet.store import InstanceStore

GroupBy = Literal["team", "instance", "day"]


class CostLine(ApiModel):
    """The cost of one group in the period."""

    key: str | None = Field(description="the team (null: no team), the instance id, or the UTC day (YYYY-MM-DD)")
    team: str | None = Field(None, description="the instance's team (groupBy=instance)")
    cost: str = Field(description="USD, exact to the micro-dollar")
    billed_seconds: dict[str, float] = Field(description="seconds billed per billing state in the period")


class CostReport(ApiModel):
    """`GET /api/costs`."""

    group_by: GroupBy
    from_: float = Field(alias="from", description="start of the period (Unix seconds, inclusive)")
    to: float = Field(description="end of the period (Unix seconds, exclusive)")
    total: str = Field(description="USD in the period, every group together")
    items: list[CostLine]


@dataclass
class _Tally:
    cost: Decimal = Decimal(0)
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    team: str | None = None


def month_start(at: float) -> float:
    """Midnight UTC of the first day of `at`'s month."""
    day = datetime.fromtimestamp(at, UTC)
    return datetime(day.year, day.month, 1, tzinfo=UTC).timestamp()


def day_start(at: float) -> float:
    """Midnight UTC of `at`'s day."""
    day = datetime.fromtimestamp(at, UTC).date()
    return datetime.combine(day, datetime.min.time(), UTC).timestamp()


def parse_instant(text: str) -> float:
    """An ISO date (midnight UTC) or datetime (UTC when it names no offset), as Unix seconds; ValueError otherwise."""
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC).timestamp()
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO date (2026-12-01) or datetime (2026-12-01T13:00:00Z)") from None
    return (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).timestamp()


class CostService:
    """Reads the meter: reports, and the spend of a team in a period (what the budgets compare with)."""

    def __init__(self, redis: RedisManager, store: InstanceStore, *, clock: WallClock = SYSTEM_CLOCK) -> None:
        self._redis = redis
        self._store = store
        self._clock = clock

    def now(self) -> float:
        return self._clock()

    async def segments(
        self, start: float, end: float, team: str | None = None, *, any_team: bool = True
    ) -> list[meter.Segment]:
        """Every billed interval overlapping [start, end): closed ones and the open ones cut at now."""
        key = meter.SEGMENTS_KEY if any_team else meter.team_segments_key(team)
        now = self._clock()
        # A Valkey failure here becomes a 503 in app.core.errors, like every other read.
        raws = await self._redis.client.zrangebyscore(key, f"({start!r}", "+inf")
        members = await self._redis.client.smembers(meter.OPEN_KEY)
        open_ids = sorted(m.decode() if isinstance(m, bytes) else m for m in members)
        found = [meter.Segment.from_json(raw) for raw in raws if isinstance(raw, (str, bytes))]
        for record in await self._store.get_many(open_ids):  # one round trip per batch, not one per instance
            if not any_team and record.team != team:
                continue
            running = meter.open_segment(record, now)
            if running is not None:
                found.append(running)
        return [s for s in found if s.start < end and s.end > start]

    async def spend(self, team: str | None, start: float, end: float | None = None) -> Decimal:
        """What `team` spent in [start, end) (end: now)."""
        stop = self._clock() if end is None else end
        return sum((s.cost(start, stop) for s in await self.segments(start, stop, team, any_team=False)), Decimal(0))

    async def report(
        self, group_by: GroupBy, start: float, end: float, team: str | None = None, *, any_team: bool = True
    ) -> CostReport:
        """The cost in [start, end) by group, largest first (by day: in date order)."""
        tallies: dict[str | None, _Tally] = defaultdict(_Tally)
        total = Decimal(0)
        for segment in await self.segments(start, end, team, any_team=any_team):
            for key, cost, seconds in _parts(segment, group_by, start, end):
                tally = tallies[key]
                tally.cost += cost
                tally.seconds[segment.state.value] += seconds
                tally.team = segment.team
                total += cost
        order = sorted(tallies.items(), key=lambda item: (item[0] or "") if group_by == "day" else -item[1].cost)
        return CostReport(
            group_by=group_by,
            **{"from": start},
            to=end,
            total=meter.shown(total),
            items=[
                CostLine(
                    key=key,
                    team=tally.team if group_by == "instance" else None,
                    cost=meter.shown(tally.cost),
                    billed_seconds=dict(tally.seconds),
                )
                for key, tally in order
            ],
        )


def _parts(
    segment: meter.Segment, group_by: GroupBy, start: float, end: float
) -> Iterable[tuple[str | None, Decimal, float]]:
    """The segment's share of the period under its group key(s) (a day split at midnight UTC)."""
    lo, hi = max(segment.start, start), min(segment.end, end)
    if group_by == "day":
        clipped = meter.Segment(segment.instance_id, segment.team, segment.state, lo, hi, segment.rate)
        yield from clipped.by_day()
        return
    key = segment.team if group_by == "team" else segment.instance_id
    yield key, segment.cost(lo, hi), hi - lo
