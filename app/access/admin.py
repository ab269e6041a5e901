"""The guard of admin-only routes (budgets).

For now every authenticated key passes: keys carry no scope yet. The teams work (issue 13 items 2-3) replaces this
with a check of the principal's `admin` scope (403 naming the scope otherwise); the routes need no change.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from app.core.auth import require_api_key


async def require_admin(key_name: Annotated[str, Depends(require_api_key)]) -> str:
    """The name of the calling key, once it may administer (today: any valid key)."""
    return key_name
