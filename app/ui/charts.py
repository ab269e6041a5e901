"""Inline SVG charts, laid out here and drawn by templates/_charts.html: no script and no library, so a chart is
plain markup the page's CSP allows (SVG attributes are not styles) and a screen reader gets its title and description
(the same figures are always in a table next to it)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from app.ui.views import money

# The drawing's own coordinate space (the SVG scales to the page's width).
WIDTH, HEIGHT = 720, 240
_LEFT, _RIGHT, _TOP, _BOTTOM = 72, 12, 12, 44
_MAX_LABELS = 16  # more bars than this: every n-th one is labelled, so the labels never overlap
# A use bar reaches past 100 % so that overspend shows; its marks sit at 80 % (the early warning) and 100 %.
USE_BAR_SCALE = Decimal(125)
USE_MARKS = (Decimal(80), Decimal(100))


@dataclass(frozen=True)
class Column:
    """One bar of a column chart, in drawing coordinates."""

    label: str
    shown: str  # the figure as text, e.g. "$1.25"
    x: float
    y: float
    width: float
    height: float
    labelled: bool


@dataclass(frozen=True)
class Tick:
    """A horizontal grid line and its value."""

    y: float
    shown: str


@dataclass(frozen=True)
class ColumnChart:
    """A titled column chart laid out for `_charts.html`."""

    id: str
    title: str
    description: str
    columns: list[Column]
    ticks: list[Tick]
    width: int = WIDTH
    height: int = HEIGHT
    left: int = _LEFT
    baseline: int = HEIGHT - _BOTTOM


def _nice_ceiling(value: Decimal) -> Decimal:
    """The smallest 1, 2, 2.5 or 5 times a power of ten that is at least `value` (a readable axis maximum)."""
    if value <= 0:
        return Decimal(1)
    power = Decimal(10) ** (value.adjusted())
    for step in (1, 2, Decimal("2.5"), 5, 10):
        if value <= power * step:
            return power * step
    return power * 10  # not reached: 10 x power always covers value


def column_chart(chart_id: str, title: str, description: str, points: list[tuple[str, Decimal]]) -> ColumnChart:
    """A column chart of `points` (label, USD), scaled to a readable maximum with 4 grid lines."""
    top = _nice_ceiling(max((value for _, value in points), default=Decimal(0)))
    plot_width, plot_height = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    slot = plot_width / max(1, len(points))
    every = max(1, -(-len(points) // _MAX_LABELS))
    columns = []
    for index, (label, value) in enumerate(points):
        height = float(value / top) * plot_height
        columns.append(
            Column(
                label=label,
                shown=money(value) or "",
                x=_LEFT + index * slot + slot * 0.15,
                y=_TOP + plot_height - height,
                width=slot * 0.7,
                height=height,
                labelled=index % every == 0,
            )
        )
    ticks = [Tick(y=_TOP + plot_height * (1 - step / 4), shown=money(top * step / 4) or "") for step in range(5)]
    return ColumnChart(chart_id, title, description, columns, ticks)


@dataclass(frozen=True)
class UseBar:
    """A budget's use: `used` of `limit`, drawn on a scale to 125 % with the 80 % and 100 % marks."""

    used: Decimal
    limit: Decimal

    @property
    def percent(self) -> Decimal:
        """Use in percent of the limit (a zero limit is fully used)."""
        return self.used * 100 / self.limit if self.limit > 0 else Decimal(100)

    @property
    def percent_shown(self) -> str:
        return f"{self.percent:.0f} %"

    @property
    def tone(self) -> str:
        """Colour group: below 80 %, from 80 %, from 100 % (the text always says the figure too)."""
        return "bad" if self.percent >= USE_MARKS[1] else ("warn" if self.percent >= USE_MARKS[0] else "good")

    @property
    def fill(self) -> str:
        """Width of the filled part, in percent of the bar."""
        return f"{min(self.percent, USE_BAR_SCALE) * 100 / USE_BAR_SCALE:.2f}%"

    @property
    def marks(self) -> list[tuple[str, str]]:
        """(position in percent of the bar, label) of the 80 % and 100 % marks."""
        return [(f"{mark * 100 / USE_BAR_SCALE:.2f}%", f"{mark:.0f} %") for mark in USE_MARKS]
