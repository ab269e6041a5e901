"""What the costs and budgets pages show, from the billing services' own reports and views (the API's figures)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from app.billing.budgets import NO_TEAM, BudgetView
from app.billing.costs import CostReport
from app.ui.charts import ColumnChart, UseBar, column_chart
from app.ui.views import money


def team_label(team: str | None) -> str:
    """A team as a page names it; instances without a team are one bucket (`-` in the API)."""
    return team if team is not None else f"no team ({NO_TEAM})"


@dataclass(frozen=True)
class CostPage:
    """The costs page's figures: the period's total, spend by team and by UTC day, each as a chart and a table."""

    total: str
    first_day: str
    last_day: str
    teams: list[tuple[str, str, float, float]]  # team, cost shown, compute hours, storage hours
    days: list[tuple[str, str]]  # every day of the period (those without spend too), cost shown
    team_chart: ColumnChart
    day_chart: ColumnChart


def cost_page(by_team: CostReport, by_day: CostReport) -> CostPage:
    """The page for two reports of the same period (grouped by team and by day)."""
    first = datetime.fromtimestamp(by_day.from_, UTC).date()
    last = datetime.fromtimestamp(by_day.to, UTC).date() - timedelta(days=1)
    spent = {line.key: Decimal(line.cost) for line in by_day.items}
    every_day = [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]
    day_points = [(day, spent.get(day, Decimal(0))) for day in every_day]
    team_points = [(team_label(line.key), Decimal(line.cost)) for line in by_team.items]
    period = f"{first.isoformat()} to {last.isoformat()} (UTC)"
    return CostPage(
        total=money(by_team.total) or "$0.00",
        first_day=first.isoformat(),
        last_day=last.isoformat(),
        teams=[
            (
                team_label(line.key),
                money(line.cost) or "$0.00",
                line.billed_seconds.get("compute", 0.0) / 3600,
                line.billed_seconds.get("storage", 0.0) / 3600,
            )
            for line in by_team.items
        ],
        days=[(day, money(cost) or "$0.00") for day, cost in day_points],
        team_chart=column_chart(
            "chart-teams",
            "Spend by team",
            f"Spend in USD of each team, {period}, largest first: "
            + ("; ".join(f"{label} {money(cost)}" for label, cost in team_points) or "no spend")
            + ".",
            team_points,
        ),
        day_chart=column_chart(
            "chart-days",
            "Spend by day",
            f"Spend in USD per UTC day, {period}; the total is {money(by_team.total)}. "
            "The table below the chart lists every day's figure.",
            [(day[5:], cost) for day, cost in day_points],  # "12-01": the year is in the title
        ),
    )


@dataclass(frozen=True)
class BudgetUse:
    """One limit of a team and its current use."""

    name: str  # as a person reads it
    limit: str | None  # None: no limit
    from_default: bool
    used: str
    bar: UseBar | None  # None without a limit


@dataclass(frozen=True)
class BudgetRow:
    """A team's budget as the budgets page shows it."""

    team: str | None
    label: str
    uses: list[BudgetUse]

    @classmethod
    def of(cls, view: BudgetView) -> BudgetRow:
        """The row of the API's view of a team's budget."""

        def use(name: str, field: str, limit: str | int | None, used: str | int, shown: str) -> BudgetUse:
            if limit is None:
                return BudgetUse(name, None, field in view.defaults, shown, None)
            limit_shown = str(limit) if field == "maxGpus" else money(str(limit))
            return BudgetUse(name, limit_shown, field in view.defaults, shown, UseBar(Decimal(used), Decimal(limit)))

        return cls(
            team=view.team,
            label=team_label(view.team),
            uses=[
                use("GPUs at once", "maxGpus", view.max_gpus, view.gpus_in_use, str(view.gpus_in_use)),
                use(
                    "Spend today",
                    "maxSpendPerDay",
                    view.max_spend_per_day,
                    view.spend_today,
                    money(view.spend_today) or "$0.00",
                ),
                use(
                    "Spend this month",
                    "maxSpendPerMonth",
                    view.max_spend_per_month,
                    view.spend_this_month,
                    money(view.spend_this_month) or "$0.00",
                ),
            ],
        )
