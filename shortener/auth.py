"""API keys: made here, shown once, stored only as a hash, and looked up per request."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from datetime import UTC, datetime

from cachetools import TTLCache

from shortener.errors import StoreUnavailable
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
    """Resolves a presented key to its record, remembering answers for a few seconds.

    A revoked key is therefore refused everywhere within `ttl` seconds. Keys are looked up
    by their hash, so no comparison ever runs over the secret itself.
    """

    def __init__(self, store: Store, ttl: float = 5.0, touch_every: float = 60.0) -> None:
        self._store = store
        self._known: TTLCache[str, ApiKey | None] = TTLCache(maxsize=10_000, ttl=ttl)
        self._touched: TTLCache[int, bool] = TTLCache(maxsize=10_000, ttl=touch_every)
        self._touching: set[asyncio.Task[None]] = set()

    async def resolve(self, key: str) -> ApiKey | None:
        if not key.startswith(KEY_PREFIX) or len(key) > 128:
            return None
        digest = hash_key(key)
        if digest in self._known:
            record = self._known[digest]
        else:
            record = await self._store.key_by_hash(digest)
            self._known[digest] = record
        if record is not None and record.id not in self._touched:
            self._touch(record.id)
        return record

    def _touch(self, key_id: int) -> None:
        """Records the last use at most once a minute per worker, off the request's path."""
        self._touched[key_id] = True
        task = asyncio.create_task(self._store_touch(key_id))
        self._touching.add(task)
        task.add_done_callback(self._touching.discard)

    async def _store_touch(self, key_id: int) -> None:
        try:
            await self._store.touch_key(key_id, datetime.now(UTC))
        except StoreUnavailable:
            self._touched.pop(key_id, None)
