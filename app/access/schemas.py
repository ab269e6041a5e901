"""What the keys API takes and answers, and the shape of a team name (shared with the owner reassignment)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from app.access.keys import StoredKey
from app.access.principal import Scope
from app.core.schemas import ApiModel, StrictRequestModel

TeamName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="lowercase letters, digits, _ -")]
KeyName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="letters, digits, '_', '.', '-'")]


class CreateKeyRequest(StrictRequestModel):
    """`POST /api/keys`: a read or operate key belongs to a team; an admin key may belong to none."""

    name: KeyName
    team: TeamName | None = None
    scope: Scope

    def missing_team(self) -> str | None:
        """Why this key needs a team (a 422 on `team`), or None: only an admin key may have none."""
        if self.team is None and self.scope != "admin":
            return f"a '{self.scope}' key needs a team (only admin keys may have none)"
        return None


class KeyView(ApiModel):
    """A stored key as listed: never its key material."""

    id: str
    name: str
    team: str | None
    scope: Scope
    created_at: float

    @classmethod
    def of(cls, stored: StoredKey) -> KeyView:
        """View of a stored key."""
        return cls(id=stored.id, name=stored.name, team=stored.team, scope=stored.scope, created_at=stored.created_at)


class CreatedKey(KeyView):
    """The answer to a create: the key itself, shown this once (only its keyed hash is stored)."""

    key: str


class KeyList(ApiModel):
    """`GET /api/keys`: the keys created through the API, oldest first (the bootstrap keys are the stack's)."""

    items: list[KeyView]
