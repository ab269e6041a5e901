"""The cost meter: what each instance is billed for, second by second, kept on its record and written in the same
Valkey transaction as every change of the record (`InstanceStore.update`), so no transition is ever missed and a
restarted process loses no billed time (the open interval starts at `record.billing_since`, stored in Valkey).

Novita's billing, as documented (README "Costs and budgets" cites the pages):
- GPU billing starts when the instance enters `pulling` and stops when it is stopped (`exited`); per second.
- A stopped instance keeps its disks and still pays for storage: the container disk beyond its 60 GB free
  allowance at 0.005 USD per GB-day (network volumes are billed on their own, not per instance).
- Prices are per GPU-hour in 1/100000 USD; the instance's hourly price is that times `gpuNum`.

Billing states (what a second costs):
- `compute`: the GPU price plus storage, in every status from `pulling` on in which the machine holds its GPUs;
- `storage`: storage only, while `exited` (stopped), waiting to start (`toStart`) or `freezing`;
- `none`: nothing, before `pulling`, from the delete on (`toRemove`, `removing`, `removed`), and for our `deleted`.

Closed intervals ("segments") go to sorted sets scored by their end, one for everyone and one per team, never capped:
the cost reports and the budgets read them; the interval still open is read from the record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from redis.asyncio.client import Pipeline

from app.fleet.schemas import InstanceRecord, InstanceState

# Novita's raw price unit: 1/100000 USD (reference: the Novita SDK's price conversion).
NOVITA_PRICE_UNITS_PER_USD = Decimal(100000)
FREE_ROOTFS_GB = 60
ROOTFS_USD_PER_GB_DAY = Decimal("0.005")
SECONDS_PER_HOUR = Decimal(3600)
# Costs are exact Decimals until shown; shown to the micro-dollar (half-even), well below a cent.
COST_QUANTUM = Decimal("0.000001")

SEGMENTS_KEY = "ngpu:meter:segments"
OPEN_KEY = "ngpu:meter:open"  # ids of records whose open interval is billed (state compute or storage)
TEAMS_KEY = "ngpu:meter:teams"  # every team that ever had a billed interval ("" for no team)


def team_segments_key(team: str | None) -> str:
    """The sorted set of one team's closed intervals."""
    return f"{SEGMENTS_KEY}:team:{team or ''}"


class BillingState(StrEnum):
    """What a second of the instance costs."""

    COMPUTE = "compute"
    STORAGE = "storage"
    NONE = "none"


_COMPUTE_STATUSES = frozenset(
    {
        "pulling",
        "running",
        "toStop",
        "stopping",
        "toRestart",
        "restarting",
        "starting",
        "toReset",
        "resetting",
        "migrating",
    }
)
_STORAGE_STATUSES = frozenset({"exited", "toStart", "freezing"})


def billing_state(record: InstanceRecord) -> BillingState:
    """The billing state of the record as it is now (from Novita's status; our `deleted` ends billing)."""
    if record.state == InstanceState.DELETED or record.novita_instance_id is None:
        return BillingState.NONE
    if record.novita_status in _COMPUTE_STATUSES:
        return BillingState.COMPUTE
    if record.novita_status in _STORAGE_STATUSES:
        return BillingState.STORAGE
    return BillingState.NONE


def hourly_gpu_price(raw_price_per_gpu_hour: float | str | None, gpu_num: int) -> Decimal | None:
    """The instance's GPU price in USD per hour, exactly, from Novita's raw per-GPU-hour price."""
    if raw_price_per_gpu_hour is None or raw_price_per_gpu_hour == "":
        return None
    raw = Decimal(str(raw_price_per_gpu_hour))  # str: a float's shortest repr, so 67000.0 stays 67000
    return raw * gpu_num / NOVITA_PRICE_UNITS_PER_USD


def hourly_storage_price(rootfs_gb: int) -> Decimal:
    """USD per hour for the container disk beyond the free allowance."""
    return max(0, rootfs_gb - FREE_ROOTFS_GB) * ROOTFS_USD_PER_GB_DAY / 24


def hourly_rate(record: InstanceRecord, state: BillingState) -> Decimal:
    """USD per hour in `state` at the prices fixed on the record (an unknown price counts as 0)."""
    if state == BillingState.NONE:
        return Decimal(0)
    storage = Decimal(record.storage_price_per_hour or 0)
    if state == BillingState.STORAGE:
        return storage
    return Decimal(record.price_per_hour or 0) + storage


@dataclass(frozen=True)
class Segment:
    """A closed billed interval of one instance at one rate."""

    instance_id: str
    team: str | None
    state: BillingState
    start: float
    end: float
    rate: Decimal  # USD per hour

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def cost(self, start: float | None = None, end: float | None = None) -> Decimal:
        """The exact cost of the part of this interval between `start` and `end` (default: all of it)."""
        lo = self.start if start is None else max(self.start, start)
        hi = self.end if end is None else min(self.end, end)
        return self.rate * Decimal(repr(hi - lo)) / SECONDS_PER_HOUR if hi > lo else Decimal(0)

    def by_day(self) -> list[tuple[str, Decimal, float]]:
        """(UTC day, cost, seconds) for each day the interval touches, split exactly at midnight UTC."""
        parts: list[tuple[str, Decimal, float]] = []
        start = self.start
        while start < self.end:
            day = datetime.fromtimestamp(start, UTC).date()
            midnight = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
            end = min(self.end, midnight.timestamp())
            parts.append((day.isoformat(), self.cost(start, end), end - start))
            start = end
        return parts

    def to_json(self) -> str:
        return json.dumps(
            {
                "i": self.instance_id,
                "t": self.team,
                "s": self.state.value,
                "a": self.start,
                "b": self.end,
                "r": str(self.rate),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> Segment:
        data = json.loads(raw)
        return cls(data["i"], data["t"], BillingState(data["s"]), data["a"], data["b"], Decimal(data["r"]))


def open_segment(record: InstanceRecord, now: float) -> Segment | None:
    """The interval still running on the record, up to `now` (None when it is not billed)."""
    state = BillingState(record.billing_state)
    if state == BillingState.NONE or record.billing_since is None or now <= record.billing_since:
        return None
    return Segment(record.id, record.team, state, record.billing_since, now, hourly_rate(record, state))


def advance(record: InstanceRecord, now: float, *, checkpoint: bool = False) -> Segment | None:
    """Bring the meter of a just-changed record to `now`: when its billing state changed (or on a checkpoint), close
    the open interval into `billed_seconds` and return it as a segment, and open the next one."""
    new_state = billing_state(record)
    if new_state == record.billing_state and not checkpoint and record.billing_since is not None:
        return None
    closed = open_segment(record, now)
    if closed is not None:
        key = closed.state.value
        record.billed_seconds[key] = record.billed_seconds.get(key, 0.0) + closed.seconds
    record.billing_state = new_state.value
    record.billing_since = max(now, record.billing_since or now)
    return closed


def queue_meter_writes(pipe: Pipeline, record: InstanceRecord, closed: Segment | None) -> None:
    """Queue, in the record's transaction, the closed segment and whether the record's open interval is billed."""
    if closed is not None and closed.seconds > 0:
        member = closed.to_json()
        pipe.zadd(SEGMENTS_KEY, {member: closed.end})
        pipe.zadd(team_segments_key(closed.team), {member: closed.end})
        pipe.sadd(TEAMS_KEY, closed.team or "")
    if record.billing_state == BillingState.NONE:
        pipe.srem(OPEN_KEY, record.id)
    else:
        pipe.sadd(OPEN_KEY, record.id)
        pipe.sadd(TEAMS_KEY, record.team or "")


def cost_so_far(record: InstanceRecord, now: float) -> Decimal:
    """The instance's whole cost until `now`, at the prices fixed on the record."""
    total = sum(
        (
            hourly_rate(record, BillingState(state)) * Decimal(repr(seconds)) / SECONDS_PER_HOUR
            for state, seconds in record.billed_seconds.items()
        ),
        Decimal(0),
    )
    running = open_segment(record, now)
    return total + (running.cost() if running is not None else Decimal(0))


def shown(amount: Decimal) -> str:
    """A cost as the API shows it: a decimal string in USD."""
    return str(amount.quantize(COST_QUANTUM))
