"""L2 in Redis, invalidation across instances, and redirects that outlive Redis or Postgres."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from prometheus_client.mmap_dict import MmapedDict

from devservices.processes import hung
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


async def test_batch_create_replaces_cached_unknown_codes_everywhere(make_app: MakeApp) -> None:
    writer, reader = await make_app(), await make_app()
    await subscribed(writer, reader)
    assert (await reader.get("/bulk1")).status == 404
    assert (await reader.get("/bulk2")).status == 404
    headers = await admin_headers(writer)
    links = [{"url": f"https://example.com/{code}", "alias": code} for code in ("bulk1", "bulk2")]
    reply = await writer.post(f"{LINKS}/batch", json={"links": links}, headers=headers)
    assert [result["status"] for result in reply.json()["results"]] == [201, 201]
    await asyncio.sleep(0.1)
    assert (await reader.get("/bulk1")).headers["Location"] == "https://example.com/bulk1"
    assert (await reader.get("/bulk2")).headers["Location"] == "https://example.com/bulk2"


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


async def test_postgres_hung_uncached_redirects_and_writes_get_503_at_once(
    make_app: MakeApp, postgres_server: PostgresServer
) -> None:
    app = await make_app()
    headers = await admin_headers(app)
    cached = (await app.post(LINKS, json={"url": "https://example.com/c"}, headers=headers)).json()
    assert (await app.get(f"/{cached['code']}")).status == 302
    breaker = app.app[STORE].breaker
    assert breaker is not None and not breaker.is_open

    with hung(postgres_server.pid):
        # The first calls wait for their timeout (each at most the statement timeout, 1 s,
        # in all) and open the breaker; from then on nothing waits for the store.
        for n in range(3):
            started = time.monotonic()
            reply = await app.get(f"/Uncached{n}")
            assert reply.status == 503 and reply.headers["Retry-After"] == "1"
            assert time.monotonic() - started < 1.5
        assert breaker.is_open
        rejected = breaker.rejected
        started = time.monotonic()
        for n in range(20):
            reply = await app.get(f"/AlsoUncached{n}")
            assert reply.status == 503 and reply.headers["Retry-After"] == "1"
        write = await app.post(LINKS, json={"url": "https://example.com/w"}, headers=headers)
        assert write.status == 503 and write.headers["Retry-After"] == "1"
        elapsed = time.monotonic() - started
        # Each of them was refused by the breaker without asking the store.
        assert breaker.rejected - rejected >= 21
        assert elapsed < 1.0
        assert (await app.get(f"/{cached['code']}")).status == 302  # from L1
        ready = await app.get("/readyz")
        assert ready.status == 200
        assert ready.json()["dependencies"]["store"]["status"] == "down"

    # The background probe finds the store answering again and closes the breaker.
    deadline = time.monotonic() + 10
    while breaker.is_open:
        assert time.monotonic() < deadline, "the breaker never closed"
        await asyncio.sleep(0.05)
    assert (await app.get("/Uncached0")).status == 404
    created = await app.post(LINKS, json={"url": "https://example.com/w"}, headers=headers)
    assert created.status == 201


@pytest.mark.slow
def test_every_worker_of_another_instance_drops_the_old_target_within_100_ms(
    app_instance_factory: Any, postgres_url: str, redis_url: str
) -> None:
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


def redirects_per_worker(metrics_dir: Path) -> dict[int, int]:
    """Redirects each worker of an instance has answered, read from that worker's own metric
    file (the app publishes its latencies there once a second)."""
    counts = {}
    for path in metrics_dir.glob("histogram_*.db"):
        total = 0.0
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
            sample, labels = json.loads(key)[1:3]
            if sample.endswith("_bucket") and labels.get("route") == "/{code}":
                total += value
        counts[int(path.stem.removeprefix("histogram_"))] = int(total)
    return counts


class RedirectLoad:
    """Redirects of one code on a fresh connection each (so every worker answers), about
    ``rate`` a second until stopped or ``limit`` seconds are over, each recorded as
    (sent, answered, Location) on the monotonic clock."""

    def __init__(self, url: str, rate: float = 100.0, concurrency: int = 4) -> None:
        self._url = url
        self._pause = concurrency / rate
        self._concurrency = concurrency
        self._stopped = False
        self.answers: list[tuple[float, float, str]] = []

    def stop(self) -> None:
        self._stopped = True

    async def run(self, limit: float = 30.0) -> None:
        until = time.monotonic() + limit
        connector = aiohttp.TCPConnector(force_close=True)
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def poll() -> None:
                while not self._stopped and time.monotonic() < until:
                    sent = time.monotonic()
                    async with session.get(self._url, allow_redirects=False) as response:
                        location = response.headers.get("Location", str(response.status))
                    self.answers.append((sent, time.monotonic(), location))
                    await asyncio.sleep(self._pause)

            await asyncio.gather(*(poll() for _ in range(self._concurrency)))


@pytest.mark.slow
def test_a_change_right_after_redis_returns_reaches_every_worker_within_100_ms(
    postgres_url: str,
    redis_url: str,
    redis_server: RedisServer,
    app_instance_factory: Any,
    tmp_path: Path,
) -> None:
    """Redis dies for 4 s under redirect load; 3 s after it is back, a change through the
    other instance must reach both workers of the loaded one within 100 ms, 10 times in 10."""
    from tests.services import keys_create
    from tests.test_serve import shorten

    env = {"SHORTENER_DATABASE_URL": postgres_url, "SHORTENER_REDIS_URL": redis_url}
    writer = app_instance_factory(env, workers=2)
    metrics_dir = tmp_path / "reader-metrics"
    metrics_dir.mkdir()
    reader = app_instance_factory({**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}, 2)
    key = keys_create(env)
    code = asyncio.run(shorten(writer.url, key, url="https://example.com/0"))["code"]

    async def patch(url: str) -> float:
        async with (
            aiohttp.ClientSession() as session,
            session.patch(
                f"{writer.url}/api/v1/links/{code}",
                json={"url": url},
                headers={"Authorization": f"Bearer {key}"},
            ) as response,
        ):
            assert response.status == 200, await response.text()
        return time.monotonic()

    async def round_trip(n: int) -> tuple[list[str], dict[int, int]]:
        load = RedirectLoad(f"{reader.url}/{code}")
        running = asyncio.create_task(load.run())
        await asyncio.sleep(0.5)
        await asyncio.to_thread(redis_server.kill)
        await asyncio.sleep(4)
        await asyncio.to_thread(redis_server.start)
        await asyncio.sleep(3)
        new = f"https://example.com/{n}"
        written_at = await patch(new)
        await asyncio.sleep(1.2)
        # Everything a worker answered up to at least 100 ms after the write is published.
        before = redirects_per_worker(metrics_dir)
        await asyncio.sleep(0.5)
        load.stop()
        await running
        await asyncio.sleep(1.2)
        after = redirects_per_worker(metrics_dir)
        late = [
            f"{sent - written_at:.3f} s: {location}"
            for sent, _, location in load.answers
            if sent >= written_at + 0.1 and location != new
        ]
        assert load.answers[-1][2] == new
        return late, {pid: after[pid] - before.get(pid, 0) for pid in after}

    for n in range(1, 11):
        late, answered = asyncio.run(round_trip(n))
        assert not late, f"round {n}: old answers sent after the write: {late[:5]}"
        workers = set(reader.worker_pids())
        assert {pid for pid, count in answered.items() if count > 0} >= workers, (
            f"round {n}: not every worker answered after the write: {answered}"
        )
