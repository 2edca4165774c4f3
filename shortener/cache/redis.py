"""L2: Redis, shared by every worker of every instance, and the channel that invalidates L1.

Entries carry the link's version and are only ever replaced by a newer one, so a slow lookup
can never put an old answer back after a write. Every call has a tight timeout behind a
circuit breaker: a dead Redis costs a request at most one timeout, then nothing.

A write's invalidation is one message for all its codes, "<sender> <code> <code> ...": the
sender (a worker) skips its own messages, having dropped those codes from its L1 once Redis
held their new answers, and every other worker drops each code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from shortener.cache.breaker import Breaker
from shortener.cache.known import KnownCodes
from shortener.cache.l1 import L1Cache
from shortener.config import SENTINEL_SCHEME, Settings, parse_sentinel_url
from shortener.links.model import MISSING, Lookup, Target

log = logging.getLogger(__name__)

# Versioned by its message format: workers that speak another one listen elsewhere.
CHANNEL = "shortener:invalidate:2"
# What can fail, as the errors counter names it.
OPERATIONS = ("get", "put", "publish", "backlog_full")
KEY_PREFIX = "shortener:link:"
_MISSING = b"-"
_ERRORS = (RedisError, OSError, asyncio.TimeoutError)
# Pending invalidations kept while Redis is down, replayed when it returns.
_MAX_UNPUBLISHED = 10_000
# Silence on the subscription for this long means the connection is dead, even if the
# socket has not noticed.
_SILENCE_LIMIT = 3.0
# How often a lost subscription is tried again, and pending invalidations sent again: once
# Redis answers, every worker must be subscribed (its L1 flushed) and every write made
# meanwhile published within the contract's 100 ms. A refused connection costs next to
# nothing; a hung Redis holds each attempt for its timeout anyway.
_RETRY_INTERVAL = 0.05

# Stores "version|payload" unless the key holds a newer version already.
_PUT_IF_NEWER = """
local current = redis.call('GET', KEYS[1])
if current then
  local version = tonumber(string.match(current, '^(%d+)|'))
  if version and version > tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[2], 'PX', ARGV[3])
return 1
"""
# The same for every key of a write, then one publication of all its codes (ARGV[1] is the
# channel, ARGV[2] the message, then version, payload and ttl per key): a write's new answers
# and their invalidation in one command.
_PUT_AND_PUBLISH = """
for i, key in ipairs(KEYS) do
  local at = 3 + (i - 1) * 3
  local current = redis.call('GET', key)
  local version = current and tonumber(string.match(current, '^(%d+)|'))
  if not (version and version > tonumber(ARGV[at])) then
    redis.call('SET', key, ARGV[at] .. '|' .. ARGV[at + 1], 'PX', ARGV[at + 2])
  end
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return #KEYS
"""
# Codes a script call writes at most, so that a long backlog does not hold Redis up.
_PUT_AND_PUBLISH_BATCH = 500


class RedisTier:
    def __init__(
        self, url: str, timeout: float, ttl: float, negative_ttl: float, l1: L1Cache
    ) -> None:
        self._client = connect(url, timeout=timeout, connect_timeout=timeout)
        # The subscription waits for messages, so it gets no read timeout of its own; a
        # ping every second and the silence limit find a dead connection instead.
        self._subscriber = connect(url, timeout=None, connect_timeout=max(timeout, 1.0))
        # EVALSHA on the read path: the script is sent once, not with every miss.
        self._put_if_newer = self._client.register_script(_PUT_IF_NEWER)
        self._put_and_publish = self._client.register_script(_PUT_AND_PUBLISH)
        self._ttl_ms = int(ttl * 1000)
        self._negative_ttl_ms = int(negative_ttl * 1000)
        self._l1 = l1
        # Who this worker is on the channel: it skips the messages it sent itself.
        self._sender = secrets.token_hex(8)
        self.breaker = Breaker()
        self.subscribed = False
        # The filter of known codes the channel keeps up to date, if there is one.
        self.known: KnownCodes | None = None
        self._unpublished: dict[str, Target] = {}
        self._backlog = asyncio.Event()
        # Plain counters on the request path; metrics read them off it.
        self.hits = 0
        self.negatives = 0
        self.misses = 0
        self.errors: dict[str, int] = {}
        self.invalidations_received = 0
        self.flushes = 0

    @property
    def up(self) -> bool:
        return self.subscribed and not self.breaker.is_open

    async def get(self, code: str) -> Lookup | None:
        """The cached answer, or None when Redis does not know it or cannot be asked."""
        if not self.breaker.allows():
            return None
        try:
            raw = cast(bytes | None, await self._client.get(KEY_PREFIX + code))
        except _ERRORS as exc:
            self._failed("get", exc)
            return None
        self.breaker.succeeded()
        if raw is None:
            self.misses += 1
            return None
        value = decode(raw)
        if value is MISSING:
            self.negatives += 1
        else:
            self.hits += 1
        return value

    async def put(self, code: str, value: Lookup) -> None:
        if not self.breaker.allows():
            return
        try:
            key, version, payload, ttl_ms = self._put_args(code, value)
            await self._put_if_newer(keys=[key], args=[version, payload, ttl_ms])
        except _ERRORS as exc:
            self._failed("put", exc)
        else:
            self.breaker.succeeded()

    async def changed(self, code: str, target: Target) -> None:
        """After a write: the new answer into L2, then word to every worker to drop its L1.

        Writes always try Redis, breaker or not: they are rare, and an invalidation must go
        out the moment Redis can take it. What cannot go out now waits for the next chance.
        """
        await self.changed_many([(code, target)])

    async def changed_many(self, changes: list[tuple[str, Target]]) -> None:
        """changed() for many codes in one pipeline."""
        for code, target in changes:
            self._remember_unpublished(code, target)
        await self._publish_pending()

    async def _publish_pending(self) -> None:
        if not self._unpublished:
            return
        pending, self._unpublished = self._unpublished, {}
        try:
            try:
                await self._publish(pending)
            except RedisConnectionError:
                # The first call after Redis came back may get a pooled connection that
                # Redis closed while it was away; a fresh one is worth one more try.
                await self._publish(pending)
        except _ERRORS as exc:
            self._failed("publish", exc)
            for code, target in pending.items():
                self._remember_unpublished(code, target)
        else:
            self.breaker.succeeded()
            # What this worker's own message would do: a lookup that read Redis before the
            # new answers were in must not keep its old answer in L1.
            for code in pending:
                self._l1.invalidate(code)

    async def _publish(self, pending: dict[str, Target]) -> None:
        try:
            await self._send(pending, by_digest=True)
        except NoScriptError:
            # Redis does not know the script (it restarted): its text once loads it again.
            await self._send(pending, by_digest=False)

    async def _send(self, pending: dict[str, Target], by_digest: bool) -> None:
        """The new answers and their invalidations in one round trip: one script call, or
        a pipeline of them for a long backlog (a pipeline costs redis-py more than the
        command, so a single call goes alone)."""
        changes = list(pending.items())
        calls = [
            self._script_arguments(changes[start : start + _PUT_AND_PUBLISH_BATCH])
            for start in range(0, len(changes), _PUT_AND_PUBLISH_BATCH)
        ]
        script = self._put_and_publish.sha if by_digest else _PUT_AND_PUBLISH
        if len(calls) == 1:
            keys, args = calls[0]
            call = self._client.evalsha if by_digest else self._client.eval
            await call(script, len(keys), *keys, *args)
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                (pipe.evalsha if by_digest else pipe.eval)(script, len(keys), *keys, *args)
            await pipe.execute()

    def _script_arguments(
        self, batch: list[tuple[str, Target]]
    ) -> tuple[list[str], list[str | int | bytes]]:
        """The keys and arguments of the script call that stores `batch`'s answers and
        publishes its codes."""
        keys: list[str] = []
        message = " ".join([self._sender, *(code for code, _ in batch)])
        args: list[str | int | bytes] = [CHANNEL, message]
        for code, target in batch:
            key, version, payload, ttl_ms = self._put_args(code, target)
            keys.append(key)
            args += [version, payload, ttl_ms]
        return keys, args

    def _remember_unpublished(self, code: str, target: Target) -> None:
        if code in self._unpublished or len(self._unpublished) < _MAX_UNPUBLISHED:
            self._unpublished[code] = target
            self._backlog.set()
        else:
            self.errors["backlog_full"] = self.errors.get("backlog_full", 0) + 1

    async def _replay(self) -> None:
        """Sends what writes could not publish again and again until Redis takes it, so it
        goes out as soon as Redis answers, not at the next write or re-subscription."""
        while True:
            await self._backlog.wait()
            await self._publish_pending()
            if self._unpublished:
                await asyncio.sleep(_RETRY_INTERVAL)
            else:
                self._backlog.clear()

    def _put_args(self, code: str, value: Lookup) -> tuple[str, int, bytes, int]:
        if value is MISSING:
            return KEY_PREFIX + code, 0, _MISSING, self._negative_ttl_ms
        payload = orjson.dumps(
            [value.url, value.status, value.expires_at, value.max_visits, value.gone]
        )
        # Jitter spreads the expiry of entries written together (after a flush, say).
        ttl = int(self._ttl_ms * random.uniform(0.9, 1.1))
        return KEY_PREFIX + code, value.version, payload, ttl

    def _failed(self, operation: str, exc: BaseException) -> None:
        self.errors[operation] = self.errors.get(operation, 0) + 1
        was_open = self.breaker.is_open
        self.breaker.failed()
        if self.breaker.is_open and not was_open:
            log.warning("Redis unavailable, breaker open: %s: %r", operation, exc)

    async def ping(self) -> bool:
        try:
            await self._client.ping()
        except _ERRORS:
            return False
        return True

    async def listen(self) -> None:
        """Applies invalidations from every worker until cancelled, reconnecting forever,
        and meanwhile replays the invalidations that could not be published."""
        replay = asyncio.create_task(self._replay())
        try:
            while True:
                pubsub = self._subscriber.pubsub()
                try:
                    await pubsub.subscribe(CHANNEL)
                    await self._receive(pubsub)
                except _ERRORS as exc:
                    if self.subscribed:
                        log.warning("lost the invalidation channel: %r", exc)
                    self.subscribed = False
                    if self.known is not None:
                        self.known.forget()
                finally:
                    await _close_quietly(pubsub)
                await asyncio.sleep(_RETRY_INTERVAL)
        finally:
            replay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replay

    async def _receive(self, pubsub: Any) -> None:
        last_heard = next_ping = time.monotonic()
        while True:
            message = await pubsub.get_message(timeout=0.25)
            now = time.monotonic()
            if message is not None:
                last_heard = now
                await self._handle(message)
            elif now - last_heard > _SILENCE_LIMIT:
                raise ConnectionError(f"no word from Redis for {_SILENCE_LIMIT} s")
            if now >= next_ping:
                await pubsub.ping()
                next_ping = now + 1.0

    async def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "message":
            sender, *codes = message["data"].decode("utf-8", "replace").split(" ")
            if sender == self._sender:
                return
            self.invalidations_received += len(codes)
            known = self.known
            for code in codes:
                self._l1.invalidate(code)
                if known is not None:
                    known.add(code)
        elif kind == "subscribe":
            # Messages published while we were not subscribed are lost for good (pub/sub is
            # at-most-once), so everything L1 holds may be stale: start it afresh.
            await self._publish_pending()
            if len(self._l1):
                self.flushes += 1
            self._l1.flush()
            if self.known is not None:
                self.known.refresh()  # after subscribing: nothing made since can be missed
            self.subscribed = True
            log.info("subscribed to invalidations; L1 flushed")

    async def close(self) -> None:
        await self._client.aclose()
        await self._subscriber.aclose()


def connect(url: str, *, timeout: float | None, connect_timeout: float) -> aioredis.Redis:
    """A client of the Redis server at ``url``, or for ``redis+sentinel://`` of whichever
    server the Sentinels name primary: each new connection asks them, so a failover looks
    like a short outage. No retries: every caller has a breaker and a fallback."""
    no_retry = Retry(NoBackoff(), 0)
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": connect_timeout,
        "retry": no_retry,
    }
    if not url.startswith(f"{SENTINEL_SCHEME}://"):
        return aioredis.Redis.from_url(url, **options)
    parsed = parse_sentinel_url(url)
    sentinels = Sentinel(  # type: ignore[no-untyped-call]
        list(parsed.sentinels),
        sentinel_kwargs={
            "socket_timeout": connect_timeout,
            "socket_connect_timeout": connect_timeout,
            "retry": no_retry,
        },
    )
    client = sentinels.master_for(
        parsed.primary,
        redis_class=_SentinelClient,
        db=parsed.db,
        password=parsed.password,
        **options,
    )
    assert isinstance(client, _SentinelClient)
    client.sentinels = sentinels
    return client


class _SentinelClient(aioredis.Redis):
    """A client of the primary that also closes its connections to the Sentinels."""

    sentinels: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinels is not None:
            await self.sentinels.aclose()


def decode(raw: bytes) -> Lookup:
    version, _, payload = raw.partition(b"|")
    if payload == _MISSING:
        return MISSING
    url, status, expires_at, max_visits, gone = orjson.loads(payload)
    return Target(url, status, expires_at, max_visits, gone, int(version))


async def _close_quietly(pubsub: Any) -> None:
    with contextlib.suppress(*_ERRORS):
        await pubsub.aclose()


def redis_tier(settings: Settings, l1: L1Cache) -> RedisTier | None:
    """The shared tier the settings ask for, or None without SHORTENER_REDIS_URL."""
    if settings.redis_url is None:
        return None
    return RedisTier(
        settings.redis_url,
        settings.redis_timeout,
        settings.l2_ttl,
        settings.l2_negative_ttl,
        l1,
    )
