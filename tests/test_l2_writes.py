"""A write's new answers go into Redis and out on the invalidation channel together."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from shortener.cache.l1 import L1Cache
from shortener.cache.redis import CHANNEL, KEY_PREFIX, RedisTier, decode
from shortener.links.model import MISSING, Target


def target(code: str, version: int) -> Target:
    return Target(f"https://example.com/{code}/v{version}", 302, None, None, False, version)


async def heard(pubsub: aioredis.client.PubSub, count: int) -> list[str]:
    codes: list[str] = []
    async with asyncio.timeout(10):
        while len(codes) < count:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None:
                codes.append(message["data"].decode())
    return codes


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
    assert await heard(pubsub, len(codes)) == codes
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
    assert await heard(pubsub, 2) == ["a1", "a2"]
    assert decode(await client.get(KEY_PREFIX + "a2")) == target("a2", 1)
    assert tier.errors == {}
