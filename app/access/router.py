"""HTTP API of keys (admins only): create (the key is shown once), list (no key material), revoke."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response, status

from app.access.auth import AdminCaller, authenticate
from app.access.keys import KeyRing
from app.access.schemas import CreatedKey, CreateKeyRequest, KeyList, KeyView
from app.core.deps import provide
from app.core.errors import ValidationFailed
from app.core.openapi import AUTHENTICATED_RESPONSES, problem

router = APIRouter(
    prefix="/api/keys", tags=["keys"], dependencies=[Depends(authenticate)], responses=AUTHENTICATED_RESPONSES
)

Keys = Annotated[KeyRing, Depends(provide(KeyRing))]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=CreatedKey,
    responses={409: problem("a key with this name exists (or is a bootstrap key's)")},
)
async def create_key(body: CreateKeyRequest, keys: Keys, _caller: AdminCaller) -> CreatedKey:
    """Create a key for a team with a scope (`read` < `operate` < `admin`); `key` is in this answer only. Only an
    admin key may have no team."""
    if (missing_team := body.missing_team()) is not None:
        raise ValidationFailed(missing_team, field="body.team")
    stored, key = await keys.create(body.name, body.team, body.scope)
    return CreatedKey(**KeyView.of(stored).model_dump(), key=key)


@router.get("", response_model=KeyList)
async def list_keys(keys: Keys, _caller: AdminCaller) -> KeyList:
    """The keys created through the API, without their key material."""
    return KeyList(items=[KeyView.of(stored) for stored in await keys.list()])


@router.delete(
    "/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={404: problem("no key with this id")},
)
async def revoke_key(
    key_id: Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")], keys: Keys, _caller: AdminCaller
) -> Response:
    """Revoke a key: every replica refuses it from the next request on."""
    await keys.revoke(key_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
