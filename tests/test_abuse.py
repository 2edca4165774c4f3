"""Hostile input and abuse: nothing sent costs data, availability or trust."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from datetime import UTC, datetime
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest

from shortener.app import STORE
from shortener.auth import create_key
from shortener.config import Settings
from shortener.links.hosts import is_private_host
from shortener.links.model import KeyInfo
from tests.conftest import Keys
from tests.contract import ContractClient
from tests.services import RedisServer
from tests.test_api import LINKS, eventually

LOOPBACK_PROXY = (ip_network("127.0.0.0/8"), ip_network("::1/128"))


async def nothing_stored(client: ContractClient, keys: Keys) -> None:
    listing = await client.get(LINKS, headers=keys.of(keys.admin))
    assert listing.json()["items"] == []


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"url": "JaVaScRiPt:alert(document.cookie)"}, 400, "url"),
        ({"url": "jAvAsCrIpT://%0Aalert(1)"}, 400, "url"),
        ({"url": "data:text/html;base64,PHNjcmlwdD4="}, 400, "url"),
        ({"url": "vbscript:msgbox(1)"}, 400, "url"),
        ({"url": "file:///etc/passwd"}, 400, "url"),
        ({"url": "//evil.example/path"}, 400, "url"),
        ({"url": "https:evil.example"}, 400, "url"),
        ({"url": "http://user@bank.example/"}, 400, "url"),
        ({"url": "http://bank.example@evil.example/"}, 400, "url"),
        ({"url": "https://evil.example\\@bank.example/"}, 400, "url"),
        ({"url": "https://example.com/\r\nLocation: https://evil.example"}, 400, "url"),
        ({"url": "https://example.com/%0d%0a" + "\u2028"}, 400, "url"),
        ({"url": "https://example.com/\x00"}, 400, "url"),
        ({"url": "https://exa\u200bmple.com/"}, 400, "url"),
        ({"url": "https://" + "a" * 2100 + ".example/"}, 400, "url"),
        ({"url": "https://example.com", "alias": "../../etc/passwd"}, 400, "alias"),
        ({"url": "https://example.com", "alias": "%2e%2e"}, 400, "alias"),
        ({"url": "https://example.com", "alias": "a\u0000b"}, 400, "alias"),
        ({"url": "https://example.com", "alias": "healthz"}, 400, "alias"),
        ({"url": {"nested": {"deeper": ["https://example.com"]}}}, 400, "url"),
        ({"url": "https://example.com", "max_visits": 10**30}, 400, "max_visits"),
    ],
)
async def test_hostile_bodies_get_their_4xx_and_store_nothing(
    client: ContractClient, keys: Keys, body: dict[str, Any], status: int, field: str
) -> None:
    reply = await client.post(LINKS, json=body, headers=keys.of(keys.alice))
    assert reply.status == status
    assert field in [error["field"] for error in reply.json()["errors"]]
    await nothing_stored(client, keys)


@pytest.mark.parametrize(
    "raw",
    [
        b"\xc3\x28",
        b'{"url": "https://example.com/\xff"}',
        b"[" * 100_000,
        b'{"url": "https://example.com",' + b'"a":' * 3000 + b"1" + b"}" * 3000,
        b"\x00\x01\x02",
        b"nul\x00l",
    ],
)
async def test_malformed_and_deep_bodies_are_4xx_and_store_nothing(
    client: ContractClient, keys: Keys, raw: bytes
) -> None:
    headers = {**keys.of(keys.alice), "Content-Type": "application/json"}
    reply = await client.post(LINKS, data=raw, headers=headers)
    assert reply.status in {400, 413}
    await nothing_stored(client, keys)


async def test_homograph_host_is_stored_in_punycode(client: ContractClient, keys: Keys) -> None:
    reply = await client.post(
        LINKS, json={"url": "https://\u0430pple.com/login"}, headers=keys.of(keys.alice)
    )
    assert reply.status == 201
    assert reply.json()["url"] == "https://xn--pple-43d.com/login"
    location = (await client.get(f"/{reply.json()['code']}")).headers["Location"]
    assert location.isascii() and "\r" not in location and "\n" not in location


@pytest.mark.parametrize(
    "path",
    ["/..%2F..%2Fetc%2Fpasswd", "/.env", "/a%00b", "/%C0%AE%C0%AE", "/%", "/%zz"],
)
async def test_path_tricks_in_codes_are_404(client: ContractClient, path: str) -> None:
    assert (await client.get(path)).status == 404


@pytest.mark.parametrize(
    ("host", "private"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("192.168.0.10", True),
        ("169.254.169.254", True),
        ("::1", True),
        ("fd00::1", True),
        ("localhost", True),
        ("db.internal", True),
        ("printer.local", True),
        ("intranet", True),
        ("2130706433", True),
        ("0x7f.1", True),
        ("0177.0.0.1", True),
        ("127.1", True),
        ("::127.0.0.1", True),
        ("64:ff9b::7f00:1", True),
        ("2002:7f00:1::", True),
        ("localhost.localdomain", True),
        ("127.0.0.1.nip.io", True),
        ("10-0-0-1.sslip.io", True),
        ("0x-1.0.0.1", False),
        ("example.com", False),
        ("93.184.216.34", False),
        ("2001:4860:4860::8888", False),
        ("1example.com", False),
    ],
)
def test_private_hosts_are_recognised(host: str, private: bool) -> None:
    assert is_private_host(host) is private


async def test_private_targets_are_refused_for_keyless_creation(
    make_client: Any, settings: Settings
) -> None:
    public = await make_client(dataclasses.replace(settings, public_create=True))
    for url in ["http://127.0.0.1:6379/", "http://169.254.169.254/latest", "http://0x7f.1/"]:
        reply = await public.post(LINKS, json={"url": url})
        assert reply.status == 400, url
        assert "private" in reply.json()["errors"][0]["message"]
    _, key = await create_key(public.app[STORE], "trusted", admin=False)
    with_key = await public.post(
        LINKS, json={"url": "http://10.0.0.5/wiki"}, headers={"Authorization": f"Bearer {key}"}
    )
    assert with_key.status == 201


async def test_private_targets_refused_for_everyone_when_set_to_deny(
    make_client: Any, settings: Settings
) -> None:
    strict = await make_client(dataclasses.replace(settings, private_targets="deny"))
    _, key = await create_key(strict.app[STORE], "k", admin=True)
    headers = {"Authorization": f"Bearer {key}"}
    assert (await strict.post(LINKS, json={"url": "http://[::1]/"}, headers=headers)).status == 400
    link = (await strict.post(LINKS, json={"url": "https://example.com/"}, headers=headers)).json()
    patched = await strict.patch(
        f"{LINKS}/{link['code']}", json={"url": "http://localhost/"}, headers=headers
    )
    assert patched.status == 400


async def test_blocklist_file_blocks_a_domain_and_its_subdomains(
    make_client: Any, settings: Settings, tmp_path: Path
) -> None:
    blocklist = tmp_path / "blocked.txt"
    blocklist.write_text("# reported\nEvil.Example\n\nphish.test  # campaign 12\n")
    env = {"SHORTENER_BLOCKLIST_FILE": str(blocklist)}
    blocked = Settings.from_env(env).blocklist
    client = await make_client(dataclasses.replace(settings, blocklist=blocked))
    _, key = await create_key(client.app[STORE], "k", admin=False)
    headers = {"Authorization": f"Bearer {key}"}
    for url in ["https://evil.example/", "https://login.evil.example/x", "http://phish.test"]:
        reply = await client.post(LINKS, json={"url": url}, headers=headers)
        assert reply.status == 400 and "blocked" in reply.json()["errors"][0]["message"]
    ok = await client.post(LINKS, json={"url": "https://notevil.example/"}, headers=headers)
    assert ok.status == 201


async def test_blocklist_admin_api(client: ContractClient, keys: Keys) -> None:
    admin, alice = keys.of(keys.admin), keys.of(keys.alice)
    entry = {"domain": "Scam.Example", "reason": "reported"}
    assert (await client.post("/api/v1/blocklist", json=entry, headers=alice)).status == 403
    added = await client.post("/api/v1/blocklist", json=entry, headers=admin)
    assert added.status == 201 and added.json()["domain"] == "scam.example"
    listing = await client.get("/api/v1/blocklist", headers=admin)
    assert [item["domain"] for item in listing.json()["items"]] == ["scam.example"]
    scam = {"url": "https://a.scam.example/", "alias": "scam-link"}
    refused = await client.post(LINKS, json=scam, headers=alice)
    assert refused.status == 400
    assert (await client.delete("/api/v1/blocklist/scam.example", headers=admin)).status == 204
    assert (await client.delete("/api/v1/blocklist/scam.example", headers=admin)).status == 404
    # The refused create stored nothing: its alias is still free.
    allowed = await client.post(LINKS, json=scam, headers=alice)
    assert allowed.status == 201
    for bad in [
        {"domain": "a b"},
        {"domain": "x/y"},
        {"domain": 3},
        {"domain": "ok.example", "x": 1},
    ]:
        assert (await client.post("/api/v1/blocklist", json=bad, headers=admin)).status == 400


async def test_revoked_key_is_refused_and_last_use_recorded(
    client: ContractClient, keys: Keys
) -> None:
    store = client.app[STORE]
    assert (await client.get(LINKS, headers=keys.of(keys.bob))).status == 200

    async def bob() -> KeyInfo:
        found: KeyInfo = next(key for key in await store.list_keys() if key.name == "bob")
        return found

    # The last use is recorded off the request path.
    used = await eventually(bob, lambda key: key.last_used_at is not None)
    assert not used.revoked

    assert await store.revoke_key(used.id, datetime.now(UTC))

    async def answer() -> int:
        return (await client.get(LINKS, headers=keys.of(keys.bob))).status

    # Refused once the worker's key cache (5 s) lets the answer go.
    assert await eventually(answer, lambda status: status != 200) == 401


def test_keys_cli_lists_and_revokes(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "SHORTENER_DATABASE_URL": f"sqlite:///{tmp_path / 'k.db'}"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "shortener", "keys", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    key = run("create", "--name", "ci").stdout.strip().splitlines()[-1]
    assert key.startswith("sk_")
    listing = run("list").stdout
    assert "ci" in listing and key not in listing
    assert run("revoke", "1").returncode == 0
    assert "\tTrue" in run("list").stdout.splitlines()[1]
    assert run("revoke", "1").returncode == 1


async def test_slow_body_gets_408(make_client: Any, settings: Settings) -> None:
    client = await make_client(dataclasses.replace(settings, body_timeout=0.5))
    _, key = await create_key(client.app[STORE], "k", admin=False)
    server = client.raw.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        b"POST /api/v1/links HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {key}\r\nContent-Length: 100\r\n\r\n".encode()
        + b'{"url": '
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 408")


# Rate limits shared through Redis, across instances, and without Redis.


@pytest.fixture
async def limited(postgres_url: str, redis_url: str, aiohttp_client: Any) -> list[ContractClient]:
    settings = Settings(
        database_url=postgres_url,
        redis_url=redis_url,
        base_url="https://sho.rt",
        creates_per_key_per_minute=5,
        not_found_per_minute=5,
        trusted_proxies=LOOPBACK_PROXY,
    )
    return [ContractClient(await aiohttp_client(create_app_for(settings))) for _ in range(2)]


def create_app_for(settings: Settings) -> Any:
    from shortener.app import create_app

    return create_app(settings)


async def test_create_limit_per_key_is_shared_across_instances(
    limited: list[ContractClient],
) -> None:
    first, second = limited
    _, key = await create_key(first.app[STORE], "k", admin=False)
    headers = {"Authorization": f"Bearer {key}"}
    statuses = []
    for index in range(6):
        app = first if index % 2 == 0 else second
        statuses.append(
            (await app.post(LINKS, json={"url": "https://e.com"}, headers=headers)).status
        )
    assert statuses == [201] * 5 + [429]
    refused = await second.post(LINKS, json={"url": "https://e.com"}, headers=headers)
    assert refused.status == 429 and int(refused.headers["Retry-After"]) >= 1


async def test_limits_fall_back_to_each_process_when_redis_dies(
    limited: list[ContractClient], redis_server: RedisServer
) -> None:
    first, _ = limited
    _, key = await create_key(first.app[STORE], "k", admin=False)
    headers = {"Authorization": f"Bearer {key}"}
    redis_server.kill()
    statuses = [
        (await first.post(LINKS, json={"url": "https://e.com"}, headers=headers)).status
        for _ in range(7)
    ]
    assert statuses[:5] == [201] * 5
    assert 429 in statuses[5:]


async def test_a_code_scanner_is_slowed_then_refused_everywhere(
    limited: list[ContractClient],
) -> None:
    first, second = limited
    _, key = await create_key(first.app[STORE], "k", admin=False)
    link = (
        await first.post(
            LINKS, json={"url": "https://e.com/real"}, headers={"Authorization": f"Bearer {key}"}
        )
    ).json()
    scanner = {"X-Forwarded-For": "198.51.100.9"}
    statuses = []
    for index in range(6):
        app = first if index % 2 == 0 else second
        statuses.append((await app.get(f"/guess{index}", headers=scanner)).status)
    assert statuses == [404] * 5 + [429]
    # The count is shared: the other instance refuses the scanner's next guess too, and
    # from then on even a real code, so guessing teaches it nothing.
    assert (await first.get("/guess6", headers=scanner)).status == 429
    assert (await first.get(f"/{link['code']}", headers=scanner)).status == 429
    assert (await second.get(f"/{link['code']}", headers=scanner)).status == 429
    other = {"X-Forwarded-For": "198.51.100.10"}
    assert (await first.get(f"/{link['code']}", headers=other)).status == 302
