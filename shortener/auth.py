"""API keys: made here, shown once, stored only as a hash, and looked up per request."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime

from cachetools import TTLCache

from shortener.links.model import ApiKey
from shortener.store import Store

KEY_PREFIX = "sk_"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    # Keys carry 256 random bits, so a fast hash is as strong as a slow one here.
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


async def create_key(store: Store, name: str, admin: bool) -> tuple[ApiKey, str]:
    key = new_key()
    record = await store.insert_key(name, hash_key(key), admin, datetime.now(UTC))
    return record, key


class KeyRing:
    """Resolves a presented key to its record, remembering answers for a few seconds."""

    def __init__(self, store: Store, ttl: float = 5.0) -> None:
        self._store = store
        self._known: TTLCache[str, ApiKey | None] = TTLCache(maxsize=10_000, ttl=ttl)

    async def resolve(self, key: str) -> ApiKey | None:
        if not key.startswith(KEY_PREFIX) or len(key) > 128:
            return None
        digest = hash_key(key)
        if digest in self._known:
            return self._known[digest]
        record = await self._store.key_by_hash(digest)
        self._known[digest] = record
        return record
