"""The read path behind L1: L2, then the store, one lookup per code at a time."""

from __future__ import annotations

import asyncio

from shortener.cache.known import KnownCodes
from shortener.cache.l1 import L1Cache
from shortener.cache.redis import RedisTier
from shortener.links.model import MISSING, Link, Lookup
from shortener.store import Store


class TieredCache:
    def __init__(
        self, l1: L1Cache, l2: RedisTier | None, store: Store, known: KnownCodes | None = None
    ) -> None:
        self.l1 = l1
        self.l2 = l2
        self._store = store
        # Every code the store holds, told by the invalidation channel: only with Redis.
        self.known = known if l2 is not None else None
        self._inflight: dict[str, asyncio.Task[Lookup]] = {}
        self.store_hits = 0
        self.store_negatives = 0

    async def load(self, code: str) -> Lookup:
        """The target for a code that L1 does not hold; concurrent misses share one lookup."""
        known = self.known
        # A code no worker ever stored is unknown without asking Redis or the store. Only
        # while the channel is up: it is how codes stored elsewhere reach the filter (a new
        # code is found once its invalidation arrives, as a changed one is).
        if known is not None and known.surely_unknown(code) and self.l2 is not None and self.l2.up:
            known.spared += 1
            self.l1.put(code, MISSING, self.l1.epoch)
            return MISSING
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
        value = await self.l2.get(code) if self.l2 is not None else None
        if value is None:
            link = await self._store.get_link(code)
            if link is None:
                value = MISSING
                self.store_negatives += 1
            else:
                value = link.target()
                self.store_hits += 1
            if self.l2 is not None:
                await self.l2.put(code, value)
        self.l1.put(code, value, epoch)
        return value

    async def changed(self, link: Link) -> None:
        """After a write to the store: no worker of any instance may keep the old answer."""
        await self.changed_many([link])

    async def changed_many(self, links: list[Link]) -> None:
        """changed() for many links, with one Redis round trip for them all."""
        for link in links:
            self.l1.invalidate(link.code)
            if self.known is not None:
                self.known.add(link.code)
        if self.l2 is not None:
            await self.l2.changed_many([(link.code, link.target()) for link in links])
