"""API keys as principals: the bootstrap admin keys of `API_KEYS`, and the keys admins create through the API.

A key is stored only as its keyed hash, `HMAC-SHA256(API_KEY_HASH_SECRET, key)` in hex (the digest), so a copy of
Valkey yields no usable key and, without the secret, no way to test guessed keys offline. Keys (all under
`ngpu:access:`):
- `ngpu:access:key:<digest>`   JSON `{id, name, team, scope, createdAt}`: the lookup of a presented key, one GET.
- `ngpu:access:keys`           hash id -> the same JSON plus the digest: the list, and what a revocation deletes.
- `ngpu:access:names`          hash name -> id: names are unique (with the bootstrap keys' names), since the rate
                               limit and the logs know a key by its name.

There is no cache in front of the lookup: each request reads its key's entry, so a revocation (one transaction
deleting the three entries) holds on every replica for the very next request. The bootstrap keys live in the settings
(the stack's `apiKeys`), are admins of no team, and are changed by changing the stack, not through the API.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from app.access.principal import Principal, Scope
from app.core.errors import Conflict, NotFound, Unauthorized
from app.core.redis import RedisManager, valkey_errors

_PREFIX = "ngpu:access:"
KEYS_KEY = f"{_PREFIX}keys"
NAMES_KEY = f"{_PREFIX}names"
KEY_PREFIX = "ngpu_"  # recognisable in a leaked file or a secret scanner
# Who a request is on a development server without API_KEYS: an admin of no team.
ANONYMOUS = Principal(name="anonymous", team=None, scope="admin")


def _lookup_key(digest: str) -> str:
    return f"{_PREFIX}key:{digest}"


@dataclass(frozen=True)
class StoredKey:
    """A key created through the API, as listed (never its key material)."""

    id: str
    name: str
    team: str | None
    scope: Scope
    created_at: float

    def principal(self) -> Principal:
        """Who this key stands for."""
        return Principal(name=self.name, team=self.team, scope=self.scope)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "team": self.team, "scope": self.scope, "createdAt": self.created_at}

    @classmethod
    def from_json(cls, raw: bytes | str) -> StoredKey:
        data = json.loads(raw)
        return cls(data["id"], data["name"], data["team"], data["scope"], float(data["createdAt"]))


class KeyRing:
    """Authenticates presented keys and creates, lists and revokes the stored ones."""

    def __init__(self, redis: RedisManager, hashing_key: bytes, bootstrap: dict[str, SecretStr]) -> None:
        self._redis = redis
        self._hashing_key = hashing_key
        self._bootstrap = {
            self.digest(key.get_secret_value()): Principal(name=name, team=None, scope="admin")
            for name, key in bootstrap.items()
        }

    @property
    def is_open(self) -> bool:
        """No bootstrap key is configured (development only): requests without a key act as an admin."""
        return not self._bootstrap

    def digest(self, key: str) -> str:
        """The keyed hash a key is stored and looked up under."""
        return hmac.new(self._hashing_key, key.encode(), hashlib.sha256).hexdigest()

    async def authenticate(self, presented: str | None) -> Principal:
        """The principal of the presented key, or `Unauthorized`; without configured keys, the anonymous admin."""
        if presented is None:
            if self.is_open:
                return ANONYMOUS
            raise Unauthorized("missing API key: send it in the X-API-Key header or as a Bearer token")
        principal = await self.principal_of(self.digest(presented))
        if principal is not None:
            return principal
        if self.is_open:  # the open development mode accepted any key before keys had owners; it still does
            return ANONYMOUS
        raise Unauthorized("invalid API key")

    async def principal_of(self, digest: str) -> Principal | None:
        """The principal of the key with this digest now (None once revoked); the dashboard's sessions ask too.
        The empty digest stands for no key: the anonymous admin while the server is open."""
        if not digest:
            return ANONYMOUS if self.is_open else None
        bootstrap = self._bootstrap.get(digest)
        if bootstrap is not None:
            return bootstrap
        async with valkey_errors():
            raw = await self._redis.client.get(_lookup_key(digest))
        return StoredKey.from_json(raw).principal() if raw is not None else None

    async def create(self, name: str, team: str | None, scope: Scope) -> tuple[StoredKey, str]:
        """A new key: its listing and the key itself (returned this once, stored only as its digest)."""
        if name in {principal.name for principal in self._bootstrap.values()} or name == ANONYMOUS.name:
            raise Conflict(f"the key name {name!r} is taken by a key of API_KEYS")
        stored = StoredKey(id=secrets.token_hex(8), name=name, team=team, scope=scope, created_at=time.time())
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        digest = self.digest(key)
        async with valkey_errors():
            if not await self._redis.client.hsetnx(NAMES_KEY, name, stored.id):
                raise Conflict(f"a key named {name!r} exists: revoke it first, or choose another name")
            async with self._redis.client.pipeline(transaction=True) as pipe:
                pipe.set(_lookup_key(digest), json.dumps(stored.to_json()))
                pipe.hset(KEYS_KEY, stored.id, json.dumps({**stored.to_json(), "digest": digest}))
                await pipe.execute()
        return stored, key

    async def list(self) -> list[StoredKey]:
        """Every stored key, oldest first (the bootstrap keys are in the stack's config, not here)."""
        async with valkey_errors():
            raws = await self._redis.client.hvals(KEYS_KEY)
        return sorted((StoredKey.from_json(raw) for raw in raws), key=lambda key: (key.created_at, key.id))

    async def revoke(self, key_id: str) -> None:
        """Delete the key: the next request presenting it, on any replica, is a 401; `NotFound` if unknown."""
        async with valkey_errors():
            raw = await self._redis.client.hget(KEYS_KEY, key_id)
            if raw is None:
                raise NotFound(f"no API key with id {key_id!r}")
            entry = json.loads(raw)
            async with self._redis.client.pipeline(transaction=True) as pipe:
                pipe.delete(_lookup_key(entry["digest"]))
                pipe.hdel(KEYS_KEY, key_id)
                pipe.hdel(NAMES_KEY, entry["name"])
                await pipe.execute()
