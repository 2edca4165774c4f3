"""A write's new answers go into Redis and out on the invalidation channel together."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from shortener.cache.l1 import L1Cache
from shortener.cache.redis import _PUT_AND_PUBLISH_BATCH, CHANNEL, KEY_PREFIX, RedisTier, decode
from shortener.links.model import MISSING, Target


def target(code: str, version: int) -> Target:
    return Target(f"https://example.com/{code}/v{version}", 302, None, None, False, version)


async def heard(pubsub: aioredis.client.PubSub, count: int) -> list[list[str]]:
    """The codes of each message, until `count` codes have arrived; every message names the
    same sender first."""
    messages: list[list[str]] = []
    senders: set[str] = set()
    async with asyncio.timeout(10):
        while sum(len(codes) for codes in messages) < count:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None:
                sender, *codes = message["data"].decode().split(" ")
                senders.add(sender)
                messages.append(codes)
    assert len(senders) == 1
    return messages


async def soon(condition: Callable[[], bool]) -> None:
    """Returns once `condition` holds; fails after 10 s."""
    async with asyncio.timeout(10):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


@dataclass
class Listening:
    tier: RedisTier
    client: aioredis.Redis
    pubsub: aioredis.client.PubSub


@pytest.fixture
async def listening(redis_url: str) -> AsyncIterator[Listening]:
    """A tier that writes, and a client subscribed to the channel before it does."""
    tier = RedisTier(redis_url, timeout=1.0, ttl=300, negative_ttl=300, l1=L1Cache(10, 30, 5))
    client = aioredis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(CHANNEL)
        yield Listening(tier, client, pubsub)
    finally:
        await pubsub.aclose()
        await client.aclose()
        await tier.close()


async def test_every_code_of_a_long_write_is_stored_and_published_in_order(
    listening: Listening,
) -> None:
    tier, client, pubsub = listening.tier, listening.client, listening.pubsub
    await client.set(KEY_PREFIX + "c7", b"0|-")  # cached as unknown before the write
    await tier.put("c3", target("c3", 9))  # a newer answer than the write's is kept
    codes = [f"c{n}" for n in range(1201)]  # more than one script call holds
    await tier.changed_many([(code, target(code, 2)) for code in codes])
    # One message a script call: the codes of a write, in order, in as few as fit.
    batch = _PUT_AND_PUBLISH_BATCH
    assert await heard(pubsub, len(codes)) == [
        codes[start : start + batch] for start in range(0, len(codes), batch)
    ]
    stored = await client.mget([KEY_PREFIX + code for code in codes])
    answers = [decode(raw) if raw is not None else None for raw in stored]
    assert answers[3] == target("c3", 9)
    assert all(answers[n] == target(code, 2) for n, code in enumerate(codes) if n != 3)
    assert MISSING not in answers
    ttl = await client.pttl(KEY_PREFIX + "c1200")
    assert 0.85 * 300_000 < ttl <= 1.1 * 300_000  # the L2 TTL with its jitter


async def test_a_write_after_redis_forgot_its_scripts_is_stored_and_published(
    listening: Listening,
) -> None:
    tier, client, pubsub = listening.tier, listening.client, listening.pubsub
    await tier.changed("a1", target("a1", 1))
    await client.script_flush()
    await tier.changed("a2", target("a2", 1))
    assert await heard(pubsub, 2) == [["a1"], ["a2"]]
    assert decode(await client.get(KEY_PREFIX + "a2")) == target("a2", 1)
    assert tier.errors == {}


async def test_each_worker_drops_a_writes_codes_once_and_the_writer_skips_its_own_message(
    redis_url: str,
) -> None:
    def tier(l1: L1Cache) -> RedisTier:
        return RedisTier(redis_url, timeout=1.0, ttl=300, negative_ttl=300, l1=l1)

    writer_l1, reader_l1 = L1Cache(10, 30, 5), L1Cache(10, 30, 5)
    writer, reader = tier(writer_l1), tier(reader_l1)
    listeners = [asyncio.create_task(each.listen()) for each in (writer, reader)]
    try:
        await soon(lambda: writer.subscribed and reader.subscribed)
        for l1 in (writer_l1, reader_l1):
            for code in ("w1", "w2", "kept"):
                l1.put(code, target(code, 1), l1.epoch)
        await writer.changed_many([("w1", target("w1", 2)), ("w2", target("w2", 2))])
        # The writer drops them once Redis holds the new answers, not when its message comes.
        assert writer_l1.get("w1") is None and writer_l1.get("w2") is None
        await soon(lambda: reader.invalidations_received >= 2)
        assert reader_l1.get("w1") is None and reader_l1.get("w2") is None
        assert reader_l1.get("kept") == target("kept", 1)
        assert writer_l1.get("kept") == target("kept", 1)
        await reader.changed("r1", target("r1", 1))  # heard by the writer: it listens still
        await soon(lambda: writer.invalidations_received >= 1)
        assert (writer.invalidations_received, reader.invalidations_received) == (1, 2)
    finally:
        for listener in listeners:
            listener.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)
        await writer.close()
        await reader.close()
