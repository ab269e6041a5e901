"""What the dashboard's pages show, computed from the services' views: prices per hour, costs, sorting, paging,
times."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Literal

from app.fleet import meter
from app.fleet.schemas import InstanceState, InstanceView
from app.products.service import ProductView

# Novita's raw price unit as the Novita SDK reads it (docs/../reference: likely, not confirmed by Novita).
RAW_PRICE_UNITS_PER_USD = 100_000
PAGE_SIZES = (10, 25, 50, 100)
DEFAULT_PAGE_SIZE = 25
SortKey = Literal["newest", "name", "state", "price", "gpu"]
SORT_KEYS: tuple[SortKey, ...] = ("newest", "name", "state", "price", "gpu")
# Orders the index cannot give (price and GPU need the catalogue; state, then name) sort at most this many of the
# newest matching instances, so a page's server time stays bounded however large the fleet grows.
SORT_WINDOW = 1000

# Badge colour group of each state (the text always says the state; colour is never the only signal).
STATE_TONES: dict[InstanceState, str] = {
    InstanceState.RUNNING: "good",
    InstanceState.FAILED: "bad",
    InstanceState.DELETED: "muted",
    InstanceState.STOPPED: "muted",
    InstanceState.UNKNOWN: "warn",
    InstanceState.FROZEN: "warn",
}


# Badge colour group of each job state (as for instances, the text always says the state).
JOB_TONES = {"succeeded": "good", "failed": "bad", "dead": "bad", "cancelled": "muted"}


def job_tone(state: str) -> str:
    """Badge colour group of a job state: waiting and running jobs are "busy"."""
    return JOB_TONES.get(state, "busy")


def usd(raw: float | None) -> str | None:
    """A raw Novita price as dollars, e.g. 67000 -> "$0.67"."""
    if raw is None or raw <= 0:
        return None
    return f"${raw / RAW_PRICE_UNITS_PER_USD:,.2f}"


_SHOWN_QUANTUM = Decimal("0.0001")  # metered to the micro-dollar; 4 places on a page, so seconds of use still show


def money(amount: Decimal | str | None) -> str | None:
    """USD as a page shows it, with 2 to 4 decimal places: "0.67" -> "$0.67", "0.001862" -> "$0.0019",
    "1234.5" -> "$1,234.50"; None when unknown."""
    if amount is None or amount == "":
        return None
    text = f"{Decimal(amount).quantize(_SHOWN_QUANTUM, rounding=ROUND_HALF_EVEN):,.4f}"
    while text.endswith("0") and len(text.rpartition(".")[2]) > 2:
        text = text[:-1]
    return f"${text}"


@dataclass(frozen=True)
class InstanceRow:
    """One instance as the list and the detail page show it."""

    view: InstanceView
    price_per_hour: Decimal | None  # USD, for all its GPUs
    tone: str
    gpu: str | None  # e.g. "2 × RTX 4090 24GB"

    @property
    def price_label(self) -> str | None:
        """Dollars per hour, or None when not known (monthly billing, unknown product)."""
        return money(self.price_per_hour)

    @property
    def price_estimated(self) -> bool:
        """Whether the price is the catalogue's (the view carries none: an instance made elsewhere, or one whose
        create Novita has not accepted yet) rather than the one fixed on the record."""
        return self.price_per_hour is not None and self.view.price_per_hour is None

    @property
    def cost_label(self) -> str | None:
        """What the instance cost so far (the meter's figure on the view), or None when not metered here."""
        return money(self.view.cost_so_far)


def hourly_price(view: InstanceView, products: dict[str, ProductView]) -> Decimal | None:
    """Price per hour of the instance's GPUs in USD: the one the meter fixed on the record when the view carries
    it, else the catalogue's in its billing mode; None when neither is known."""
    if view.price_per_hour is not None:
        return Decimal(view.price_per_hour)
    product = products.get(view.product_id or "")
    if product is None:
        return None
    per_gpu = (
        product.spot_price
        if view.billing_mode == "spot"
        else (product.on_demand_price if view.billing_mode in (None, "onDemand") else None)
    )
    return meter.hourly_gpu_price(per_gpu, view.gpu_num or 1) if per_gpu else None


def gpu_label(view: InstanceView, products: dict[str, ProductView]) -> str | None:
    """GPUs of the instance; a create by product id names the GPU only through the catalogue."""
    product = products.get(view.product_id or "")
    name = view.product_name or (product.name if product else None)
    return f"{view.gpu_num or 1} × {name}" if name else None


def rows(views: list[InstanceView], products: dict[str, ProductView]) -> list[InstanceRow]:
    """The rows of a page."""
    return [
        InstanceRow(view, hourly_price(view, products), STATE_TONES.get(view.state, "busy"), gpu_label(view, products))
        for view in views
    ]


# The orders sorted here (newest and name come sorted from the index).
_SORTS: dict[SortKey, Callable[[InstanceRow], Any]] = {
    "state": lambda row: (row.view.state.value, row.view.name.casefold()),
    "price": lambda row: (row.price_per_hour is None, row.price_per_hour or Decimal(0)),
    "gpu": lambda row: (row.gpu or "").casefold(),
}


def sort_rows(items: list[InstanceRow], key: SortKey) -> list[InstanceRow]:
    """Rows in the order the person chose (stable, so equal rows keep the service's newest-first order)."""
    return sorted(items, key=_SORTS[key])


@dataclass(frozen=True)
class Pager:
    """Where a page sits in the whole list."""

    page: int
    page_size: int
    total: int

    @property
    def pages(self) -> int:
        """How many pages there are (at least one, even when empty)."""
        return max(1, math.ceil(self.total / self.page_size))

    @property
    def first_item(self) -> int:
        """1-based number of the page's first item (0 when empty)."""
        return 0 if self.total == 0 else (self.page - 1) * self.page_size + 1

    @property
    def last_item(self) -> int:
        """1-based number of the page's last item."""
        return min(self.total, self.page * self.page_size)


def when(timestamp: float | None) -> str:
    """A Unix time as UTC text, e.g. "2026-12-02 01:30:05 UTC"; an em dash when unknown."""
    if timestamp is None:
        return "—"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float | None) -> str:
    """A short duration, e.g. "42 s", "3 min 5 s"; an em dash when unknown."""
    if seconds is None or seconds < 0:
        return "—"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, rest = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"
