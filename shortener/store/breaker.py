"""The store's circuit breaker: a store that does not answer is not asked again and again.

A hung PostgreSQL (a partition: packets go nowhere) holds every call for its whole timeout.
After a few failures in a row the breaker opens: every call fails at once with
StoreUnavailable (a 503 with Retry-After), while one background probe asks the store
every `interval` seconds; the first answer closes the breaker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from shortener.cache.breaker import Breaker
from shortener.errors import StoreUnavailable

log = logging.getLogger(__name__)


class StoreBreaker:
    def __init__(
        self,
        probe: Callable[[], Awaitable[None]],
        failures_to_open: int = 3,
        interval: float = 0.25,
    ) -> None:
        self._probe = probe
        self._interval = interval
        self._breaker = Breaker(failures_to_open, cooldown=interval)
        self._prober: asyncio.Task[None] | None = None
        # Plain counters; the metrics sync publishes them.
        self.openings = 0
        self.rejected = 0

    @property
    def is_open(self) -> bool:
        return self._breaker.is_open

    def check(self) -> None:
        """Raises StoreUnavailable at once while the breaker is open."""
        if self._breaker.is_open:
            self.rejected += 1
            raise StoreUnavailable("the store did not answer the last calls (breaker open)")

    def succeeded(self) -> None:
        self._breaker.succeeded()

    def failed(self, exc: BaseException) -> None:
        was_open = self._breaker.is_open
        self._breaker.failed()
        if self._breaker.is_open and not was_open:
            self.openings += 1
            log.warning("store unavailable, breaker open: %r", exc)
            if self._prober is None or self._prober.done():
                self._prober = asyncio.create_task(self._probe_until_answered())

    async def _probe_until_answered(self) -> None:
        while self._breaker.is_open:
            await asyncio.sleep(self._interval)
            try:
                await self._probe()
            except StoreUnavailable:
                continue
            self._breaker.succeeded()
            log.warning("store answers again, breaker closed")

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
