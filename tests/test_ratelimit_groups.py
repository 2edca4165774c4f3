"""Rate-limit counts asked for concurrently go to Redis together, one command a key, and
stay exact."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from devservices.redis import RedisServer
from shortener.web.ratelimit import RateLimiter


def count_pipelines(limiter: RateLimiter, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of commands (distinct keys) in each pipeline the limiter sends from now on."""
    sizes: list[int] = []
    counts = limiter._counts
    send = counts._pipeline

    async def counted(group: list[tuple[str, int]], by_digest: bool) -> list[Any]:
        sizes.append(len(group))
        return await send(group, by_digest)

    monkeypatch.setattr(counts, "_pipeline", counted)
    return sizes


async def test_concurrent_counts_go_in_few_pipelines_one_command_a_key_and_stay_exact(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = RateLimiter(redis_url, timeout=1.0)
    other = RateLimiter(redis_url, timeout=1.0)  # another worker, counting the same keys
    try:
        await limiter.take("warm", "up", 10, 1)  # Redis loads the script
        pipelines = count_pipelines(limiter, monkeypatch)
        takes = [limiter.take("create-key", "7", 10, 1) for _ in range(30)]
        takes += [limiter.take("create-key", "8", 10, 4) for _ in range(3)]
        takes += [other.take("create-key", "7", 10, 1) for _ in range(5)]
        outcomes = await asyncio.gather(*takes)
        assert (
            sum(allowed for allowed, _ in outcomes[:30])
            + sum(allowed for allowed, _ in outcomes[33:])
            == 10
        )
        assert sorted(allowed for allowed, _ in outcomes[30:33]) == [2, 4, 4]
        assert all(1 <= wait <= 60 for _, wait in outcomes)
        # Two keys: however the 33 counts were grouped, no pipeline counted a key twice.
        assert pipelines and all(size <= 2 for size in pipelines) and sum(pipelines) < 33
    finally:
        await limiter.close()
        await other.close()


async def test_counts_load_the_script_again_after_redis_forgot_it(redis_url: str) -> None:
    limiter = RateLimiter(redis_url, timeout=1.0)
    try:
        assert (await limiter.take("s", "k", 3, 1))[0] == 1
        with redis.Redis.from_url(redis_url) as client:
            client.script_flush()
        outcomes = await asyncio.gather(*(limiter.take("s", "k", 3, 1) for _ in range(3)))
        assert sorted(allowed for allowed, _ in outcomes) == [0, 1, 1]
    finally:
        await limiter.close()


async def test_counts_fall_back_to_the_process_while_redis_is_down(
    redis_url: str, redis_server: RedisServer
) -> None:
    limiter = RateLimiter(redis_url, timeout=0.2)
    try:
        redis_server.kill()
        outcomes = await asyncio.gather(*(limiter.take("s", "k", 3, 1) for _ in range(5)))
        assert sum(allowed for allowed, _ in outcomes) == 3
    finally:
        await limiter.close()
