"""API-key authentication for every route except health: `X-API-Key: <key>` or `Authorization: Bearer <key>`.

An authenticated request then counts against its key's rate limit (app/core/ratelimit.py). The two ways to send a
key are FastAPI security schemes, so every operation behind `require_api_key` declares them in `/openapi.json`
(FastAPI emits them itself, however the router is included).
"""

from __future__ import annotations

import hmac
import logging
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from app.core.config import Settings
from app.core.errors import Unauthorized
from app.core.ratelimit import RateLimiter

logger = logging.getLogger(__name__)

ANONYMOUS = "anonymous"


# auto_error=False: a missing key is our own 401 problem+json, not FastAPI's 403.
_API_KEY_HEADER = APIKeyHeader(
    name="X-API-Key", scheme_name="ApiKeyHeader", auto_error=False, description="a client key from API_KEYS"
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


async def require_api_key(request: Request, header_key: HeaderKey = None, bearer: BearerKey = None) -> str:
    """FastAPI dependency: the name of the client's key (also on `request.state.api_key_name`), or 401; 429 when
    that key used up its rate limit.

    Every configured key is compared in constant time, and all of them always, so timing reveals neither a key nor
    which one matched. Without configured keys (development only; production refuses to start) access is open.
    """
    services = request.app.state.services
    name = _authenticate(presented_key(header_key, bearer), services.get(Settings).client_api_keys)
    request.state.api_key_name = name
    await services.get(RateLimiter).enforce(name)
    return name


def _authenticate(presented: str | None, keys: dict[str, SecretStr]) -> str:
    """The name of the key the request presents, or `Unauthorized`."""
    if not keys:
        return ANONYMOUS
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
