"""L1: a bounded in-process TTL LRU of targets, holding negative entries for unknown codes too.

An OrderedDict of (value, expiry) rather than cachetools' TLRUCache: every redirect reads
L1, and a hit here is a few C calls instead of the Python of TLRUCache's timer and links.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from collections.abc import Callable

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
        self._size = max(size, 1)
        self._ttl = ttl
        self._negative_ttl = min(negative_ttl, ttl)
        self._spread = spread
        self._timer = timer
        self._rng = rng
        self.enabled = size > 0 and ttl > 0
        # Least recently used first; each value with the time (of `timer`) it expires at.
        self._entries: OrderedDict[str, tuple[Lookup, float]] = OrderedDict()
        # Bumped by every invalidation: a lookup that started before one must not store its
        # (possibly old) answer, or it would put back what the invalidation removed.
        self.epoch = 0
        # Plain counters on the request path; metrics read them off it.
        self.hits = 0
        self.negatives = 0
        self.misses = 0

    def get(self, code: str) -> Lookup | None:
        entries = self._entries
        entry = entries.get(code)
        if entry is None:
            self.misses += 1
            return None
        value, expires_at = entry
        if expires_at <= self._timer():
            del entries[code]
            self.misses += 1
            return None
        entries.move_to_end(code)
        if value is MISSING:
            self.negatives += 1
        else:
            self.hits += 1
        return value

    def put(self, code: str, value: Lookup, epoch: int) -> None:
        if not self.enabled or epoch != self.epoch:
            return
        ttl = self._negative_ttl if value is MISSING else self._ttl
        entries = self._entries
        entries[code] = (value, self._timer() + ttl * (1.0 - self._spread * self._rng()))
        entries.move_to_end(code)
        if len(entries) > self._size:
            entries.popitem(last=False)

    def invalidate(self, code: str) -> None:
        self.epoch += 1
        self._entries.pop(code, None)

    def flush(self) -> None:
        self.epoch += 1
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
