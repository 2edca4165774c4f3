"""Managing many links: search and tag filters at 1,000,000 links, batch against single creates.

On 127.0.0.1 only, in a private temporary folder, it starts a PostgreSQL 15 cluster of its
own (fsync off) and uses a private SQLite file. Each store gets the schema from the app's
migrations and 1,000,000 links spread over 10 keys (urls on 5,000 hosts with a random path,
a title on every third link, tags from a small vocabulary), loaded in one statement with the
search indexes built afterwards, as a bulk load would, then ANALYZE. Each listing (one page
of 20 through the store's `list_links`, as `GET /api/v1/links` asks for it) is run
`--repeat` times; the table gives the median and the slowest.

Each measured part (the listings of each store, the creates) starts once the 1-minute load
average has fallen under 1.0 (waiting up to `--quiet-wait` seconds, since the seeding itself
loads the machine), and the section reports the load average each part started at.

Then `python -m shortener serve` on a fresh PostgreSQL database (per-key limit raised)
takes `--links` creates as single POSTs (16 at a time) and as batches of 1,000
(one at a time), and the table gives links per second for each.

The table is printed and written as the section "## Managing many links" of
docs/BENCHMARKS.md. Every process it starts is stopped on success, error or Ctrl-C.

    python bench/links.py [--rows N] [--repeat R] [--links N] [--quiet-wait S]
                          [--out docs/BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # devservices, in the checkout

from metrics_cost import write_section
from redirect import QUIET_LOAD, wait_for_quiet

from devservices.app import AppInstanceFactory, keys_create
from devservices.postgres import PostgresServer
from shortener.config import Settings
from shortener.links.model import LinkFilter
from shortener.store import Store, make_store

SECTION = "## Managing many links"
ROOT = Path(__file__).resolve().parents[1]
KEYS = 10

_PG_SEED = """
INSERT INTO api_keys (name, key_hash, created_at)
    SELECT 'bench' || k, 'hash' || k, now() FROM generate_series(1, {keys}) AS k;
DROP INDEX links_search_trgm;
DROP INDEX links_tags;
DROP INDEX links_owner_newest;
INSERT INTO links (code, url, owner_id, created_at, updated_at, title, title_folded, tags)
    SELECT 'c' || i, 'https://www.host' || (i % 5000) || '.example.com/articles/'
                || md5(i::text) || '?ref=' || (i % 7),
           1 + i % {keys}, now(), now(),
           CASE WHEN i % 3 = 0 THEN 'Article ' || i || ' about '
                || (ARRAY['cats', 'dogs', 'rust', 'python', 'maps'])[1 + i % 5] END,
           CASE WHEN i % 3 = 0 THEN 'article ' || i || ' about '
                || (ARRAY['cats', 'dogs', 'rust', 'python', 'maps'])[1 + i % 5] END,
           CASE WHEN i % 1000 = 0 THEN ARRAY['news', 'rare']
                WHEN i % 10 = 0 THEN ARRAY['news']
                ELSE ARRAY[(ARRAY['blog', 'shop', 'docs'])[1 + i % 3]] END
    FROM generate_series(1, {rows}) AS i;
CREATE INDEX links_owner_newest ON links (owner_id, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX links_search_trgm ON links
    USING gin ((lower(code || E'\\n' || url) || E'\\n' || coalesce(title_folded, ''))
               gin_trgm_ops)
    WHERE deleted_at IS NULL;
CREATE INDEX links_tags ON links USING gin (tags) WHERE deleted_at IS NULL;
ANALYZE links;
"""

_SQLITE_SEED = """
INSERT INTO api_keys (name, key_hash, created_at)
    WITH RECURSIVE k(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM k WHERE n < {keys})
    SELECT 'bench' || n, 'hash' || n, unixepoch() FROM k;
DROP INDEX links_owner_newest;
INSERT INTO links (code, url, owner_id, created_at, updated_at, title, title_folded, tags)
    WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {rows})
    SELECT 'c' || i, 'https://www.host' || (i % 5000) || '.example.com/articles/'
                || printf('%08x%08x', (i * 2654435761) % 4294967296, (i * 40503) % 4294967296)
                || '?ref=' || (i % 7),
           1 + i % {keys}, unixepoch(), unixepoch(),
           CASE WHEN i % 3 = 0 THEN 'Article ' || i || ' about '
                || json_extract('["cats","dogs","rust","python","maps"]', '$[' || (i % 5) || ']')
                END,
           CASE WHEN i % 3 = 0 THEN 'article ' || i || ' about '
                || json_extract('["cats","dogs","rust","python","maps"]', '$[' || (i % 5) || ']')
                END,
           CASE WHEN i % 1000 = 0 THEN '["news","rare"]'
                WHEN i % 10 = 0 THEN '["news"]'
                ELSE json_array(json_extract('["blog","shop","docs"]', '$[' || (i % 3) || ']'))
                END
    FROM s;
CREATE INDEX links_owner_newest ON links (owner_id, id DESC) WHERE deleted_at IS NULL;
ANALYZE;
"""

READING = """Reading: on PostgreSQL every listing but one answers in tens of milliseconds at
1,000,000 links: a common text fills the page from the newest 5,000 links of the listing, a
rare one comes from the `pg_trgm` index, tags from their GIN index. The exception is a text
without a word of three letters or digits (`zq`), which the trigram index cannot look up:
it is a scan of the listing, quick when the text is common and slow when it
is rare (about half a second here). SQLite has no substring index: a text that matches few
links is a scan of the listing (0.1 to 0.6 s at 1,000,000 links; the embedded store is meant
for far fewer),
while common texts and tag filters stay fast. Batch creates write 1,000 links in one
statement and one Redis pipeline; the single creates here are each a request, a rate-limit
count, a policy check and an insert."""

# (label, owner or None for an admin key, filter)
QUERIES: list[tuple[str, int | None, LinkFilter]] = [
    ("no filter, one key", 1, LinkFilter()),
    ("q matching most links (`example`), admin", None, LinkFilter(text="example")),
    ("q in titles (`cats`), one key", 1, LinkFilter(text="cats")),
    ("q matching one url (`c4ca4238a0` / `9e3779b1`), admin", None, LinkFilter(text="")),
    ("q matching nothing (`zqxjk`), admin", None, LinkFilter(text="zqxjk")),
    ("q of two letters (`zq`), one key", 1, LinkFilter(text="zq")),
    ("tag `news` (10%), one key", 1, LinkFilter(tags=("news",))),
    ("tags `news` + `rare` (0.1%), admin", None, LinkFilter(tags=("news", "rare"))),
    ("tag `rare` + q `host7.`, admin", None, LinkFilter(text="host7.", tags=("rare",))),
]
# The one url each store's seed makes for i = 1: md5('1') on PostgreSQL, printf on SQLite.
ONE_URL = {"postgres": "c4ca4238a0", "sqlite": "9e3779b1"}


async def seed(store: Store, kind: str, rows: int, settings: Settings, pg: str | None) -> float:
    started = time.perf_counter()
    if kind == "postgres":
        import asyncpg

        assert pg is not None
        conn = await asyncpg.connect(pg)
        try:
            await conn.execute(_PG_SEED.format(keys=KEYS, rows=rows))
        finally:
            await conn.close()
    else:
        import sqlite3

        with sqlite3.connect(settings.sqlite_path) as db:
            db.executescript(_SQLITE_SEED.format(keys=KEYS, rows=rows))
    return time.perf_counter() - started


async def timed(run: Callable[[], Awaitable[object]], repeat: int) -> tuple[float, float]:
    await run()  # warm the cache and the plan
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        await run()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), max(samples)


async def search_figures(
    kind: str, url: str, rows: int, repeat: int, quiet_wait: float
) -> tuple[float, float, list[tuple[str, int, float, float]]]:
    """Seeds the store, waits for a quiet machine, then times each listing; returns the
    seconds the seeding took, the load average the listings started at, and the figures."""
    settings = Settings(database_url=url, db_statement_timeout=60.0, db_connect_timeout=10.0)
    store = make_store(settings)
    await store.open()
    try:
        await store.migrate()
        seeded = await seed(store, kind, rows, settings, url if kind == "postgres" else None)
        load = wait_for_quiet(quiet_wait)
        figures = []
        for label, owner, where in QUERIES:
            if where.text == "":
                where = LinkFilter(text=ONE_URL[kind])
            found = len(await store.list_links(owner, None, 21, where))

            async def page(owner: int | None = owner, where: LinkFilter = where) -> object:
                return await store.list_links(owner, None, 21, where)

            median, slowest = await timed(page, repeat)
            figures.append((label, found, median, slowest))
        return seeded, load, figures
    finally:
        await store.close()


async def create_figures(base: str, key: str, links: int) -> tuple[float, float]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(base, headers=headers) as session:
        queue = iter(range(links))

        async def worker() -> None:
            for i in queue:
                async with session.post(
                    "/api/v1/links", json={"url": f"https://example.com/s/{i}"}
                ) as reply:
                    assert reply.status == 201, await reply.text()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(16)))
        single = links / (time.perf_counter() - started)

        started = time.perf_counter()
        for start in range(0, links, 1000):
            body = {
                "links": [
                    {"url": f"https://example.com/b/{i}"}
                    for i in range(start, min(links, start + 1000))
                ]
            }
            async with session.post("/api/v1/links/batch", json=body) as reply:
                results = (await reply.json())["results"]
                assert {result["status"] for result in results} == {201}
        batch = links / (time.perf_counter() - started)
    return single, batch


def section(
    command: str,
    rows: int,
    seeded: dict[str, float],
    loads: dict[str, float],
    searches: dict[str, list[tuple[str, int, float, float]]],
    creates: tuple[float, float],
    links: int,
) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_avg = os.getloadavg()
    lines = [
        SECTION,
        f"Command: `{command}`  \nDate: {when}  \n"
        f"Load average (1 min) each measured part started at: PostgreSQL listings "
        f"{loads['postgres']:.2f}, SQLite listings {loads['sqlite']:.2f}, creates "
        f"{loads['creates']:.2f}; when it finished (1, 5, 15 min): "
        f"{load_avg[0]:.2f}, {load_avg[1]:.2f}, {load_avg[2]:.2f} on {os.cpu_count()} cores"
        + (
            " — **indicative only: the machine was busy**"
            if max(loads.values()) >= QUIET_LOAD
            else ""
        )
        + ".",
        f"Setup: {rows:,} links over {KEYS} keys; one page of 20 (21 asked, to know whether "
        "a next page exists) through the store, as the listing endpoint asks for it; "
        f"seeded in {seeded['postgres']:.0f} s (PostgreSQL, indexes built after the load) and "
        f"{seeded['sqlite']:.0f} s (SQLite).",
        "",
        "| listing | PostgreSQL found | median ms | slowest ms | SQLite found | median ms "
        "| slowest ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for pg, lite in zip(searches["postgres"], searches["sqlite"], strict=True):
        lines.append(
            f"| {pg[0]} | {pg[1]} | {pg[2]:.1f} | {pg[3]:.1f} | {lite[1]} | {lite[2]:.1f} "
            f"| {lite[3]:.1f} |"
        )
    single, batch = creates
    lines += [
        "",
        f"Creates through the API on PostgreSQL, {links:,} links each way, one worker process:",
        "",
        "| how | links/s |",
        "| --- | ---: |",
        f"| single `POST /api/v1/links`, 16 at a time | {single:,.0f} |",
        f"| `POST /api/v1/links/batch` of 1,000, one at a time | {batch:,.0f} |",
        f"| ratio | {batch / single:.1f}x |",
        "",
        READING,
    ]
    return "\n".join(lines)


async def main_async(options: argparse.Namespace, folder: Path) -> str:
    server = PostgresServer.create(folder)
    factory = AppInstanceFactory(folder)
    try:
        server.start()
        server.create_database("search")
        server.create_database("creates")
        seeded: dict[str, float] = {}
        loads: dict[str, float] = {}
        searches = {}
        for kind, url in (
            ("postgres", server.url("search")),
            ("sqlite", f"sqlite:///{folder / 'search.db'}"),
        ):
            seeded[kind], loads[kind], searches[kind] = await search_figures(
                kind, url, options.rows, options.repeat, options.quiet_wait
            )
            print(kind, seeded[kind], loads[kind], searches[kind], flush=True)
        env = {
            "SHORTENER_DATABASE_URL": server.url("creates"),
            "SHORTENER_CREATES_PER_KEY_PER_MINUTE": "10000000",
        }
        instance = factory(env)
        loads["creates"] = wait_for_quiet(options.quiet_wait)
        creates = await create_figures(instance.url, keys_create(env), options.links)
        command = "python bench/links.py " + " ".join(sys.argv[1:])
        return section(
            command.strip(), options.rows, seeded, loads, searches, creates, options.links
        )
    finally:
        factory.close()
        server.close()
        shutil.rmtree(server.base_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--links", type=int, default=5000)
    parser.add_argument("--quiet-wait", type=float, default=900.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "BENCHMARKS.md")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-links-") as folder:
        text = asyncio.run(main_async(options, Path(folder)))
    print(text)
    write_section(options.out, text, SECTION)


if __name__ == "__main__":
    main()
