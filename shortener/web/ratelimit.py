"""Per-client rate limits and the client address they key on."""

from __future__ import annotations

import ipaddress
import math
import time

from aiohttp import web
from cachetools import TTLCache

from shortener.config import IPNetwork
from shortener.errors import rate_limited


class RateLimiter:
    """A token bucket per key: a burst of `per_minute`, refilled evenly over a minute."""

    def __init__(self, per_minute: int, max_keys: int = 100_000) -> None:
        self._capacity = float(per_minute)
        self._rate = per_minute / 60.0
        # Idle buckets are full again after a minute, so forgetting them then changes nothing.
        self._buckets: TTLCache[str, tuple[float, float]] = TTLCache(maxsize=max_keys, ttl=60)

    def check(self, key: str) -> None:
        """Takes one token for `key`, or raises a 429 problem saying when to come back."""
        now = time.monotonic()
        tokens, then = self._buckets.get(key, (self._capacity, now))
        tokens = min(self._capacity, tokens + (now - then) * self._rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            raise rate_limited(max(1, math.ceil((1 - tokens) / self._rate)))
        self._buckets[key] = (tokens - 1, now)


def client_address(request: web.Request, trusted: tuple[IPNetwork, ...]) -> str:
    """The peer, or behind trusted proxies the nearest untrusted hop of X-Forwarded-For."""
    peer = request.remote or ""
    if not trusted or not _is_trusted(peer, trusted):
        return peer
    hops = [hop.strip() for hop in request.headers.get("X-Forwarded-For", "").split(",")]
    for hop in reversed(hops):
        if hop and not _is_trusted(hop, trusted):
            return hop
    return peer


def _is_trusted(address: str, trusted: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)
