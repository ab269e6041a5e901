"""Who is asking, for every route except health: `X-API-Key: <key>` or `Authorization: Bearer <key>`.

`authenticate` turns the key into a `Principal` (app/access/keys.py), counts the request against that key's rate
limit (app/core/ratelimit.py, by key name) and puts the name on `request.state.api_key_name` for the access log.
Each route then states the scope it needs by the type of its caller parameter (`ReadCaller`, `OperateCaller`,
`AdminCaller`); a key without it gets a 403 problem naming the scope. The two ways to send a key are FastAPI security
schemes, so every operation behind `authenticate` declares them in `/openapi.json`.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from app.access.keys import KeyRing
from app.access.principal import Principal, Scope
from app.core.errors import Forbidden
from app.core.ratelimit import RateLimiter

# auto_error=False: a missing key is our own 401 problem+json, not FastAPI's 403.
_API_KEY_HEADER = APIKeyHeader(
    name="X-API-Key", scheme_name="ApiKeyHeader", auto_error=False, description="a client key (API_KEYS or /api/keys)"
)
_BEARER_TOKEN = HTTPBearer(
    scheme_name="BearerToken", auto_error=False, description="the same client key as a Bearer token"
)
HeaderKey = Annotated[str | None, Security(_API_KEY_HEADER)]
BearerKey = Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER_TOKEN)]


def presented_key(header_key: str | None, bearer: HTTPAuthorizationCredentials | None) -> str | None:
    """The key the client sent, from X-API-Key or a Bearer token."""
    if header_key and header_key.strip():
        return header_key.strip()
    if bearer is not None and bearer.credentials.strip():
        return bearer.credentials.strip()
    return None


async def authenticate(request: Request, header_key: HeaderKey = None, bearer: BearerKey = None) -> Principal:
    """FastAPI dependency: the caller's principal, or 401; 429 when its key used up its rate limit."""
    services = request.app.state.services
    principal = await services.get(KeyRing).authenticate(presented_key(header_key, bearer))
    await admit(request, principal)
    return principal


async def admit(request: Request, principal: Principal) -> None:
    """Name the caller for the access log and count its request against its key's rate limit (the dashboard too)."""
    request.state.api_key_name = principal.name
    await request.app.state.services.get(RateLimiter).enforce(principal.name)


def check_scope(principal: Principal, needed: Scope) -> None:
    """`Forbidden` naming the scope unless `principal` holds it."""
    if not principal.allows(needed):
        raise Forbidden(f"this needs the '{needed}' scope (this key has '{principal.scope}')")


@functools.cache  # one dependency per scope, so FastAPI resolves it once per request
def require_scope(needed: Scope) -> Callable[[Principal], Awaitable[Principal]]:
    """A FastAPI dependency: the authenticated caller, once it holds `needed`."""

    async def dependency(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        check_scope(principal, needed)
        return principal

    dependency.__name__ = f"require_{needed}_scope"
    return dependency


ReadCaller = Annotated[Principal, Depends(require_scope("read"))]
OperateCaller = Annotated[Principal, Depends(require_scope("operate"))]
AdminCaller = Annotated[Principal, Depends(require_scope("admin"))]
