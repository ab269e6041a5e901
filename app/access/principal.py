"""A principal: what an authenticated API key stands for, and what it may do.

Scopes nest: `operate` includes `read`, `admin` includes both. A team owns the instances its keys create; an admin
sees and acts on every team's instances.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Scope = Literal["read", "operate", "admin"]
SCOPE_ORDER: tuple[Scope, ...] = ("read", "operate", "admin")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    name: str  # the key's name (never the key)
    team: str | None  # None only for admin keys that belong to no team
    scope: Scope  # the highest scope granted; lower ones come with it

    def allows(self, needed: Scope) -> bool:
        """Whether this principal holds `needed` (directly or through a higher scope)."""
        return SCOPE_ORDER.index(self.scope) >= SCOPE_ORDER.index(needed)

    @property
    def is_admin(self) -> bool:
        """Admins see and act on every team's instances."""
        return self.scope == "admin"
