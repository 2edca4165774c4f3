"""L1: a bounded in-process TTL LRU of targets, holding negative entries for unknown codes too."""

from __future__ import annotations

from cachetools import TLRUCache

from shortener.links.model import MISSING, Lookup


class L1Cache:
    def __init__(self, size: int, ttl: float, negative_ttl: float) -> None:
        self._ttl = ttl
        self._negative_ttl = min(negative_ttl, ttl)
        self.enabled = size > 0 and ttl > 0
        self._entries: TLRUCache[str, Lookup] = TLRUCache(maxsize=max(size, 1), ttu=self._expiry)
        # Bumped by every invalidation: a lookup that started before one must not store its
        # (possibly old) answer, or it would put back what the invalidation removed.
        self.epoch = 0
        # Plain counters on the request path; metrics read them off it.
        self.hits = 0
        self.negatives = 0
        self.misses = 0

    def _expiry(self, _code: str, value: Lookup, now: float) -> float:
        return now + (self._negative_ttl if value is MISSING else self._ttl)

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
