"""L2 in Redis, invalidation across instances, and redirects that outlive Redis or Postgres."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from shortener.app import STORE, TIERED, create_app
from shortener.auth import create_key
from shortener.cache.redis import KEY_PREFIX, decode
from shortener.config import Settings
from tests.contract import ContractClient
from tests.services import PostgresServer, RedisServer
from tests.test_api import LINKS

MakeApp = Callable[..., Awaitable[ContractClient]]


@pytest.fixture
async def make_app(
    postgres_url: str, redis_url: str, aiohttp_client: Callable[..., Any]
) -> MakeApp:
    """Apps sharing one real Postgres and one real Redis, like instances behind nginx."""

    async def make(**overrides: Any) -> ContractClient:
        settings = Settings(
            database_url=postgres_url,
            redis_url=redis_url,
            base_url="https://sho.rt",
            **overrides,
        )
        return ContractClient(await aiohttp_client(create_app(settings)))

    return make


async def admin_headers(app: ContractClient) -> dict[str, str]:
    _, key = await create_key(app.app[STORE], "ops", admin=True)
    return {"Authorization": f"Bearer {key}"}


async def subscribed(*apps: ContractClient) -> None:
    deadline = time.monotonic() + 5
    while not all(app.app[TIERED].l2.subscribed for app in apps):  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "never subscribed to invalidations"
        await asyncio.sleep(0.02)


async def location(app: ContractClient, code: str) -> str | int:
    reply = await app.get(f"/{code}")
    return reply.headers.get("Location") or reply.status


async def test_patch_invalidates_other_instances_within_100_ms(make_app: MakeApp) -> None:
    writer, reader = await make_app(), await make_app()
    await subscribed(writer, reader)
    headers = await admin_headers(writer)
    link = (
        await writer.post(LINKS, json={"url": "https://example.com/old"}, headers=headers)
    ).json()
    assert await location(reader, link["code"]) == "https://example.com/old"
    assert reader.app[TIERED].l1.get(link["code"]) is not None

    await writer.patch(
        f"{LINKS}/{link['code']}", json={"url": "https://example.com/new"}, headers=headers
    )
    changed_at = time.monotonic()
    while await location(reader, link["code"]) != "https://example.com/new":
        assert time.monotonic() - changed_at < 0.1, "the reader kept the old target"
        await asyncio.sleep(0.005)


async def test_delete_and_disable_reach_other_instances(make_app: MakeApp) -> None:
    writer, reader = await make_app(), await make_app()
    await subscribed(writer, reader)
    headers = await admin_headers(writer)
    first = (
        await writer.post(LINKS, json={"url": "https://example.com/1"}, headers=headers)
    ).json()
    second = (
        await writer.post(LINKS, json={"url": "https://example.com/2"}, headers=headers)
    ).json()
    for link in (first, second):
        assert (await reader.get(f"/{link['code']}")).status == 302
    await writer.delete(f"{LINKS}/{first['code']}", headers=headers)
    await writer.patch(f"{LINKS}/{second['code']}", json={"disabled": True}, headers=headers)
    await asyncio.sleep(0.1)
    assert (await reader.get(f"/{first['code']}")).status == 410
    assert (await reader.get(f"/{second['code']}")).status == 410


async def test_new_alias_replaces_a_cached_unknown_code_everywhere(make_app: MakeApp) -> None:
    writer, reader = await make_app(), await make_app()
    await subscribed(writer, reader)
    assert (await reader.get("/fresh")).status == 404
    headers = await admin_headers(writer)
    await writer.post(
        LINKS, json={"url": "https://example.com/f", "alias": "fresh"}, headers=headers
    )
    await asyncio.sleep(0.1)
    assert (await reader.get("/fresh")).status == 302


async def test_l2_answers_misses_of_l1_and_the_store_is_asked_once(make_app: MakeApp) -> None:
    writer = await make_app()
    headers = await admin_headers(writer)
    link = (
        await writer.post(LINKS, json={"url": "https://example.com/l2"}, headers=headers)
    ).json()
    no_l1 = [await make_app(l1_size=0) for _ in range(2)]
    for app in no_l1:
        for _ in range(3):
            assert (await app.get(f"/{link['code']}")).status == 302
    tiers = [app.app[TIERED] for app in no_l1]
    # The create wrote the link through to L2, so no reader needed the store at all.
    assert sum(tier.store_hits for tier in tiers) == 0
    assert sum(tier.l2.hits for tier in tiers) == 6  # type: ignore[union-attr]


async def test_an_old_answer_never_replaces_a_newer_one_in_l2(
    make_app: MakeApp, redis_url: str
) -> None:
    app = await make_app()
    headers = await admin_headers(app)
    link = (await app.post(LINKS, json={"url": "https://example.com/v1"}, headers=headers)).json()
    before = await app.app[STORE].get_link(link["code"])
    assert before is not None
    await app.patch(
        f"{LINKS}/{link['code']}", json={"url": "https://example.com/v2"}, headers=headers
    )
    # A lookup that read the store before the write finishes late and tries to cache v1.
    l2 = app.app[TIERED].l2
    assert l2 is not None
    await l2.put(link["code"], before.target())
    client = aioredis.Redis.from_url(redis_url)
    try:
        raw = await client.get(KEY_PREFIX + link["code"])
    finally:
        await client.aclose()
    cached = decode(raw)
    assert not isinstance(cached, type(None)) and getattr(cached, "url", None) == (
        "https://example.com/v2"
    )


async def test_redis_killed_redirects_and_writes_go_on(
    make_app: MakeApp, redis_server: RedisServer
) -> None:
    writer, reader = await make_app(), await make_app()
    await subscribed(writer, reader)
    headers = await admin_headers(writer)
    hot = (
        await writer.post(LINKS, json={"url": "https://example.com/hot"}, headers=headers)
    ).json()
    cold = (
        await writer.post(LINKS, json={"url": "https://example.com/cold"}, headers=headers)
    ).json()
    assert (await reader.get(f"/{hot['code']}")).status == 302

    redis_server.kill()
    started = time.monotonic()
    statuses = [(await reader.get(f"/{code}")).status for code in [hot["code"], cold["code"]] * 20]
    elapsed = time.monotonic() - started
    assert statuses == [302] * 40
    # Forty redirects in well under a second: a dead Redis costs no timeouts.
    assert elapsed < 2.0
    created = await writer.post(LINKS, json={"url": "https://example.com/new"}, headers=headers)
    assert created.status == 201
    patched = await writer.patch(
        f"{LINKS}/{hot['code']}", json={"url": "https://example.com/hot2"}, headers=headers
    )
    assert patched.status == 200
    assert (await writer.get(f"/{hot['code']}")).headers["Location"] == "https://example.com/hot2"
    ready = await reader.get("/readyz")
    assert ready.status == 200
    assert ready.json()["dependencies"]["redis"]["status"] == "down"

    redis_server.start()
    flushes_before = reader.app[TIERED].l2.flushes  # type: ignore[union-attr]
    deadline = time.monotonic() + 10
    while reader.app[TIERED].l2.flushes == flushes_before:  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the reader never resubscribed"
        await asyncio.sleep(0.05)
    # The reader flushed its L1 on resubscribing, so the write made during the outage shows.
    assert await location(reader, hot["code"]) == "https://example.com/hot2"
    assert (await reader.get("/readyz")).json()["dependencies"]["redis"]["status"] == "up"
    await writer.patch(
        f"{LINKS}/{hot['code']}", json={"url": "https://example.com/hot3"}, headers=headers
    )
    await asyncio.sleep(0.1)
    assert await location(reader, hot["code"]) == "https://example.com/hot3"


async def test_postgres_down_cached_links_redirect_others_503(
    make_app: MakeApp, postgres_server: PostgresServer
) -> None:
    app = await make_app()
    l1_only = await make_app(l1_size=0)
    headers = await admin_headers(app)
    cached = (await app.post(LINKS, json={"url": "https://example.com/c"}, headers=headers)).json()
    assert (await app.get(f"/{cached['code']}")).status == 302

    postgres_server.kill()
    try:
        assert (await app.get(f"/{cached['code']}")).status == 302  # from L1
        assert (await l1_only.get(f"/{cached['code']}")).status == 302  # from L2
        started = time.monotonic()
        uncached = await app.get("/NotCachedAnywhere")
        assert uncached.status == 503
        assert time.monotonic() - started < 1.5
        assert uncached.headers["Retry-After"] == "1"
        write = await app.post(LINKS, json={"url": "https://example.com/w"}, headers=headers)
        assert write.status == 503 and "Retry-After" in write.headers
        ready = await app.get("/readyz")
        assert ready.status == 200
        assert ready.json()["dependencies"]["store"]["status"] == "down"
    finally:
        postgres_server.start()

    deadline = time.monotonic() + 15
    while (
        await app.post(LINKS, json={"url": "https://example.com/w"}, headers=headers)
    ).status != 201:
        assert time.monotonic() < deadline, "the pool never recovered"
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.5)
    got = await app.get(f"{LINKS}/{cached['code']}", headers=headers)
    # Both clicks counted while the store was down were kept and written when it came back.
    assert got.json()["clicks"] == 3


@pytest.mark.slow
def test_every_worker_of_another_instance_drops_the_old_target_within_100_ms(
    app_instance_factory: Any, postgres_url: str, redis_url: str
) -> None:
    import aiohttp

    from tests.services import keys_create
    from tests.test_serve import shorten

    env = {"SHORTENER_DATABASE_URL": postgres_url, "SHORTENER_REDIS_URL": redis_url}
    writer = app_instance_factory(env, workers=2)
    reader = app_instance_factory(env, workers=2)
    key = keys_create(env)
    link = asyncio.run(shorten(writer.url, key, url="https://example.com/old"))
    target = f"{reader.url}/{link['code']}"

    async def poll(session: aiohttp.ClientSession) -> tuple[float, str]:
        # A new connection each time, so both of the reader's workers answer.
        async with session.get(target, allow_redirects=False) as response:
            return time.monotonic(), response.headers["Location"]

    async def run() -> tuple[float, list[tuple[float, str]]]:
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            warm = await asyncio.gather(*(poll(session) for _ in range(40)))
            assert {location for _, location in warm} == {"https://example.com/old"}
            async with session.patch(
                f"{writer.url}/api/v1/links/{link['code']}",
                json={"url": "https://example.com/new"},
                headers={"Authorization": f"Bearer {key}"},
            ) as response:
                assert response.status == 200
            written_at = time.monotonic()
            answers = []
            while time.monotonic() - written_at < 0.5:
                answers += await asyncio.gather(*(poll(session) for _ in range(4)))
            return written_at, answers

    written_at, answers = asyncio.run(run())
    stale = [at - written_at for at, location in answers if location != "https://example.com/new"]
    assert not stale or max(stale) < 0.1, f"old target served {max(stale):.3f} s after the write"
    assert answers[-1][1] == "https://example.com/new"
