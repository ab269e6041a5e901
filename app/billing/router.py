"""HTTP API of costs and budgets: thin, the rules live in `CostService` and `BudgetService`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from app.access.auth import AdminCaller, ReadCaller
from app.access.ownership import sees
from app.access.principal import Principal
from app.billing.budgets import NO_TEAM, BudgetLimits, BudgetService, BudgetView
from app.billing.costs import CostReport, CostService, GroupBy, parse_instant
from app.core.deps import provide
from app.core.errors import NotFound, ValidationFailed
from app.core.openapi import AUTHENTICATED_RESPONSES, problem

costs_router = APIRouter(prefix="/api/costs", tags=["costs"], responses=AUTHENTICATED_RESPONSES)
budgets_router = APIRouter(prefix="/api/budgets", tags=["budgets"], responses=AUTHENTICATED_RESPONSES)

Costs = Annotated[CostService, Depends(provide(CostService))]
Budgets = Annotated[BudgetService, Depends(provide(BudgetService))]
# A team as the path names it; `-` is the bucket of instances without a team.
TEAM_PATTERN = r"^[A-Za-z0-9_.-]+$"
Team = Annotated[str, Path(min_length=1, max_length=64, pattern=TEAM_PATTERN)]
_INSTANT = "ISO date (midnight UTC) or datetime (UTC unless it names an offset)"


def _instant(text: str | None, name: str, default: float) -> float:
    if text is None:
        return default
    try:
        return parse_instant(text)
    except ValueError as error:
        raise ValidationFailed(f"{name}: {error}", field=f"query.{name}") from None


def _team(team: str) -> str | None:
    return None if team == NO_TEAM else team


def caller_team(principal: Principal) -> tuple[str | None, bool]:
    """The caller's team and whether it sees every team (an admin); the dashboard's costs page asks the same."""
    if principal.is_admin:
        return None, True
    return principal.team, False


@costs_router.get("", response_model=CostReport)
async def get_costs(
    caller: ReadCaller,
    costs: Costs,
    group_by: Annotated[GroupBy, Query(alias="groupBy")] = "team",
    from_: Annotated[
        str | None, Query(alias="from", max_length=40, description=_INSTANT + "; default: all time")
    ] = None,
    to: Annotated[str | None, Query(max_length=40, description=_INSTANT + "; default: now")] = None,
) -> CostReport:
    """Our estimate of what was spent in [from, to) by team, instance or UTC day.

    An interval across midnight UTC is split exactly between the two days. The method and its limits are in the
    README ("Costs and budgets").
    """
    now = costs.now()
    end = _instant(to, "to", now)
    start = _instant(from_, "from", 0.0)
    if start >= end:
        raise ValidationFailed("from must be before to", field="query.to")
    team, every_team = caller_team(caller)
    return await costs.report(group_by, start, end, team, any_team=every_team)


@budgets_router.get("", response_model=list[BudgetView])
async def list_budgets(budgets: Budgets, _caller: AdminCaller) -> list[BudgetView]:
    """Every team with limits, GPUs or spend, with its limits and current use (admins)."""
    return [await budgets.view(team) for team in await budgets.teams()]


@budgets_router.get("/{team}", response_model=BudgetView, responses={404: problem("not this key's team")})
async def get_budget(team: Team, budgets: Budgets, caller: ReadCaller) -> BudgetView:
    """One team's limits (its own, else the stack's defaults) and current use; `-`: no team. A team's keys read
    their own team's budget; another team's reads as unknown (404), as its instances do."""
    if not sees(caller, _team(team)):
        raise NotFound("no budget of this team for this key")  # the same whether the team exists or not
    return await budgets.view(_team(team))


@budgets_router.put("/{team}", response_model=BudgetView)
async def put_budget(team: Team, body: BudgetLimits, budgets: Budgets, _caller: AdminCaller) -> BudgetView:
    """Set a team's limits (admins); a null limit falls back to the stack's default, if any."""
    return await budgets.set_limits(_team(team), body)
