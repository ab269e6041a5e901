"""Which instances a principal sees: its team's, or every one for an admin.

Another team's instance (or job) must answer exactly like one that does not exist (404), so callers use `sees` to
decide and raise their own not-found error, never a 403 that would confirm it exists.
"""

from __future__ import annotations

from app.access.principal import Principal

# A team set no principal's team can name (team names are lowercase letters, digits, _ and -): a non-admin principal
# without a team lists nothing.
NO_TEAM = "#none"


def sees(principal: Principal, owner_team: str | None) -> bool:
    """Whether `principal` may see something owned by `owner_team` (None: unowned, admins only)."""
    return principal.is_admin or (owner_team is not None and owner_team == principal.team)


def listed_team(principal: Principal) -> str | None:
    """The team whose instances a list shows to `principal`; None for an admin (every instance)."""
    if principal.is_admin:
        return None
    return principal.team if principal.team is not None else NO_TEAM
