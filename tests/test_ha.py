"""High availability: Redis under Sentinel and PostgreSQL with a standby, their primaries
killed under load, and a primary that turns read-only (503, never a 500) until the pool finds a
writable one again without a restart."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
import redis
from psycopg import sql

from devservices.ha import PgBouncer, PostgresPair, SentinelGroup
from devservices.processes import free_port
from shortener.app import STORE, create_app
from shortener.auth import create_key
from shortener.config import ConfigError, Settings
from shortener.store.postgres import PostgresStore
from tests.contract import ContractClient
from tests.services import PROJECT_ROOT, AppInstanceFactory, PostgresServer, keys_create
from tests.test_api import LINKS


def _set_read_only(database_url: str, read_only: bool) -> None:
    """What a demotion looks like to a client: every session ends, new ones are read-only."""
    dbname = database_url.rsplit("/", 1)[1].split("?")[0]
    with psycopg.connect(database_url.split("?")[0], autocommit=True) as conn:
        conn.execute("SET default_transaction_read_only = off")
        value = sql.Literal("on" if read_only else "off")
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = {}").format(
                sql.Identifier(dbname), value
            )
        )
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.mark.parametrize("session_attrs", ["", "?target_session_attrs=read-write"])
async def test_read_only_primary_answers_503_until_writable_again(
    postgres_url: str, aiohttp_client: Callable[..., Any], session_attrs: str
) -> None:
    database_url = postgres_url + session_attrs
    app = ContractClient(
        await aiohttp_client(
            create_app(Settings(database_url=database_url, base_url="https://sho.rt"))
        )
    )
    _, key = await create_key(app.app[STORE], "ops", admin=True)
    headers = {"Authorization": f"Bearer {key}"}
    cached = (await app.post(LINKS, json={"url": "https://example.com/c"}, headers=headers)).json()
    assert (await app.get(f"/{cached['code']}")).status == 302

    _set_read_only(database_url, True)
    for n in range(5):
        reply = await app.post(LINKS, json={"url": f"https://example.com/{n}"}, headers=headers)
        assert reply.status == 503 and reply.headers["Retry-After"]
        assert (await app.get(f"/{cached['code']}")).status == 302

    _set_read_only(database_url, False)
    # The sessions the pool held were ended, and the store's breaker may still be open:
    # writes answer 503 until its probe finds the primary, then every one succeeds.
    writable_again = time.monotonic()
    statuses: list[int] = []
    while 201 not in statuses:
        assert time.monotonic() - writable_again < 5, statuses
        body = {"url": f"https://example.com/w{len(statuses)}"}
        statuses.append((await app.post(LINKS, json=body, headers=headers)).status)
    for n in range(3):
        body = {"url": f"https://example.com/after{n}"}
        assert (await app.post(LINKS, json=body, headers=headers)).status == 201
    assert set(statuses) <= {201, 503}


# Failovers under load ---------------------------------------------------------------------
#
# Two instances of two gunicorn workers each take a paced load straight (no nginx): redirects
# of links every worker has cached, spread over both instances, and creates. The primary is
# SIGKILLed mid-load; each test prints its failure -> detection -> recovery times, which
# docs/RESILIENCE.md reports.

RATE = 100.0  # requests a second, a tenth of them creates
CONCURRENCY = 10
SEEDED = 40
WARM_UP = 2.0


@dataclass
class Outcome:
    kind: str  # "redirect" or "create"
    started: float  # seconds on the load's clock
    status: int | None  # None: no HTTP answer at all
    retry_after: str | None = None
    code: str = ""


class Load:
    """Redirects of ``codes`` over ``urls`` in turn and, every tenth request, a create; paced
    at RATE a second until ``stop()`` or ``limit`` seconds."""

    def __init__(self, urls: list[str], codes: list[str], key: str, limit: float) -> None:
        self._urls, self._codes, self._limit = urls, codes, limit
        self._auth = {"Authorization": f"Bearer {key}"}
        self._stopped = False
        self.t0 = time.monotonic()
        self.outcomes: list[Outcome] = []

    def now(self) -> float:
        return time.monotonic() - self.t0

    def stop(self) -> None:
        self._stopped = True

    async def run(self) -> None:
        self.t0 = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=10)
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            tasks = []
            n = 0
            while not self._stopped and n / RATE < self._limit:
                await asyncio.sleep(max(0.0, n / RATE - self.now()))
                tasks.append(asyncio.create_task(self._send(session, n)))
                n += 1
            await asyncio.gather(*tasks)

    async def _send(self, session: aiohttp.ClientSession, n: int) -> None:
        url = self._urls[n % len(self._urls)]
        started = self.now()
        try:
            if n % 10 == 9:
                body = {"url": f"https://example.com/load/{n}"}
                async with session.post(f"{url}{LINKS}", json=body, headers=self._auth) as reply:
                    payload = await reply.json(content_type=None)
                    code = payload.get("code", "") if reply.status == 201 else ""
                    outcome = Outcome(
                        "create", started, reply.status, reply.headers.get("Retry-After"), code
                    )
            else:
                code = self._codes[n % len(self._codes)]
                async with session.get(f"{url}/{code}", allow_redirects=False) as reply:
                    await reply.read()
                    outcome = Outcome("redirect", started, reply.status)
        except (aiohttp.ClientError, TimeoutError):
            outcome = Outcome("create" if n % 10 == 9 else "redirect", started, None)
        self.outcomes.append(outcome)

    def of(self, kind: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.kind == kind]


async def _seed(url: str, key: str) -> list[str]:
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        codes = []
        for n in range(SEEDED):
            body = {"url": f"https://example.com/seed/{n}"}
            async with session.post(f"{url}{LINKS}", json=body) as reply:
                assert reply.status == 201, await reply.text()
                codes.append((await reply.json())["code"])
        return codes


async def _warm(urls: list[str], codes: list[str]) -> None:
    """Every code through fresh connections, a few times, so every worker has it in L1."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        for _ in range(3):
            for url in urls:
                for code in codes:
                    async with s.get(f"{url}/{code}", allow_redirects=False) as reply:
                        assert reply.status == 302


async def _change_is_served_within_100_ms(writer: str, reader: str, code: str, key: str) -> bool:
    """PATCHes ``code`` through ``writer``; True if 100 ms after the answer every one of a
    few fresh connections to ``reader`` (landing on either worker) gets the new target."""
    target = f"https://example.com/changed/{uuid.uuid4().hex}"
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        for _ in range(4):  # the old target into both of the reader's workers
            async with s.get(f"{reader}/{code}", allow_redirects=False) as reply:
                await reply.read()
        async with s.patch(
            f"{writer}{LINKS}/{code}", json={"url": target}, headers=headers
        ) as reply:
            if reply.status != 200:
                return False
        await asyncio.sleep(0.1)
        for _ in range(6):
            async with s.get(f"{reader}/{code}", allow_redirects=False) as reply:
                if reply.headers.get("Location") != target:
                    return False
    return True


def _create_counts(server: redis.Redis) -> int:
    """The rate limiter's counts of creates in this minute's windows, summed."""
    return sum(int(server.get(key) or 0) for key in server.scan_iter("shortener:limit:*"))


def _report(name: str, figures: dict[str, float | int]) -> None:
    print(
        f"{name}: "
        + ", ".join(
            f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()
        )
    )


@pytest.mark.slow
async def test_redis_primary_killed_under_load_no_redirect_fails_and_invalidation_returns(
    postgres_url: str, app_instance_factory: AppInstanceFactory, tmp_path: Path
) -> None:
    (tmp_path / "redis").mkdir()
    with SentinelGroup.start(tmp_path / "redis") as group:
        env = {"SHORTENER_DATABASE_URL": postgres_url, "SHORTENER_REDIS_URL": group.url}
        first, second = (app_instance_factory(env, workers=2) for _ in range(2))
        urls = [first.url, second.url]
        key = keys_create(env, "ha", admin=True)
        codes = await _seed(first.url, key)
        await _warm(urls, codes)
        assert await _change_is_served_within_100_ms(first.url, second.url, codes[0], key)

        load = Load(urls, codes[1:], key, limit=40.0)
        running = asyncio.create_task(load.run())
        await asyncio.sleep(WARM_UP)
        old = group.primary_port()
        assert old is not None
        group.server(old).kill()
        killed = load.now()
        while (new := await asyncio.to_thread(group.primary_port)) in (None, old):
            assert load.now() - killed < 30, "the Sentinels never promoted the replica"
            await asyncio.sleep(0.05)
        promoted = load.now()
        with redis.Redis(host="127.0.0.1", port=new) as promoted_server:
            counted_at_promotion = _create_counts(promoted_server)
        changes = 0
        while not await _change_is_served_within_100_ms(first.url, second.url, codes[0], key):
            assert load.now() - promoted < 20, "invalidations never came back after failover"
            await asyncio.sleep(0.2)
        recovered = load.now()
        # Once back, every change is seen by the other instance, either way round.
        for writer, reader in [(first, second), (second, first)] * 2:
            assert await _change_is_served_within_100_ms(writer.url, reader.url, codes[0], key)
            changes += 1
        await asyncio.sleep(1.0)
        load.stop()
        await running
        # The cache and the rate limits both moved to the new primary (one client factory):
        # links created since are in it, and the per-key count of creates went on there.
        with redis.Redis(host="127.0.0.1", port=new) as promoted_server:
            late = [o.code for o in load.of("create") if o.status == 201 and o.started > recovered]
            assert late and all(promoted_server.exists(f"shortener:link:{c}") for c in late)
            assert _create_counts(promoted_server) > counted_at_promotion

    redirects, creates = load.of("redirect"), load.of("create")
    assert new != old and redirects and creates
    assert [o for o in redirects if o.status != 302] == []
    assert [o for o in creates if o.status != 201] == []
    _report(
        "redis failover",
        {
            "requests": len(load.outcomes),
            "detected_s": promoted - killed,
            "invalidation_back_s": recovered - killed,
            "changes_checked": changes,
        },
    )


@pytest.mark.slow
async def test_postgres_primary_killed_and_standby_promoted_loses_no_acknowledged_write(
    redis_url: str, app_instance_factory: AppInstanceFactory, tmp_path: Path
) -> None:
    with PostgresPair.start(tmp_path) as pair:
        pair.primary.create_database("shortener")
        env = {"SHORTENER_DATABASE_URL": pair.url("shortener"), "SHORTENER_REDIS_URL": redis_url}
        first, second = (app_instance_factory(env, workers=2) for _ in range(2))
        urls = [first.url, second.url]
        key = keys_create(env, "ha", admin=True)
        codes = await _seed(first.url, key)
        await _warm(urls, codes)

        load = Load(urls, codes, key, limit=40.0)
        running = asyncio.create_task(load.run())
        await asyncio.sleep(WARM_UP)
        pair.primary.kill()
        killed = load.now()
        await asyncio.sleep(3.0)  # what an operator or Patroni takes to decide, shortened
        await asyncio.to_thread(pair.promote)
        promoted = load.now()
        while not any(o.status == 201 and o.started > promoted for o in load.of("create")):
            assert load.now() - promoted < 10, "no write succeeded within 10 s of the promotion"
            await asyncio.sleep(0.05)
        recovered = min(
            o.started for o in load.of("create") if o.status == 201 and o.started > promoted
        )
        await asyncio.sleep(3.0)
        load.stop()
        await running

        acknowledged = [o.code for o in load.of("create") if o.status == 201]
        with psycopg.connect(
            host=pair.standby.host, port=pair.standby.port, user="postgres", dbname="shortener"
        ) as conn:
            found = {
                row[0]
                for row in conn.execute(
                    "SELECT code FROM links WHERE code = ANY(%s)", [acknowledged]
                )
            }

    redirects, creates = load.of("redirect"), load.of("create")
    assert [o for o in redirects if o.status != 302] == []
    between = [o for o in creates if killed <= o.started < recovered]
    assert between and all(
        o.status == 201 or (o.status == 503 and o.retry_after) for o in between
    ), sorted({(o.status, o.retry_after) for o in between}, key=str)
    after = [o for o in creates if o.started > recovered + 1.0]
    assert after and all(o.status == 201 for o in after)
    assert set(acknowledged) == found
    _report(
        "postgres failover",
        {
            "requests": len(load.outcomes),
            "writes_refused": sum(o.status == 503 for o in creates),
            "promotion_after_kill_s": promoted - killed,
            "writes_back_after_promotion_s": recovered - promoted,
            "acknowledged_creates": len(acknowledged),
        },
    )


# Five times the app's pool of ten and twenty-five times PgBouncer's two server connections, yet
# few enough that each call's one-second budget holds on a slow (traced, shared) machine.
CONCURRENT = 50


async def test_concurrent_requests_through_pgbouncer_sharing_two_server_connections(
    postgres_server: PostgresServer, postgres_url: str, aiohttp_client: Callable[..., Any]
) -> None:
    """Transaction pooling at its tightest: two server connections for a pool of ten. Each of
    asyncpg's prepare-then-execute pairs must stay on one of them (no "unnamed prepared
    statement does not exist", no 500)."""
    bouncer = PgBouncer(free_port(), postgres_server.port, pool_size=2)
    bouncer.start()
    try:
        settings = Settings(
            database_url=bouncer.url(postgres_url.rsplit("/", 1)[1]),
            base_url="https://sho.rt",
            db_transaction_pooling=True,
        )
        app = ContractClient(await aiohttp_client(create_app(settings)))
        _, key = await create_key(app.app[STORE], "ops", admin=True)
        headers = {"Authorization": f"Bearer {key}"}

        async def create_and_read(n: int) -> tuple[int, int]:
            body = {"url": f"https://example.com/{n}", "tags": ["load"]}
            created = await app.post(LINKS, json=body, headers=headers)
            code = created.json()["code"] if created.status == 201 else "none"
            read = await app.get(f"{LINKS}/{code}", headers=headers)
            return created.status, read.status

        results = await asyncio.gather(*(create_and_read(n) for n in range(CONCURRENT)))
        assert set(results) == {(201, 200)}
        listed = await app.get(f"{LINKS}?limit=100&tag=load", headers=headers)
        assert listed.status == 200 and len(listed.json()["items"]) == CONCURRENT
    finally:
        bouncer.close()


def _shortener(database_url: str, *command: str) -> subprocess.CompletedProcess[str]:
    """``python -m shortener *command`` on ``database_url``, without
    SHORTENER_DB_TRANSACTION_POOLING; bounded, since the bug was a start-up retried forever."""
    env = {**os.environ, "SHORTENER_DATABASE_URL": database_url}
    env.pop("SHORTENER_DB_TRANSACTION_POOLING", None)
    return subprocess.run(
        [sys.executable, "-m", "shortener", *command],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _stopped_naming_the_pooling_setting(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "SHORTENER_DB_TRANSACTION_POOLING" in lines[0], lines
    assert result.stdout == ""
    return lines[0]


@pytest.mark.parametrize("command", [["migrate"], ["serve"], ["serve", "--workers", "2"]])
def test_pgbouncer_refusing_statement_timeout_stops_start_up_naming_the_setting(
    pgbouncer_url: str, command: list[str]
) -> None:
    """Debian's pgbouncer refuses the statement_timeout a direct connection sets: before, the
    app took it for an outage and retried start-up forever."""
    if command[0] == "serve":
        command += ["--port", str(free_port())]
    line = _stopped_naming_the_pooling_setting(_shortener(pgbouncer_url, *command))
    assert "statement_timeout" in line


def _one_connection_bouncer(postgres_server: PostgresServer) -> PgBouncer:
    """A started PgBouncer in transaction mode that lets statement_timeout through, with one
    server connection, so every client shares what asyncpg prepared on it."""
    bouncer = PgBouncer(
        free_port(),
        postgres_server.port,
        pool_size=1,
        ignore_startup_parameters=("statement_timeout",),
    )
    bouncer.start()
    return bouncer


def test_prepared_statements_lost_behind_pgbouncer_stop_start_up_naming_the_setting(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    """A PgBouncer that lets statement_timeout through: asyncpg's cache then names prepared
    statements on a server connection the next process shares (one connection here, so the
    next start-up meets the statements the first one left)."""
    bouncer = _one_connection_bouncer(postgres_server)
    try:
        url = bouncer.url(postgres_url.rsplit("/", 1)[1])
        first = _shortener(url, "migrate")
        assert first.returncode == 0, first.stderr
        for command in (["migrate"], ["serve", "--port", str(free_port())]):
            line = _stopped_naming_the_pooling_setting(_shortener(url, *command))
            assert "prepared statement" in line
    finally:
        bouncer.close()


async def test_prepared_statements_lost_at_run_time_name_the_setting(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    """After start-up: the statement asyncpg cached is gone from the one server connection
    (as when PgBouncer hands another client's connection over), and the error names the
    setting instead of passing for a bug of the query."""
    bouncer = _one_connection_bouncer(postgres_server)
    url = bouncer.url(postgres_url.rsplit("/", 1)[1])
    store = PostgresStore(Settings(database_url=url, db_pool_min=1, db_pool_max=1))
    try:
        await store.open()
        await store.ping()
        with psycopg.connect(url, autocommit=True) as other_client:
            other_client.execute("DEALLOCATE ALL")
        with pytest.raises(ConfigError, match=r"SHORTENER_DB_TRANSACTION_POOLING.*does not exist"):
            await store.ping()
    finally:
        await store.close()
        bouncer.close()
