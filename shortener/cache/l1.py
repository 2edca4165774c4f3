"""L1: a bounded in-process TTL LRU of targets, holding negative entries for unknown codes too."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from cachetools import TLRUCache

from shortener.links.model import MISSING, Lookup

# Each entry lives between 80% and 100% of its TTL, drawn when it is stored. Popular codes
# are loaded together (at start-up, after a flush), and with one fixed TTL they would all
# expire in the same instant and be read again from Redis or the store in one burst; spread
# over the last fifth of the TTL, that burst becomes a trickle, and no entry outlives it.
EXPIRY_SPREAD = 0.2


class L1Cache:
    def __init__(
        self,
        size: int,
        ttl: float,
        negative_ttl: float,
        *,
        spread: float = EXPIRY_SPREAD,
        timer: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._ttl = ttl
        self._negative_ttl = min(negative_ttl, ttl)
        self._spread = spread
        self._rng = rng
        self.enabled = size > 0 and ttl > 0
        self._entries: TLRUCache[str, Lookup] = TLRUCache(
            maxsize=max(size, 1), ttu=self._expiry, timer=timer
        )
        # Bumped by every invalidation: a lookup that started before one must not store its
        # (possibly old) answer, or it would put back what the invalidation removed.
        self.epoch = 0
        # Plain counters on the request path; metrics read them off it.
        self.hits = 0
        self.negatives = 0
        self.misses = 0

    def _expiry(self, _code: str, value: Lookup, now: float) -> float:
        ttl = self._negative_ttl if value is MISSING else self._ttl
        return now + ttl * (1.0 - self._spread * self._rng())

    def get(self, code: str) -> Lookup | None:
        # Indexing, not .get(): cachetools' get() checks membership first, a second lookup.
        try:
            value = self._entries[code]
        except KeyError:
            self.misses += 1
            return None
        if value is MISSING:
            self.negatives += 1
        else:
            self.hits += 1
        return value

    def put(self, code: str, value: Lookup, epoch: int) -> None:
        if self.enabled and epoch == self.epoch:
            self._entries[code] = value

    def invalidate(self, code: str) -> None:
        self.epoch += 1
        self._entries.pop(code, None)

    def flush(self) -> None:
        self.epoch += 1
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
