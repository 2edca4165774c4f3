"""The read path behind L1: one lookup per code at a time, L2 before the store."""

from __future__ import annotations

import asyncio

from shortener.cache.l1 import L1Cache
from shortener.links.model import MISSING, Lookup
from shortener.store import Store


class TieredCache:
    def __init__(self, l1: L1Cache, store: Store) -> None:
        self.l1 = l1
        self._store = store
        self._inflight: dict[str, asyncio.Task[Lookup]] = {}

    async def load(self, code: str) -> Lookup:
        """The target for a code that L1 does not hold; concurrent misses share one lookup."""
        task = self._inflight.get(code)
        if task is None:
            task = asyncio.ensure_future(self._fetch(code, self.l1.epoch))
            self._inflight[code] = task
            task.add_done_callback(lambda done: self._settle(code, done))
        # Shielded, so one caller giving up does not cancel the lookup the others wait for.
        return await asyncio.shield(task)

    def _settle(self, code: str, task: asyncio.Task[Lookup]) -> None:
        self._inflight.pop(code, None)
        if not task.cancelled():
            task.exception()  # marks it retrieved even when every waiter has gone

    async def _fetch(self, code: str, epoch: int) -> Lookup:
        link = await self._store.get_link(code)
        value = link.target() if link is not None else MISSING
        self.l1.put(code, value, epoch)
        return value

    async def invalidate(self, code: str) -> None:
        """Forgets a code after its link changed in the store."""
        self.l1.invalidate(code)
