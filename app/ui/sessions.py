"""Dashboard sessions on Valkey: an API key is exchanged once for a random session token held in a cookie.

The cookie holds only the token; Valkey holds, under the token's SHA-256 (so a copy of Valkey yields no usable
cookie), the key's keyed hash (its digest, as the key ring stores it), the per-session CSRF token and an expiry. Each
request resolves the digest to the key's principal now, so a revoked key ends its sessions at once and a session
acts with its key's team and scope. The key itself is never stored, shown or logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from redis.asyncio import Redis

from app.access.principal import Principal, Scope

SESSION_COOKIE = "ngpu_ui_session"
SIGN_IN_CSRF_COOKIE = "ngpu_ui_signin"  # the sign-in form's CSRF token, before any session exists
_SESSION_KEY = "ngpu:ui:session:{digest}"


def digest(value: str) -> str:
    """Hex SHA-256 of a session token: what Valkey keeps instead of the token itself."""
    return hashlib.sha256(value.encode()).hexdigest()


def tokens_match(expected: str, presented: str | None) -> bool:
    """Constant-time comparison of a CSRF token."""
    return bool(presented) and hmac.compare_digest(expected.encode(), (presented or "").encode())


@dataclass(frozen=True)
class StoredSession:
    """A session as Valkey keeps it: the digest of the key it was opened with, and its CSRF token."""

    key_digest: str  # "" for the open development mode (no key)
    csrf_token: str
    expires_at: float


@dataclass(frozen=True)
class UiSession:
    """A signed-in browser: who it acts as now, and the CSRF token its forms must carry."""

    principal: Principal
    csrf_token: str

    @property
    def key_name(self) -> str:
        """The key's name, shown in the page header."""
        return self.principal.name

    def allows(self, scope: Scope) -> bool:
        """Whether the pages offer what needs `scope` (the routes check it again)."""
        return self.principal.allows(scope)


class SessionStore:
    """Opens, reads and closes sessions; each expires in Valkey after `ttl_seconds`."""

    def __init__(self, redis: Redis, ttl_seconds: int) -> None:
        self._redis = redis
        self.ttl_seconds = ttl_seconds

    async def open(self, key_digest: str) -> str:
        """A new session for the key with `key_digest`; returns the cookie token (shown to nobody but the browser)."""
        token = secrets.token_urlsafe(32)
        record = {
            "keyDigest": key_digest,
            "csrf": secrets.token_urlsafe(32),
            "expiresAt": time.time() + self.ttl_seconds,
        }
        await self._redis.set(_SESSION_KEY.format(digest=digest(token)), json.dumps(record), ex=self.ttl_seconds)
        return token

    async def get(self, token: str | None) -> StoredSession | None:
        """The session of a cookie token, or None (no cookie, unknown, expired, or from before sessions held keys'
        digests)."""
        if not token or len(token) > 128:
            return None
        raw = await self._redis.get(_SESSION_KEY.format(digest=digest(token)))
        if raw is None:
            return None
        record = json.loads(raw)
        if "keyDigest" not in record or "keyName" in record:  # opened by an older version: sign in again
            return None
        return StoredSession(
            key_digest=record["keyDigest"], csrf_token=record["csrf"], expires_at=float(record["expiresAt"])
        )

    async def close(self, token: str | None) -> None:
        """End a session (sign-out)."""
        if token and len(token) <= 128:
            await self._redis.delete(_SESSION_KEY.format(digest=digest(token)))
