"""Clicks counted in memory and written in batches, so a redirect never waits on a write."""

from __future__ import annotations

import asyncio
import logging

from shortener.errors import StoreUnavailable
from shortener.store import Store

log = logging.getLogger(__name__)


class ClickCounter:
    def __init__(self, store: Store, interval: float, max_codes: int) -> None:
        self._store = store
        self._interval = interval
        self._max_codes = max_codes
        self._pending: dict[str, int] = {}
        self.flushed = 0
        self.dropped = 0

    def add(self, code: str) -> None:
        pending = self._pending
        if code in pending:
            pending[code] += 1
        elif len(pending) < self._max_codes:
            pending[code] = 1
        else:
            self.dropped += 1

    @property
    def buffered(self) -> int:
        return sum(self._pending.values())

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        try:
            await self._store.add_clicks(batch)
        except StoreUnavailable:
            # Kept for the next flush; the store being down must not lose counts.
            for code, count in batch.items():
                if code in self._pending or len(self._pending) < self._max_codes:
                    self._pending[code] = self._pending.get(code, 0) + count
                else:
                    self.dropped += count
            raise
        self.flushed += sum(batch.values())

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except StoreUnavailable as exc:
                log.warning("clicks kept in memory, store unavailable: %s", exc)
