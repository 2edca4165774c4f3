"""Visit analytics: what counts, how it is classified, the stats API, and what is never kept."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from ipaddress import ip_network
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg
import pytest
import redis.asyncio as aioredis
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from shortener.app import STORE, VISITS, create_app
from shortener.auth import create_key
from shortener.config import ConfigError, Settings
from shortener.errors import StoreUnavailable
from shortener.store import make_store
from shortener.visits.classify import Classifier, referrer_host
from shortener.visits.recorder import VisitRecorder
from tests.conftest import Keys
from tests.contract import ContractClient
from tests.services import PostgresServer
from tests.test_api import LINKS, create

CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1"
)
SAFARI_IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1"
)
CHROME_ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Mobile Safari/537.36"
)
GALAXY_TAB = (
    "Mozilla/5.0 (Linux; Android 14; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
CURL = "curl/8.5.0"

# (User-Agent or None for none at all, Referer or None, times)
MIX: list[tuple[str | None, str | None, int]] = [
    (CHROME_WINDOWS, "https://www.Google.com/search?q=private+words", 3),
    (SAFARI_IPHONE, "https://t.co/AbCdEf", 2),
    (SAFARI_IPAD, None, 1),
    (CHROME_ANDROID, "android-app://com.slack/", 1),
    (FIREFOX_LINUX, "https://news.ycombinator.com/item?id=1", 1),
    (GOOGLEBOT, None, 2),
    (CURL, "https://example.org/", 1),
    (None, None, 1),
]


def stats_path(code: str, **query: str) -> str:
    return f"{LINKS}/{code}/stats" + (f"?{urlencode(query)}" if query else "")


async def visit(
    client: ContractClient,
    code: str,
    user_agent: str | None,
    referer: str | None = None,
    method: str = "GET",
    **headers: str,
) -> int:
    sent = dict(headers)
    if referer is not None:
        sent["Referer"] = referer
    if user_agent is not None:
        sent["User-Agent"] = user_agent
    skip = () if user_agent is not None else ("User-Agent",)
    reply = await client.request(method, f"/{code}", headers=sent, skip_auto_headers=skip)
    return reply.status


async def written(client: ContractClient) -> None:
    """What the background loop does every second, now."""
    await client.app[VISITS].drain()


def hour_range() -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "from": (now - timedelta(hours=2)).isoformat(),
        "to": (now + timedelta(hours=1)).isoformat(),
        "interval": "hour",
    }


async def test_a_fixed_mix_gives_exact_totals_series_and_breakdowns(
    client: ContractClient, keys: Keys
) -> None:
    link = await create(client, keys.alice, url="https://example.com/mix")
    code = link["code"]
    for user_agent, referer, times in MIX:
        for _ in range(times):
            assert await visit(client, code, user_agent, referer) == 302
    # None of these counts: HEAD, unknown codes, a deleted link's 410.
    assert await visit(client, code, CHROME_WINDOWS, method="HEAD") == 302
    assert await visit(client, "NoSuchCode", CHROME_WINDOWS) == 404
    gone = await create(client, keys.alice, url="https://example.com/gone")
    await client.delete(f"{LINKS}/{gone['code']}", headers=keys.of(keys.alice))
    assert await visit(client, gone["code"], CHROME_WINDOWS) == 410
    await written(client)

    reply = await client.get(stats_path(code, **hour_range()), headers=keys.of(keys.alice))
    assert reply.status == 200
    stats = reply.json()
    assert stats["code"] == code and stats["interval"] == "hour"
    assert (stats["visits"], stats["bots"]) == (8, 4)
    assert len(stats["series"]) in (3, 4)  # the range's hours, partial ones at both ends
    assert [bucket["start"][14:] for bucket in stats["series"]] == ["00:00Z"] * len(stats["series"])
    busy = [bucket for bucket in stats["series"] if bucket["visits"] or bucket["bots"]]
    assert len(busy) in (1, 2)  # two only if the mix ran across the turn of an hour
    assert sum(bucket["visits"] for bucket in busy) == 8
    assert sum(bucket["bots"] for bucket in busy) == 4
    assert stats["referrers"] == [
        {"value": "www.google.com", "visits": 3},
        {"value": "(direct)", "visits": 2},
        {"value": "t.co", "visits": 2},
        {"value": "news.ycombinator.com", "visits": 1},
    ]
    assert stats["countries"] == [{"value": "(unknown)", "visits": 8}]
    assert stats["browsers"] == [
        {"value": "Chrome", "visits": 3},
        {"value": "Mobile Safari", "visits": 3},
        {"value": "Chrome Mobile", "visits": 1},
        {"value": "Firefox", "visits": 1},
    ]
    assert stats["os"] == [
        {"value": "Windows", "visits": 3},
        {"value": "iOS", "visits": 3},
        {"value": "Android", "visits": 1},
        {"value": "Linux", "visits": 1},
    ]
    assert stats["devices"] == [
        {"value": "desktop", "visits": 4},
        {"value": "mobile", "visits": 3},
        {"value": "tablet", "visits": 1},
    ]
    got = await client.get(f"{LINKS}/{code}", headers=keys.of(keys.alice))
    assert got.json()["clicks"] == stats["visits"] + stats["bots"] == 12

    # The default range is the 30 days up to now, by day.
    default = (await client.get(stats_path(code), headers=keys.of(keys.alice))).json()
    assert default["interval"] == "day" and len(default["series"]) in (30, 31)
    assert (default["visits"], default["bots"]) == (8, 4)
    to = datetime.fromisoformat(default["to"])
    assert abs((datetime.now(UTC) - to).total_seconds()) < 60
    assert to - datetime.fromisoformat(default["from"]) == timedelta(days=30)
    assert default["series"][-1]["start"].endswith("T00:00:00Z")


async def test_links_with_a_visit_limit_count_visits_and_clicks_alike(
    client: ContractClient, keys: Keys
) -> None:
    link = await create(client, keys.alice, url="https://example.com/l", max_visits=3)
    statuses = [await visit(client, link["code"], ua) for ua in (FIREFOX_LINUX, CURL, None, CURL)]
    assert statuses == [302, 302, 302, 410]
    await written(client)
    stats = (await client.get(stats_path(link["code"]), headers=keys.of(keys.alice))).json()
    got = (await client.get(f"{LINKS}/{link['code']}", headers=keys.of(keys.alice))).json()
    assert (stats["visits"], stats["bots"], got["clicks"]) == (1, 2, 3)


async def test_breakdowns_keep_the_top_20_and_one_other_row(
    client: ContractClient, keys: Keys
) -> None:
    link = await create(client, keys.alice, url="https://example.com/r")
    for number in range(25):
        for _ in range(2 if number < 3 else 1):
            await visit(client, link["code"], FIREFOX_LINUX, f"https://site{number:02}.example/p")
    await written(client)
    stats = (await client.get(stats_path(link["code"]), headers=keys.of(keys.alice))).json()
    referrers = stats["referrers"]
    assert len(referrers) == 21
    assert referrers[:3] == [{"value": f"site{n:02}.example", "visits": 2} for n in range(3)]
    assert referrers[20] == {"value": "(other)", "visits": 5}
    assert sum(row["visits"] for row in referrers) == stats["visits"] == 28


async def test_a_visit_shows_within_5_seconds(client: ContractClient, keys: Keys) -> None:
    link = await create(client, keys.alice, url="https://example.com/soon")
    await visit(client, link["code"], FIREFOX_LINUX)
    visited = time.monotonic()
    while True:
        stats = (await client.get(stats_path(link["code"]), headers=keys.of(keys.alice))).json()
        if stats["visits"] == 1:
            break
        assert time.monotonic() - visited < 5, "the visit did not show within 5 s"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "to"),
        ({"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "to"),
        (
            {"from": "2026-01-01T00:00:00Z", "to": "2026-03-01T00:00:00Z", "interval": "hour"},
            "interval",
        ),
        ({"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "interval"),
        ({"interval": "week"}, "interval"),
        ({"interval": ""}, "interval"),
        ({"from": "yesterday"}, "from"),
        ({"from": "2026-01-01T00:00:00"}, "from"),
        ({"to": "2026-02-30T00:00:00Z"}, "to"),
        ({"from": "0001-01-01T00:00:00+01:00"}, "from"),
        ({"to": "9999-12-31T23:59:59-01:00"}, "to"),
    ],
)
async def test_bad_ranges_and_intervals_are_400_naming_the_field(
    client: ContractClient, keys: Keys, query: dict[str, str], field: str
) -> None:
    link = await create(client, keys.alice, url="https://example.com/b")
    reply = await client.get(stats_path(link["code"], **query), headers=keys.of(keys.alice))
    assert reply.status == 400
    assert field in {error["field"] for error in reply.json()["errors"]}


async def test_exactly_1000_buckets_and_offsets_are_accepted(
    client: ContractClient, keys: Keys
) -> None:
    link = await create(client, keys.alice, url="https://example.com/k")
    query = {"from": "2026-01-01T00:00:00+02:00", "to": "2026-02-11T16:00:00+02:00"}
    reply = await client.get(
        stats_path(link["code"], interval="hour", **query), headers=keys.of(keys.alice)
    )
    assert reply.status == 200
    stats = reply.json()
    assert len(stats["series"]) == 1000
    assert stats["from"] == "2025-12-31T22:00:00Z"
    assert stats["series"][0]["start"] == "2025-12-31T22:00:00Z"
    # An offset's unencoded "+" arrives as a space; it is still understood.
    raw = f"{LINKS}/{link['code']}/stats?from=2026-01-01T00:00:00+02:00"
    assert (await client.get(raw, headers=keys.of(keys.alice))).status == 200


async def test_another_keys_or_a_deleted_link_is_404(client: ContractClient, keys: Keys) -> None:
    link = await create(client, keys.alice, url="https://example.com/mine")
    assert (await client.get(stats_path(link["code"]), headers=keys.of(keys.bob))).status == 404
    assert (await client.get(stats_path(link["code"]), headers=keys.of(keys.admin))).status == 200
    assert (await client.get(stats_path(link["code"]))).status == 401
    await client.delete(f"{LINKS}/{link['code']}", headers=keys.of(keys.alice))
    assert (await client.get(stats_path(link["code"]), headers=keys.of(keys.alice))).status == 404
    assert (await client.get(stats_path("NoSuchCode"), headers=keys.of(keys.alice))).status == 404


def make_geoip_db(path: Path) -> str:
    """A small MaxMind-format country database: two networks, nothing else."""
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-Country")
    writer.insert_network(IPSet(["203.0.113.0/24"]), {"country": {"iso_code": "DE"}})
    writer.insert_network(IPSet(["2001:db8::/32"]), {"country": {"iso_code": "JP"}})
    writer.to_db_file(str(path))
    return str(path)


async def test_countries_come_from_the_geoip_file_through_a_trusted_proxy(
    make_client: Any, settings: Settings, tmp_path: Path
) -> None:
    geoip = make_geoip_db(tmp_path / "countries.mmdb")
    loopback = (ip_network("127.0.0.0/8"), ip_network("::1"))
    proxied = await make_client(
        dataclasses.replace(settings, geoip_db=geoip, trusted_proxies=loopback)
    )
    direct = await make_client(dataclasses.replace(settings, geoip_db=geoip))
    _, key = await create_key(proxied.app[STORE], "geo", admin=False)
    headers = {"Authorization": f"Bearer {key}"}
    link = (
        await proxied.post(LINKS, json={"url": "https://example.com/g"}, headers=headers)
    ).json()
    code = link["code"]
    for forwarded in ("203.0.113.7", "203.0.113.8", "2001:db8::5", "198.51.100.1"):
        await visit(proxied, code, FIREFOX_LINUX, **{"X-Forwarded-For": forwarded})
    # The nearest untrusted hop counts, not what the client wrote before it.
    await visit(proxied, code, FIREFOX_LINUX, **{"X-Forwarded-For": "2001:db8::1, 203.0.113.9"})
    # Not from a trusted proxy: the header is ignored and the peer (loopback) has no country.
    await visit(direct, code, FIREFOX_LINUX, **{"X-Forwarded-For": "203.0.113.7"})
    await written(proxied)
    await written(direct)
    stats = (await proxied.get(stats_path(code), headers=headers)).json()
    assert stats["countries"] == [
        {"value": "DE", "visits": 3},
        {"value": "(unknown)", "visits": 2},
        {"value": "JP", "visits": 1},
    ]


def test_a_geoip_file_that_is_not_mmdb_stops_start_up(tmp_path: Path) -> None:
    bad = tmp_path / "countries.mmdb"
    bad.write_text("not a database")
    with pytest.raises(ConfigError, match="SHORTENER_GEOIP_DB"):
        Settings.from_env({"SHORTENER_GEOIP_DB": str(bad)})
    with pytest.raises(ConfigError, match="SHORTENER_GEOIP_DB"):
        Settings.from_env({"SHORTENER_GEOIP_DB": str(tmp_path / "missing.mmdb")})


@pytest.mark.parametrize(
    ("referer", "host"),
    [
        (None, "(direct)"),
        ("", "(direct)"),
        ("https://WWW.Example.COM:8443/a/b?c=d#e", "www.example.com"),
        ("http://[2001:db8::1]/x", "2001:db8::1"),
        ("android-app://com.google.android.gm/", "(direct)"),
        ("ftp://files.example/", "(direct)"),
        ("not a url", "(direct)"),
        ("https://", "(direct)"),
        ("http://[broken/", "(direct)"),
        ("https://user:pw@host.example/", "host.example"),
        ("https://(other)/", "(direct)"),
    ],
)
def test_referrers_are_reduced_to_their_host(referer: str | None, host: str) -> None:
    assert referrer_host(referer) == host


@pytest.mark.parametrize(
    ("user_agent", "bot", "device"),
    [
        (CHROME_WINDOWS, False, "desktop"),
        (SAFARI_IPHONE, False, "mobile"),
        (SAFARI_IPAD, False, "tablet"),
        (CHROME_ANDROID, False, "mobile"),
        (
            "Mozilla/5.0 (Linux; Android 14; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/120.0.0.0 Safari/537.36",
            False,
            "tablet",
        ),
        (FIREFOX_LINUX, False, "desktop"),
        (GOOGLEBOT, True, "other"),
        ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", True, "other"),
        (CURL, True, "other"),
        ("python-requests/2.31.0", True, "other"),
        ("", True, "other"),
        (None, True, "other"),
    ],
)
def test_user_agents_are_classified(user_agent: str | None, bot: bool, device: str) -> None:
    agent = Classifier(None, ()).agent(user_agent)
    assert (agent.bot, agent.device) == (bot, device)


async def test_a_full_buffer_drops_whole_visits_and_counts_them(
    client: ContractClient, keys: Keys
) -> None:
    store = client.app[STORE]
    recorder = VisitRecorder(store, Classifier(None, ()), 1.0, 6, 100, 400)
    links = [await create(client, keys.alice, url=f"https://example.com/{n}") for n in range(3)]
    request = _FakeRequest(FIREFOX_LINUX)
    for link in links:
        recorder.record(link["code"], request, clicked=False)
    await recorder.drain()
    assert (recorder.visits, recorder.dropped, recorder.clicks_dropped) == (1, 2, 2)
    for link in links:
        got = (await client.get(f"{LINKS}/{link['code']}", headers=keys.of(keys.alice))).json()
        stats = (await client.get(stats_path(link["code"]), headers=keys.of(keys.alice))).json()
        assert got["clicks"] == stats["visits"] + stats["bots"]


@dataclasses.dataclass
class _FakeRequest:
    user_agent: str
    remote: str = "192.0.2.1"

    @property
    def headers(self) -> dict[str, str]:
        return {"User-Agent": self.user_agent}


async def test_counts_older_than_the_retention_are_deleted(
    client: ContractClient, keys: Keys
) -> None:
    store = client.app[STORE]
    link = await create(client, keys.alice, url="https://example.com/old")
    now_hour = int(time.time() // 3600)
    old, recent = now_hour - 24 * 3 - 1, now_hour - 24 * 3 + 1
    await store.add_visits(
        {}, {(link["code"], old, "total", "bots"): 5, (link["code"], recent, "total", "bots"): 7}
    )
    recorder = VisitRecorder(store, Classifier(None, ()), 1.0, 100, 100, retention_days=3)
    await recorder.purge()
    series = await store.visit_series(int(await _link_id(store, link["code"])), 0, now_hour + 1, 1)
    assert series == [(recent, "bots", 7)]


async def _link_id(store: Any, code: str) -> int:
    link = await store.get_link(code)
    return int(link.id)


async def test_migrations_apply_whatever_order_they_landed_in(
    backend_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration numbered below one already applied (merged later) still runs."""
    import shortener.store.postgres as postgres_module
    import shortener.store.sqlite as sqlite_module
    from shortener.store import migration_scripts

    module = sqlite_module if backend_url.startswith("sqlite") else postgres_module
    dialect = "sqlite" if backend_url.startswith("sqlite") else "postgres"
    scripts = migration_scripts(dialect)
    late = scripts[-2][0]  # the one before the newest lands last
    store = make_store(Settings(database_url=backend_url))
    await store.open()
    try:
        monkeypatch.setattr(
            module, "migration_scripts", lambda _: [s for s in scripts if s[0] != late]
        )
        assert late not in await store.migrate()
        monkeypatch.setattr(module, "migration_scripts", lambda _: scripts)
        assert await store.migrate() == [late]
        assert await store.migrate() == []
    finally:
        await store.close()


async def test_counts_wait_while_the_store_is_down_and_arrive_after(
    postgres_url: str, postgres_server: PostgresServer, aiohttp_client: Any
) -> None:
    settings = Settings(database_url=postgres_url, base_url="https://sho.rt")
    app = ContractClient(await aiohttp_client(create_app(settings)))
    _, key = await create_key(app.app[STORE], "ops", admin=True)
    headers = {"Authorization": f"Bearer {key}"}
    link = (await app.post(LINKS, json={"url": "https://example.com/w"}, headers=headers)).json()
    code = link["code"]
    assert await visit(app, code, FIREFOX_LINUX) == 302  # now in L1
    await written(app)

    postgres_server.kill()
    try:
        for user_agent in (FIREFOX_LINUX, SAFARI_IPHONE, GOOGLEBOT):
            assert await visit(app, code, user_agent) == 302  # served from L1
        with pytest.raises(StoreUnavailable):
            await written(app)
        assert app.app[VISITS].buffered == 3
    finally:
        postgres_server.start()

    deadline = time.monotonic() + 20
    while True:
        reply = await app.get(stats_path(code), headers=headers)
        if reply.status == 200 and (reply.json()["visits"], reply.json()["bots"]) == (3, 1):
            break
        assert time.monotonic() < deadline, "the counts kept while the store was down never came"
        await asyncio.sleep(0.25)
    got = (await app.get(f"{LINKS}/{code}", headers=headers)).json()
    assert got["clicks"] == 4
    assert app.app[VISITS].dropped == 0


SECRET_UA = "Mozilla/5.0 (X11; Linux x86_64) Firefox/121.0 SecretAgent/unique-ua-7f3a9c"
SECRET_PATH = "secret-path-91c4"
SECRET_QUERY = "token=hunter2xyz"
SECRET_IP = "203.0.113.77"
# An IPv6 client is counted by its /64 in the rate limits: neither may be kept.
SECRET_IP6, SECRET_NET6 = "2001:db8:5ec:7e7::77", "2001:db8:5ec:7e7"


async def test_nothing_stored_holds_an_address_a_user_agent_or_a_referer_path(
    make_client: Any,
    settings: Settings,
    redis_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    geoip = make_geoip_db(tmp_path / "countries.mmdb")
    app = await make_client(
        dataclasses.replace(
            settings,
            redis_url=redis_url,
            geoip_db=geoip,
            trusted_proxies=(ip_network("127.0.0.0/8"), ip_network("::1")),
        )
    )
    _, key = await create_key(app.app[STORE], "ops", admin=False)
    headers = {"Authorization": f"Bearer {key}"}
    link = (await app.post(LINKS, json={"url": "https://example.com/p"}, headers=headers)).json()
    referer = f"https://Ref.Example/{SECRET_PATH}?{SECRET_QUERY}"
    for address in (SECRET_IP, SECRET_IP, SECRET_IP, SECRET_IP6):
        await visit(app, link["code"], SECRET_UA, referer, **{"X-Forwarded-For": address})
        # Unknown codes are counted per client in Redis, to slow down scanners.
        assert (
            await visit(app, "NoSuchCode", SECRET_UA, referer, **{"X-Forwarded-For": address})
            == 404
        )
    await written(app)
    stats = (await app.get(stats_path(link["code"]), headers=headers)).json()
    assert stats["referrers"] == [{"value": "ref.example", "visits": 4}]
    assert stats["countries"] == [{"value": "DE", "visits": 3}, {"value": "JP", "visits": 1}]

    stored = await _everything_stored(settings, redis_url)
    # The test server's access log is the harness's: served, the app runs with access_log=None
    # under aiohttp and accesslog = None under gunicorn.
    logged = "\n".join(
        record.getMessage() for record in caplog.records if record.name != "aiohttp.access"
    )
    secrets = (SECRET_UA, "unique-ua-7f3a9c", SECRET_PATH, SECRET_QUERY, SECRET_IP, SECRET_NET6)
    for secret in secrets:
        assert secret.encode() not in stored, f"{secret!r} is stored"
        assert secret not in logged, f"{secret!r} is logged"
    assert b"ref.example" in stored  # the search does see what is stored


async def _everything_stored(settings: Settings, redis_url: str) -> bytes:
    dump = []
    if settings.is_sqlite:
        path = Path(settings.sqlite_path)
        for file in path.parent.glob(path.name + "*"):  # the database, its WAL and journal
            dump.append(file.read_bytes())
        with sqlite3.connect(path) as connection:
            for (table,) in connection.execute("SELECT name FROM sqlite_master WHERE type='table'"):
                dump += [repr(row).encode() for row in connection.execute(f"SELECT * FROM {table}")]
    else:
        connection = await asyncpg.connect(settings.database_url)
        try:
            tables = await connection.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
            for table in tables:
                rows = await connection.fetch(f'SELECT t::text FROM "{table[0]}" t')
                dump += [row[0].encode() for row in rows]
        finally:
            await connection.close()
    client = aioredis.Redis.from_url(redis_url)
    try:
        async for name in client.scan_iter():
            dump.append(name)
            dump.append(repr(await client.dump(name)).encode())
    finally:
        await client.aclose()
    return b"\n".join(dump)


def test_nginx_logs_no_address_user_agent_or_referer() -> None:
    config = (Path(__file__).parent.parent / "nginx" / "nginx.conf").read_text()
    log_format = config[config.index("log_format json") : config.index("access_log /dev/stdout")]
    for variable in ("$remote_addr", "$http_user_agent", "$http_referer", "$http_x_forwarded_for"):
        assert variable not in log_format
    assert "$client_network" in log_format


async def test_with_analytics_off_clicks_still_count_and_nothing_else_is_kept(
    make_client: Any, settings: Settings
) -> None:
    app = await make_client(dataclasses.replace(settings, analytics=False))
    _, key = await create_key(app.app[STORE], "ops", admin=False)
    headers = {"Authorization": f"Bearer {key}"}
    code = (await app.post(LINKS, json={"url": "https://example.com/off"}, headers=headers)).json()[
        "code"
    ]
    for user_agent, referer, _ in MIX:
        assert await visit(app, code, user_agent, referer) == 302
    await written(app)
    assert (await app.get(f"{LINKS}/{code}", headers=headers)).json()["clicks"] == len(MIX)
    stats = (await app.get(stats_path(code), headers=headers)).json()
    assert (stats["visits"], stats["bots"], stats["referrers"]) == (0, 0, [])


async def test_visits_after_the_turn_of_the_hour_count_in_the_new_hour(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import shortener.visits.recorder as recorder_module

    loop = asyncio.get_running_loop()
    started, turn = loop.time(), 500_000 * 3600  # 50 ms before an hour begins
    monkeypatch.setattr(recorder_module.time, "time", lambda: turn - 0.05 + (loop.time() - started))
    recorder = VisitRecorder(_NoStore(), Classifier(None, ()), 1.0, 100, 100, 400)
    recorder._next_hour()
    recorder.record("before", _FakeRequest(FIREFOX_LINUX), clicked=False)
    await asyncio.sleep(0.2)
    recorder.record("after", _FakeRequest(FIREFOX_LINUX), clicked=False)
    await recorder.aggregate()
    hours = {code: hour for code, hour, dimension, _ in recorder._counts if dimension == "total"}
    assert hours == {"before": 499_999, "after": 500_000}
    assert recorder._hour_timer is not None
    recorder._hour_timer.cancel()


class _NoStore:
    async def add_visits(self, clicks: Any, counts: Any) -> None:
        raise AssertionError("nothing is written here")


async def test_equal_visits_share_one_entry_and_the_bound_is_on_distinct_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import shortener.visits.recorder as recorder_module

    monkeypatch.setattr(recorder_module, "RAW_BUFFER_MAX", 2)
    recorder = VisitRecorder(_NoStore(), Classifier(None, ()), 1.0, 100, 100, 400)
    for _ in range(5):
        recorder.record("same", _FakeRequest(FIREFOX_LINUX), clicked=False)
    recorder.record("other", _FakeRequest(FIREFOX_LINUX), clicked=False)
    recorder.record("third", _FakeRequest(FIREFOX_LINUX), clicked=False)  # a third distinct
    recorder.record("same", _FakeRequest(FIREFOX_LINUX), clicked=False)  # still counted
    assert (recorder.buffered, recorder.clicks_buffered, recorder.dropped) == (7, 7, 1)
    await recorder.aggregate()
    totals = {
        code: n for (code, _, dimension, _), n in recorder._counts.items() if dimension == "total"
    }
    assert totals == {"same": 6, "other": 1}
    assert recorder._clicks == {"same": 6, "other": 1}


async def test_a_backlog_is_written_in_several_statements_of_whole_links(
    client: ContractClient, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shortener.visits.recorder as recorder_module

    monkeypatch.setattr(recorder_module, "ROWS_PER_WRITE", 20)  # two links' counts a write
    writes: list[int] = []
    store = client.app[STORE]
    add_visits = store.add_visits

    async def counted_add_visits(clicks: Any, counts: Any) -> None:
        writes.append(len(counts))
        await add_visits(clicks, counts)

    monkeypatch.setattr(store, "add_visits", counted_add_visits)
    recorder = VisitRecorder(store, Classifier(None, ()), 1.0, 1000, 1000, 400)
    links = [await create(client, keys.alice, url=f"https://example.com/{n}") for n in range(5)]
    for link in links:
        for user_agent in (FIREFOX_LINUX, CHROME_WINDOWS, CURL):
            recorder.record(link["code"], _FakeRequest(user_agent), clicked=False)
    await recorder.drain()
    # Per link 9 counts: visits and bots, (direct), (unknown), 2 browsers, 2 systems, desktop.
    assert writes == [18, 18, 9]
    assert (recorder.flushed, recorder.clicks_flushed, recorder.buffered) == (15, 15, 0)
    for link in links:
        got = (await client.get(f"{LINKS}/{link['code']}", headers=keys.of(keys.alice))).json()
        stats = (await client.get(stats_path(link["code"]), headers=keys.of(keys.alice))).json()
        assert (stats["visits"], stats["bots"], got["clicks"]) == (2, 1, 3)
