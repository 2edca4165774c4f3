"""L2 in Redis, invalidation across instances, and redirects that outlive Redis or Postgres."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from prometheus_client.mmap_dict import MmapedDict

from devservices.processes import hung
from shortener.app import STORE, TIERED, VISITS, create_app
from shortener.auth import create_key
from shortener.cache.redis import KEY_PREFIX, decode
from shortener.config import Settings
from shortener.errors import StoreUnavailable
from shortener.web.ops import READINESS_INTERVAL
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


async def until(condition: Callable[[], Awaitable[bool]], what: str, limit: float = 5.0) -> None:
    """Awaits ``condition`` until it holds; fails after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not await condition():
        assert time.monotonic() < deadline, f"not within {limit} s: {what}"
        await asyncio.sleep(0.01)


def received(app: ContractClient) -> int:
    """Invalidation messages this app has taken from the channel so far."""
    l2 = app.app[TIERED].l2
    assert l2 is not None
    return l2.invalidations_received


async def location(app: ContractClient, code: str) -> str | int:
    reply = await app.get(f"/{code}")
    return reply.headers.get("Location") or reply.status


async def readiness(app: ContractClient, dependency: str, status: str) -> Any:
    """/readyz once it reports `dependency` as `status`: it answers from probes made in the
    background every second (READINESS_INTERVAL), so a change shows within about that."""
    deadline = time.monotonic() + 3 * READINESS_INTERVAL + 2
    while True:
        ready = await app.get("/readyz")
        if ready.json()["dependencies"][dependency]["status"] == status:
            return ready
        assert time.monotonic() < deadline, f"/readyz never showed {dependency} {status}"
        await asyncio.sleep(0.1)


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
    before = received(reader)
    await writer.delete(f"{LINKS}/{first['code']}", headers=headers)
    await writer.patch(f"{LINKS}/{second['code']}", json={"disabled": True}, headers=headers)

    async def both_heard() -> bool:
        return received(reader) >= before + 2

    await until(both_heard, "the reader hears of both writes")
    assert (await reader.get(f"/{first['code']}")).status == 410
    assert (await reader.get(f"/{second['code']}")).status == 410


async def test_new_alias_replaces_a_cached_unknown_code_everywhere(make_app: MakeApp) -> None:
    writer, reader = await make_app(), await make_app()
    await subscribed(writer, reader)
    assert (await reader.get("/fresh")).status == 404
    headers = await admin_headers(writer)
    before = received(reader)
    await writer.post(
        LINKS, json={"url": "https://example.com/f", "alias": "fresh"}, headers=headers
    )

    async def heard() -> bool:
        return received(reader) > before

    await until(heard, "the reader hears of the new alias")
    assert (await reader.get("/fresh")).status == 302


async def test_batch_create_replaces_cached_unknown_codes_everywhere(make_app: MakeApp) -> None:
    writer, reader = await make_app(), await make_app()
    await subscribed(writer, reader)
    assert (await reader.get("/bulk1")).status == 404
    assert (await reader.get("/bulk2")).status == 404
    headers = await admin_headers(writer)
    links = [{"url": f"https://example.com/{code}", "alias": code} for code in ("bulk1", "bulk2")]
    before = received(reader)
    reply = await writer.post(f"{LINKS}/batch", json={"links": links}, headers=headers)
    assert [result["status"] for result in reply.json()["results"]] == [201, 201]

    async def both_heard() -> bool:
        return received(reader) >= before + 2

    await until(both_heard, "the reader hears of both new aliases")
    assert (await reader.get("/bulk1")).headers["Location"] == "https://example.com/bulk1"
    assert (await reader.get("/bulk2")).headers["Location"] == "https://example.com/bulk2"


async def test_unknown_codes_cost_the_store_nothing_and_new_codes_are_found(
    make_app: MakeApp,
) -> None:
    writer, reader = await make_app(), await make_app()
    await subscribed(writer, reader)
    tiered = reader.app[TIERED]
    assert tiered.known is not None

    async def loaded() -> bool:
        return bool(tiered.known and tiered.known.ready)

    await until(loaded, "the reader loads the codes it knows")
    scanner = {"X-Forwarded-For": "198.18.0.1"}
    before = tiered.store_negatives
    for n in range(20):
        assert (await reader.get(f"/scan{n:03d}x", headers=scanner)).status == 404
    # A false "maybe" of the filter would cost one query; twenty in a row cannot all be.
    assert tiered.store_negatives - before < 3
    assert tiered.known.spared >= 17
    headers = await admin_headers(writer)
    heard_before = received(reader)
    made = await writer.post(
        LINKS, json={"url": "https://example.com/n", "alias": "scan999x"}, headers=headers
    )
    assert made.status == 201

    async def heard() -> bool:
        return received(reader) > heard_before

    # A new code is found once its invalidation arrives, as a changed one is.
    await until(heard, "the reader hears of the new code")
    assert (await reader.get("/scan999x")).status == 302


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
    ready = await readiness(reader, "redis", "down")
    assert ready.status == 200

    redis_server.start()
    flushes_before = reader.app[TIERED].l2.flushes  # type: ignore[union-attr]
    deadline = time.monotonic() + 10
    while reader.app[TIERED].l2.flushes == flushes_before:  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the reader never resubscribed"
        await asyncio.sleep(0.05)
    # The reader flushed its L1 on resubscribing, so the write made during the outage shows.
    assert await location(reader, hot["code"]) == "https://example.com/hot2"
    await readiness(reader, "redis", "up")
    before = received(reader)
    await writer.patch(
        f"{LINKS}/{hot['code']}", json={"url": "https://example.com/hot3"}, headers=headers
    )

    async def heard() -> bool:
        return received(reader) > before

    await until(heard, "the reader hears of the write after Redis returned")
    assert await location(reader, hot["code"]) == "https://example.com/hot3"


async def test_the_first_write_after_redis_restarts_is_published_at_once(
    make_app: MakeApp, redis_server: RedisServer
) -> None:
    writer, reader = await make_app(), await make_app()
    await subscribed(writer, reader)
    headers = await admin_headers(writer)
    link = (await writer.post(LINKS, json={"url": "https://example.com/1"}, headers=headers)).json()
    for app in (writer, reader):  # an L1 entry in each, so that each flushes on re-subscribing
        assert await location(app, link["code"]) == "https://example.com/1"
    l2 = writer.app[TIERED].l2
    assert l2 is not None
    flushes = [app.app[TIERED].l2.flushes for app in (writer, reader)]  # type: ignore[union-attr]

    redis_server.kill()
    redis_server.start()

    async def resubscribed() -> bool:
        now = [app.app[TIERED].l2.flushes for app in (writer, reader)]  # type: ignore[union-attr]
        return all(after > before for after, before in zip(now, flushes, strict=True))

    await until(resubscribed, "both apps subscribe again")
    # The writer's pooled connection died with Redis; its publish must not fail on it.
    errors, heard = l2.errors.get("publish", 0), received(reader)
    await writer.patch(
        f"{LINKS}/{link['code']}", json={"url": "https://example.com/2"}, headers=headers
    )
    assert l2.errors.get("publish", 0) == errors

    async def published() -> bool:
        return received(reader) > heard

    await until(published, "the reader hears of the write")
    assert await location(reader, link["code"]) == "https://example.com/2"


async def test_redis_hung_costs_three_timeouts_then_none(
    make_app: MakeApp, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hung Redis (SIGSTOP: connections accepted, nothing answered) holds every call for
    its whole timeout; the breaker must stop asking it after three."""
    monkeypatch.setattr("shortener.cache.redis._SILENCE_LIMIT", 1.5)
    writer, reader = await make_app(), await make_app(l1_size=0)
    await subscribed(writer, reader)
    headers = await admin_headers(writer)
    link = (
        await writer.post(LINKS, json={"url": "https://example.com/hot"}, headers=headers)
    ).json()
    l2 = reader.app[TIERED].l2
    assert l2 is not None
    assert (await reader.get(f"/{link['code']}")).status == 302  # from L2
    hits = l2.hits

    with hung(redis_server.pid):
        started = time.monotonic()
        statuses = [(await reader.get(f"/{link['code']}")).status for _ in range(40)]
        elapsed = time.monotonic() - started
        assert statuses == [302] * 40  # from the store: L1 is off in this app
        assert l2.breaker.is_open and l2.hits == hits
        # Three calls waited for their timeout and opened the breaker; after that, L2 was
        # skipped but for one trial call a second.
        assert l2.errors["get"] <= 3 + int(elapsed) + 1
        # Forty timeouts would take two seconds.
        assert elapsed < 1.5
        assert not await l2.ping()
        ready = await reader.get("/readyz")
        assert ready.status == 200
        assert ready.json()["dependencies"]["redis"]["status"] == "down"

        # The subscription says nothing: after the silence limit it counts as lost.
        async def lost() -> bool:
            return not l2.subscribed

        await until(lost, "the silent subscription counts as lost")
        patched = await writer.patch(
            f"{LINKS}/{link['code']}", json={"url": "https://example.com/new"}, headers=headers
        )
        assert patched.status == 200

    async def back() -> bool:
        return l2.subscribed and not l2.breaker.is_open

    # Redis answers again: subscribed again, the breaker closed by a trial call, and the
    # write made meanwhile replayed into L2.
    async def new_target() -> bool:
        return await location(reader, link["code"]) == "https://example.com/new" and await back()

    await until(new_target, "the reader is back on Redis with the new target")
    assert l2.hits > hits


async def test_postgres_down_cached_links_redirect_others_503(
    make_app: MakeApp, postgres_server: PostgresServer, redis_url: str
) -> None:
    app = await make_app()
    l1_only = await make_app(l1_size=0)
    headers = await admin_headers(app)
    cached = (await app.post(LINKS, json={"url": "https://example.com/c"}, headers=headers)).json()
    assert (await app.get(f"/{cached['code']}")).status == 302
    # A link in no cache at all: only the store knows it.
    alias = {"url": "https://example.com/u", "alias": "NotCachedAnywhere"}
    assert (await app.post(LINKS, json=alias, headers=headers)).status == 201
    redis = aioredis.Redis.from_url(redis_url)
    await redis.delete(KEY_PREFIX + "NotCachedAnywhere")
    await redis.aclose()

    async def loaded() -> bool:
        known = app.app[TIERED].known
        return bool(known and known.ready)

    await until(loaded, "the app loads the codes it knows")

    postgres_server.kill()
    try:
        assert (await app.get(f"/{cached['code']}")).status == 302  # from L1
        assert (await l1_only.get(f"/{cached['code']}")).status == 302  # from L2
        # A code never stored needs no store: the filter of known codes answers.
        assert (await app.get("/NeverStoredAnywhere")).status == 404
        started = time.monotonic()
        uncached = await app.get("/NotCachedAnywhere")
        assert uncached.status == 503
        assert time.monotonic() - started < 1.5
        assert uncached.headers["Retry-After"] == "1"
        write = await app.post(LINKS, json={"url": "https://example.com/w"}, headers=headers)
        assert write.status == 503 and "Retry-After" in write.headers
        ready = await readiness(app, "store", "down")
        assert ready.status == 200
        # A flush while the store is down fails and keeps every count for the next one.
        for recorder in (app.app[VISITS], l1_only.app[VISITS]):
            held = recorder.clicks_buffered
            assert held > 0
            with pytest.raises(StoreUnavailable):
                await recorder.drain()
            assert recorder.clicks_buffered == held and recorder.clicks_dropped == 0
    finally:
        postgres_server.start()

    async def clicks_written() -> bool:
        got = await app.get(f"{LINKS}/{cached['code']}", headers=headers)
        return got.status == 200 and got.json()["clicks"] == 3

    # The clicks counted before and during the outage (three) were all written once the
    # store came back, by the apps' own background flushes.
    await until(clicks_written, "the clicks kept through the outage are written", limit=15)


async def test_postgres_hung_uncached_redirects_and_writes_get_503_at_once(
    make_app: MakeApp, postgres_server: PostgresServer
) -> None:
    app = await make_app()
    headers = await admin_headers(app)
    cached = (await app.post(LINKS, json={"url": "https://example.com/c"}, headers=headers)).json()
    assert (await app.get(f"/{cached['code']}")).status == 302
    breaker = app.app[STORE].breaker
    assert breaker is not None and not breaker.is_open
    known = app.app[TIERED].known
    assert known is not None
    # Without the filter of known codes, as while the channel is down: every code not in a
    # cache needs the store.
    known.forget()

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
    postgres_url: str, redis_url: str, app_instance_factory: Any, tmp_path: Path
) -> None:
    from tests.services import keys_create
    from tests.test_serve import shorten

    env = {"SHORTENER_DATABASE_URL": postgres_url, "SHORTENER_REDIS_URL": redis_url}
    writer = app_instance_factory(env, workers=2)
    metrics_dir = tmp_path / "reader-metrics"
    metrics_dir.mkdir()
    reader = app_instance_factory({**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}, 2)
    workers = set(reader.worker_pids())
    key = keys_create(env)
    link = asyncio.run(shorten(writer.url, key, url="https://example.com/old"))
    target = f"{reader.url}/{link['code']}"

    async def poll(session: aiohttp.ClientSession) -> tuple[float, str]:
        # A new connection each time, so both of the reader's workers answer.
        async with session.get(target, allow_redirects=False) as response:
            return time.monotonic(), response.headers["Location"]

    async def answered() -> dict[int, int]:
        # Once the workers have published (once a second) what they answered so far.
        await asyncio.sleep(1.2)
        return redirects_per_worker(metrics_dir)

    async def run() -> tuple[float, list[tuple[float, str]]]:
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            # Which worker accepts a connection is the kernel's choice, and one worker may
            # take a whole burst: poll in bursts until each has answered (at most 10).
            for _ in range(10):
                warm = await asyncio.gather(*(poll(session) for _ in range(40)))
                assert {location for _, location in warm} == {"https://example.com/old"}
                before = await answered()
                if {pid for pid, count in before.items() if count} == workers:
                    break
            # Each worker answered, so each holds the old target in its L1.
            assert {pid for pid, count in before.items() if count} == workers, before
            async with session.patch(
                f"{writer.url}/api/v1/links/{link['code']}",
                json={"url": "https://example.com/new"},
                headers={"Authorization": f"Bearer {key}"},
            ) as response:
                assert response.status == 200
            written_at = time.monotonic()
            answers = []
            for _ in range(10):
                started = time.monotonic()
                while time.monotonic() - started < 0.5:
                    answers += await asyncio.gather(*(poll(session) for _ in range(4)))
                after = await answered()
                if {pid for pid in workers if after.get(pid, 0) > before[pid]} == workers:
                    break
            # Each worker answered after the write too, so each was checked.
            assert {pid for pid in workers if after.get(pid, 0) > before[pid]} == workers, after
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


class MixedLoad:
    """Paced requests, each (kind, method, url), round-robin over ``plan`` at about ``rate``
    a second with at most ``concurrency`` in flight, until stopped; every answer is recorded
    as (kind, sent, seconds taken, status, Retry-After) on the monotonic clock."""

    def __init__(
        self, plan: list[tuple[str, str, str]], key: str, rate: float = 150.0, concurrency: int = 8
    ) -> None:
        self._plan = plan
        self._auth = {"Authorization": f"Bearer {key}"}
        self._pause = concurrency / rate
        self._concurrency = concurrency
        self._stopped = False
        self.answers: list[tuple[str, float, float, int, str | None]] = []

    def stop(self) -> None:
        self._stopped = True

    def of(self, kind: str, since: float = 0.0) -> list[tuple[float, float, int, str | None]]:
        return [answer[1:] for answer in self.answers if answer[0] == kind and answer[1] >= since]

    async def run(self, limit: float = 60.0) -> None:
        until = time.monotonic() + limit
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def sender(offset: int) -> None:
                n = offset
                while not self._stopped and time.monotonic() < until:
                    kind, method, url = self._plan[n % len(self._plan)]
                    # A code no tier has seen: the store must be asked.
                    url = url.replace("{fresh}", f"Zz{n:05d}")
                    n += self._concurrency
                    body = {"url": f"https://example.com/load/{n}"} if method == "POST" else None
                    sent = time.monotonic()
                    async with session.request(
                        method, url, json=body, headers=self._auth, allow_redirects=False
                    ) as response:
                        await response.read()
                        taken = time.monotonic() - sent
                        retry_after = response.headers.get("Retry-After")
                        self.answers.append((kind, sent, taken, response.status, retry_after))
                    await asyncio.sleep(self._pause)

            await asyncio.gather(*(sender(n) for n in range(self._concurrency)))


def _two_instances_with_links(
    app_instance_factory: Any, postgres_url: str, redis_url: str, *extra: dict[str, str]
) -> tuple[list[Any], str, list[str]]:
    """Two instances of two workers on one PostgreSQL and Redis (``extra`` adds to each
    one's settings), an admin key, and 20 links followed through both instances until every
    worker holds them in L1 and Redis has them. Unknown codes are not rate-limited."""
    from tests.services import keys_create
    from tests.test_serve import shorten

    env = {
        "SHORTENER_DATABASE_URL": postgres_url,
        "SHORTENER_REDIS_URL": redis_url,
        "SHORTENER_NOT_FOUND_PER_MINUTE": "1000000",
    }
    instances = [app_instance_factory({**env, **more}, workers=2) for more in extra]
    key = keys_create(env, "ops", admin=True)

    async def links() -> list[str]:
        made = [
            await shorten(instances[0].url, key, url=f"https://example.com/{n}") for n in range(20)
        ]
        return [link["code"] for link in made]

    cached = asyncio.run(links())

    async def warm() -> None:
        # A fresh connection each, so that every worker sees them.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            for instance in instances:
                for _ in range(6):
                    for code in cached:
                        url = f"{instance.url}/{code}"
                        async with session.get(url, allow_redirects=False) as response:
                            assert response.status == 302

    asyncio.run(warm())
    return instances, key, cached


def _figures(name: str, **figures: Any) -> None:
    """One line per run for docs/RESILIENCE.md (visible with ``-rP``)."""
    print(f"FIGURES {name} {json.dumps(figures)}")


def _plan(instances: list[Any], cached: list[str]) -> list[tuple[str, str, str]]:
    """Through both instances in turn: half redirects of cached links, a quarter redirects
    of codes no tier has seen (each a new one), a quarter creates."""
    plan = []
    for n in range(40):
        instance = instances[n % 2].url
        plan += [
            ("cached", "GET", f"{instance}/{cached[n % len(cached)]}"),
            ("uncached", "GET", f"{instance}/{{fresh}}"),
            ("cached", "GET", f"{instance}/{cached[(n + 7) % len(cached)]}"),
            ("create", "POST", f"{instance}/api/v1/links"),
        ]
    return plan


@pytest.mark.slow
def test_postgres_hung_under_traffic_uncached_answers_503_at_once(
    postgres_url: str,
    redis_url: str,
    postgres_server: PostgresServer,
    app_instance_factory: Any,
) -> None:
    """Every PostgreSQL process SIGSTOPped for 4 s under traffic through two instances of
    two workers: cached links redirect, creates get 503 with Retry-After, after the first
    few in well under the contract's second, and never-stored codes 404 without the store."""
    instances, key, cached = _two_instances_with_links(
        app_instance_factory, postgres_url, redis_url, {}, {}
    )
    plan = _plan(instances, cached)

    async def run() -> tuple[MixedLoad, float, float]:
        load = MixedLoad(plan, key)
        running = asyncio.create_task(load.run())
        await asyncio.sleep(1.0)
        with hung(postgres_server.pid):
            stopped_at = time.monotonic()
            await asyncio.sleep(4.0)
        resumed_at = time.monotonic()
        await asyncio.sleep(3.0)
        load.stop()
        await running
        return load, stopped_at, resumed_at

    load, stopped_at, resumed_at = asyncio.run(run())
    during = [a for a in load.answers if stopped_at <= a[1] and a[1] + a[2] <= resumed_at]
    refused = [a for a in during if a[0] != "cached"]
    settled = sorted(a[2] for a in refused if a[1] >= stopped_at + 1.5)
    _figures(
        "postgres_hung",
        cached_during=sum(a[0] == "cached" for a in during),
        cached_failed=sum(a[0] == "cached" and a[3] != 302 for a in during),
        refused=len(refused),
        refused_max_ms=round(max((a[2] for a in refused), default=0) * 1000),
        settled=len(settled),
        settled_p99_ms=round(settled[int(len(settled) * 0.99)] * 1000, 1) if settled else None,
    )
    assert [a for a in during if a[0] == "cached" and a[3] != 302] == []
    # Creates need the store: 503. A code no worker ever stored needs none: the filter of
    # known codes answers 404 (a 503 only while a worker's filter is not loaded).
    creates = {(a[3], a[4]) for a in refused if a[0] == "create"}
    fresh = {a[3] for a in refused if a[0] == "uncached"}
    assert creates == {(503, "1")} and fresh <= {404, 503}
    # The first calls of each worker wait for their timeout; none waits longer than the
    # 1 s contract (and a little for the client), and each worker's breaker opens after
    # three: from then on it refuses at once.
    assert max(a[2] for a in refused) < 1.2
    assert len(settled) >= 50
    workers = sum(len(instance.worker_pids()) for instance in instances)
    assert sum(taken >= 0.1 for taken in settled) <= 3 * workers, settled[-10:]
    # After the store answers again (the probes close the breakers), everything works.
    late = [a for a in load.answers if a[1] >= resumed_at + 1.5]
    assert late and {(a[0], a[3]) for a in late} == {
        ("cached", 302),
        ("uncached", 404),
        ("create", 201),
    }


@pytest.mark.slow
def test_redis_hung_under_traffic_no_redirect_fails(
    postgres_url: str,
    redis_url: str,
    redis_server: RedisServer,
    app_instance_factory: Any,
) -> None:
    """Redis SIGSTOPped for 4 s under traffic through two instances of two workers: not one
    redirect fails, creates go on, and the breakers keep every call from waiting long."""
    # The second instance has no L1: every one of its redirects asks Redis first.
    instances, key, cached = _two_instances_with_links(
        app_instance_factory, postgres_url, redis_url, {}, {"SHORTENER_L1_SIZE": "0"}
    )
    plan = _plan(instances, cached)

    async def run() -> tuple[MixedLoad, float, float]:
        load = MixedLoad(plan, key)
        running = asyncio.create_task(load.run())
        await asyncio.sleep(1.0)
        with hung(redis_server.pid):
            stopped_at = time.monotonic()
            await asyncio.sleep(4.0)
        resumed_at = time.monotonic()
        await asyncio.sleep(2.0)
        load.stop()
        await running
        return load, stopped_at, resumed_at

    load, stopped_at, resumed_at = asyncio.run(run())
    expected = {"cached": 302, "uncached": 404, "create": 201}
    failed = [a for a in load.answers if a[3] != expected[a[0]]]
    assert failed == []
    during = [a for a in load.answers if stopped_at <= a[1] and a[1] + a[2] <= resumed_at]
    taken = sorted(a[2] for a in during)
    _figures(
        "redis_hung",
        requests=len(load.answers),
        failed=len(failed),
        during=len(during),
        during_p99_ms=round(taken[int(len(taken) * 0.99)] * 1000, 1),
        during_max_ms=round(taken[-1] * 1000, 1),
    )
    assert len([a for a in during if a[0] != "create"]) >= 100
    # A hung Redis costs a call its 50 ms timeout until the breaker opens; nothing waits
    # for long.
    assert max(a[2] for a in during) < 0.5, sorted(a[2] for a in during)[-10:]


async def test_a_read_only_primary_does_not_open_the_store_breaker(postgres_url: str) -> None:
    """A server that answers at once that it takes no writes (a demoted primary) is not a
    hung one: writes get 503, and reads, which it still answers, go on."""
    import psycopg
    from psycopg import sql

    from shortener.store.postgres import PostgresStore

    settings = Settings(database_url=postgres_url)
    writable = PostgresStore(settings)
    await writable.open()
    await writable.migrate()
    await writable.close()
    dbname = postgres_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(
                sql.Identifier(dbname)
            )
        )
    store = PostgresStore(settings)
    await store.open()
    try:
        for n in range(5):
            with pytest.raises(StoreUnavailable):
                await store.insert_key(f"key{n}", f"hash{n}", False, datetime.now(UTC))
        assert store.breaker is not None and not store.breaker.is_open
        assert await store.list_keys() == []
    finally:
        await store.close()
