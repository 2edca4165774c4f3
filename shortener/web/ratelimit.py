"""Rate limits shared by every instance through Redis, per process while Redis is down."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import math
import secrets
import time
from typing import Any, cast

from aiohttp import web
from cachetools import TTLCache
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from shortener.cache.breaker import Breaker
from shortener.cache.redis import connect
from shortener.config import IPNetwork
from shortener.errors import rate_limited

_WINDOW_MS = 60_000
_KEY_PREFIX = "shortener:limit:"
# Redis never holds a client's address: a key names the keyed hash of what it counts under,
# with a random salt that every instance shares through Redis, replaced once a day (when it
# expires, the first process to miss it sets a new one) and re-read by each process every
# minute, so the instances agree again within a minute of a change.
_SALT_KEY = "shortener:limit-salt"
_SALT_SECONDS = 86_400
_SALT_REREAD = 60.0
_SALT_OR_NEW = """
redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2])
return redis.call('GET', KEYS[1])
"""
# A fixed one-minute window per key: ARGV[2] events counted, the count, and how long until
# the window starts afresh.
_COUNT_IN_WINDOW = """
local count = redis.call('INCRBY', KEYS[1], ARGV[2])
if count == tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {count, redis.call('PTTL', KEYS[1])}
"""
_ERRORS = (RedisError, OSError, asyncio.TimeoutError)
# Counts sent in one pipeline at most; more wait for the next.
_MAX_GROUP = 100


class RateLimiter:
    def __init__(self, redis_url: str | None, timeout: float) -> None:
        self._client = None
        self._breaker = Breaker()
        if redis_url is not None:
            self._client = connect(redis_url, timeout=timeout, connect_timeout=timeout)
            self._counts = _GroupedCounts(self._client, self._breaker)
            self._salt_or_new = self._client.register_script(_SALT_OR_NEW)
        self._salt = b""
        self._salt_read = -math.inf
        self._local = _LocalBuckets()

    async def check(self, scope: str, key: str, per_minute: int) -> None:
        """Counts one event for `key`, or raises a 429 problem saying when to come back."""
        wait = await self.wait(scope, key, per_minute)
        if wait is not None:
            raise rate_limited(wait)

    async def wait(self, scope: str, key: str, per_minute: int) -> int | None:
        """Counts one event; None when it is allowed, else the seconds until it would be."""
        allowed, wait = await self.take(scope, key, per_minute, 1)
        return None if allowed else wait

    async def take(self, scope: str, key: str, per_minute: int, events: int) -> tuple[int, int]:
        """Counts `events` at once: how many of them (the first ones) are allowed, and the
        seconds until the rest would be."""
        if self._client is not None and self._breaker.allows():
            try:
                pseudonym = await self._pseudonym(key)
            except _ERRORS:
                self._breaker.failed()
            else:
                reply = await self._counts.count(f"{_KEY_PREFIX}{scope}:{pseudonym}", events)
                if reply is not None:
                    count, ttl_ms = reply
                    allowed = max(0, min(events, per_minute - (count - events)))
                    return allowed, max(1, math.ceil(ttl_ms / 1000))
        # Redis is down: each process limits on its own, never not at all.
        return self._local.take(f"{scope}:{key}", per_minute, events)

    async def _pseudonym(self, key: str) -> str:
        """What Redis knows `key` by: its hash keyed with the shared salt."""
        now = time.monotonic()
        if now - self._salt_read >= _SALT_REREAD:
            salt = await self._salt_or_new(
                keys=[_SALT_KEY], args=[secrets.token_bytes(32), _SALT_SECONDS]
            )
            self._salt, self._salt_read = cast(bytes, salt), now
        return hashlib.blake2b(key.encode(), key=self._salt, digest_size=16).hexdigest()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


class _GroupedCounts:
    """Counts sent to Redis together: while one pipeline of counts is out, the counts asked
    for meanwhile wait and go as the next one, one command a key however many asked for it.
    A busy worker pays one round trip a group, not one a count; a count asked alone goes at
    once."""

    def __init__(self, client: Redis, breaker: Breaker) -> None:
        self._client = client
        self._breaker = breaker
        # EVALSHA: the script is sent once, not with every count.
        self._script = client.register_script(_COUNT_IN_WINDOW)
        self._waiting: list[tuple[str, int, asyncio.Future[tuple[int, int] | None]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def count(self, key: str, events: int) -> tuple[int, int] | None:
        """Counts `events` for `key`: the count in the window and the milliseconds until it
        ends, or None when Redis could not be asked."""
        counted: asyncio.Future[tuple[int, int] | None]
        counted = asyncio.get_running_loop().create_future()
        self._waiting.append((key, events, counted))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_groups())
        return await counted

    async def _send_groups(self) -> None:
        group: list[tuple[str, int, asyncio.Future[tuple[int, int] | None]]] = []
        try:
            while self._waiting:
                group, self._waiting = self._waiting[:_MAX_GROUP], self._waiting[_MAX_GROUP:]
                # One count a key: the group's events for it counted at once, then each
                # waiter told the count as if its events had been counted in turn.
                totals: dict[str, int] = {}
                for key, events, _ in group:
                    totals[key] = totals.get(key, 0) + events
                keys = list(totals)
                replies = await self._send([(key, totals[key]) for key in keys])
                after = dict(zip(keys, replies, strict=True)) if replies is not None else {}
                counted_before = dict.fromkeys(keys, 0)
                for key, events, counted in group:
                    counted_before[key] += events
                    if counted.done():
                        continue
                    reply = after.get(key)
                    if reply is None:
                        counted.set_result(None)
                    else:
                        count, ttl_ms = reply
                        counted.set_result((count - totals[key] + counted_before[key], ttl_ms))
                group = []
        finally:
            self._sender = None
            # Cancelled (the app is stopping): nobody may wait for a count that never comes.
            for _, _, counted in group + self._waiting:
                counted.cancel()
            self._waiting = []

    async def _send(self, counts: list[tuple[str, int]]) -> list[tuple[int, int]] | None:
        try:
            try:
                replies = await self._pipeline(counts, by_digest=True)
            except NoScriptError:
                # Redis does not know the script (it restarted): its text once loads it again.
                replies = await self._pipeline(counts, by_digest=False)
        except _ERRORS:
            self._breaker.failed()
            return None
        self._breaker.succeeded()
        return [(int(count), int(ttl_ms)) for count, ttl_ms in replies]

    async def _pipeline(self, counts: list[tuple[str, int]], by_digest: bool) -> list[Any]:
        """The counts' replies: one count is sent alone (a pipeline costs redis-py more
        than the command), more in one pipeline."""
        if len(counts) == 1:
            key, events = counts[0]
            if by_digest:
                return [await self._client.evalsha(self._script.sha, 1, key, _WINDOW_MS, events)]
            return [await self._client.eval(_COUNT_IN_WINDOW, 1, key, _WINDOW_MS, events)]
        async with self._client.pipeline(transaction=False) as pipe:
            for key, events in counts:
                if by_digest:
                    pipe.evalsha(self._script.sha, 1, key, _WINDOW_MS, events)
                else:
                    pipe.eval(_COUNT_IN_WINDOW, 1, key, _WINDOW_MS, events)
            return await pipe.execute()


class _LocalBuckets:
    """A token bucket per key: a burst of `per_minute`, refilled evenly over a minute."""

    def __init__(self, max_keys: int = 100_000) -> None:
        # Idle buckets are full again after a minute, so forgetting them then changes nothing.
        self._buckets: TTLCache[str, tuple[float, float]] = TTLCache(maxsize=max_keys, ttl=60)

    def take(self, key: str, per_minute: int, events: int) -> tuple[int, int]:
        """How many of `events` the bucket allows, and the seconds until one more would be."""
        now = time.monotonic()
        rate = per_minute / 60.0
        tokens, then = self._buckets.get(key, (float(per_minute), now))
        tokens = min(float(per_minute), tokens + (now - then) * rate)
        allowed = min(events, math.floor(tokens))
        tokens -= allowed
        self._buckets[key] = (tokens, now)
        return allowed, max(1, math.ceil((1 - tokens) / rate))


class PenaltyBox:
    """Client addresses refused outright for a while, kept in each worker.

    The redirect path asks only while somebody is in it, so it costs nothing normally.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self._until: TTLCache[str, float] = TTLCache(maxsize=max_entries, ttl=_WINDOW_MS / 1000)
        # When the last address in the box is let out (time.monotonic()).
        self.release = 0.0

    def __bool__(self) -> bool:
        return self.release > time.monotonic()

    def put(self, address: str, seconds: int) -> None:
        until = time.monotonic() + seconds
        self._until[address] = until
        self.release = max(self.release, until)

    def wait(self, address: str) -> int | None:
        until = self._until.get(address)
        if until is None:
            return None
        left = until - time.monotonic()
        return max(1, math.ceil(left)) if left > 0 else None


def client_key(request: web.Request, trusted: tuple[IPNetwork, ...]) -> str:
    """What limits count under: the client address, or for IPv6 its /64. One subscriber
    usually holds a whole /64 and can rotate through it freely, so a limit per address of it
    would be no limit."""
    address = client_address(request, trusted)
    if ":" not in address:
        return address
    try:
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    except ValueError:
        return address


def client_address(request: web.Request, trusted: tuple[IPNetwork, ...]) -> str:
    """The peer, or behind trusted proxies the nearest untrusted hop of X-Forwarded-For."""
    return forwarded_client(request.remote, request.headers.get("X-Forwarded-For"), trusted)


def forwarded_client(
    peer: str | None, forwarded_for: str | None, trusted: tuple[IPNetwork, ...]
) -> str:
    peer = peer or ""
    if not trusted or forwarded_for is None or not _is_trusted(peer, trusted):
        return peer
    for hop in reversed(forwarded_for.split(",")):
        hop = hop.strip()
        if hop and not _is_trusted(hop, trusted):
            return hop
    return peer


def _is_trusted(address: str, trusted: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)
