"""API-key authentication for every route except health: `X-API-Key: <key>` or `Authorization: Bearer <key>`.

An authenticated request then counts against its key's rate limit (app/core/ratelimit.py).
"""
from __future__ import annotations

import hmac
import logging

from fastapi import Request
from pydantic import SecretStr

from app.core.errors import Unauthorized

logger = logging.getLogger(__name__)

ANONYMOUS = "anonymous"


def presented_key(request: Request) -> str | None:
    """The key the client sent, from X-API-Key or a Bearer token."""
    header_key = request.headers.get("x-api-key")
    if header_key:
        return header_key.strip()
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


async def require_api_key(request: Request) -> str:
    """FastAPI dependency: the name of the client's key (also on `request.state.api_key_name`), or 401; 429 when
    that key used up its rate limit.

    Every configured key is compared in constant time, and all of them always, so timing reveals neither a key nor
    which one matched. Without configured keys (development only; production refuses to start) access is open.
    """
    container = request.app.state.container
    name = _authenticate(request, container.settings.client_api_keys)
    request.state.api_key_name = name
    await container.rate_limiter.enforce(name)
    return name


def _authenticate(request: Request, keys: dict[str, SecretStr]) -> str:
    """The name of the key the request presents, or `Unauthorized`."""
    if not keys:
        return ANONYMOUS
    presented = presented_key(request)
    if presented is None:
        raise Unauthorized("missing API key: send it in the X-API-Key header or as a Bearer token")
    return key_name(presented, keys)


def key_name(presented: str, keys: dict[str, SecretStr]) -> str:
    """The name of the configured key equal to `presented` (every key compared, in constant time), or
    `Unauthorized`; also used by the dashboard's sign-in."""
    matched: str | None = None
    for name, key in keys.items():
        if hmac.compare_digest(presented.encode(), key.get_secret_value().encode()):
            matched = name
    if matched is None:
        raise Unauthorized("invalid API key")
    return matched
