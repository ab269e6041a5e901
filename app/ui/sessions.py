"""Dashboard sessions on Valkey: an API key is exchanged once for a random session token held in a cookie.

The cookie holds only the token; Valkey holds, under the token's SHA-256 (so a copy of Valkey yields no usable
cookie), the key's name, a digest of the key (a session ends when its key is changed or removed), the per-session
CSRF token and an expiry. The key itself is never stored, shown or logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from pydantic import SecretStr
from redis.asyncio import Redis

from app.core.auth import ANONYMOUS

SESSION_COOKIE = "ngpu_ui_session"
SIGN_IN_CSRF_COOKIE = "ngpu_ui_signin"  # the sign-in form's CSRF token, before any session exists
_SESSION_KEY = "ngpu:ui:session:{digest}"


def digest(value: str) -> str:
    """Hex SHA-256 of a token or key: what Valkey keeps instead of the value itself."""
    return hashlib.sha256(value.encode()).hexdigest()


def key_digest(key_name: str, keys: dict[str, SecretStr]) -> str:
    """Digest of the key configured under `key_name` now ("" when there is none: the open development mode)."""
    key = keys.get(key_name)
    return digest(key.get_secret_value()) if key is not None else ""


def tokens_match(expected: str, presented: str | None) -> bool:
    """Constant-time comparison of a CSRF token."""
    return bool(presented) and hmac.compare_digest(expected.encode(), (presented or "").encode())


@dataclass(frozen=True)
class UiSession:
    """A signed-in browser: whose key it acts as, and the CSRF token its forms must carry."""

    key_name: str
    key_digest: str
    csrf_token: str
    expires_at: float

    def still_valid_for(self, keys: dict[str, SecretStr]) -> bool:
        """False once the key it was opened with is no longer configured under that name (rotated or removed)."""
        if not keys:
            return self.key_name == ANONYMOUS
        return self.key_name in keys and hmac.compare_digest(self.key_digest, key_digest(self.key_name, keys))


class SessionStore:
    """Opens, reads and closes sessions; each expires in Valkey after `ttl_seconds`."""

    def __init__(self, redis: Redis, ttl_seconds: int) -> None:
        self._redis = redis
        self.ttl_seconds = ttl_seconds

    async def open(self, key_name: str, key_digest_value: str) -> tuple[str, UiSession]:
        """A new session for `key_name`; returns the cookie token (shown to nobody but the browser) and the session."""
        token = secrets.token_urlsafe(32)
        session = UiSession(
            key_name=key_name,
            key_digest=key_digest_value,
            csrf_token=secrets.token_urlsafe(32),
            expires_at=time.time() + self.ttl_seconds,
        )
        record = {
            "keyName": key_name,
            "keyDigest": key_digest_value,
            "csrf": session.csrf_token,
            "expiresAt": session.expires_at,
        }
        await self._redis.set(_SESSION_KEY.format(digest=digest(token)), json.dumps(record), ex=self.ttl_seconds)
        return token, session

    async def get(self, token: str | None) -> UiSession | None:
        """The session of a cookie token, or None (no cookie, unknown, expired)."""
        if not token or len(token) > 128:
            return None
        raw = await self._redis.get(_SESSION_KEY.format(digest=digest(token)))
        if raw is None:
            return None
        record = json.loads(raw)
        return UiSession(
            key_name=record["keyName"],
            key_digest=record["keyDigest"],
            csrf_token=record["csrf"],
            expires_at=float(record["expiresAt"]),
        )

    async def close(self, token: str | None) -> None:
        """End a session (sign-out)."""
        if token and len(token) <= 128:
            await self._redis.delete(_SESSION_KEY.format(digest=digest(token)))
