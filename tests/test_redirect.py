"""The redirect path: statuses, headers, HEAD, 404 vs 410, limits and cache invalidation."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shortener.app import L1
from tests.conftest import Keys
from tests.contract import ContractClient
from tests.test_api import LINKS, create, eventually


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirect_uses_the_links_status(
    client: ContractClient, keys: Keys, status: int
) -> None:
    link = await create(
        client, keys.alice, url="https://example.com/t?q=1#f", redirect_status=status
    )
    reply = await client.get(f"/{link['code']}")
    assert reply.status == status
    assert reply.headers["Location"] == "https://example.com/t?q=1#f"
    assert reply.headers["Cache-Control"] == "private, max-age=90"


async def test_head_answers_like_get_without_body_or_click(
    client: ContractClient, keys: Keys
) -> None:
    link = await create(client, keys.alice, url="https://example.com/h")
    reply = await client.head(f"/{link['code']}")
    assert reply.status == 302 and reply.body == b""
    assert reply.headers["Location"] == "https://example.com/h"
    # One GET after the HEAD: once its click is counted, a click of the HEAD would be too.
    assert (await client.get(f"/{link['code']}")).status == 302

    async def clicks() -> int:
        got = await client.get(f"{LINKS}/{link['code']}", headers=keys.of(keys.alice))
        counted: int = got.json()["clicks"]
        return counted

    assert await eventually(clicks, lambda counted: counted >= 1) == 1


@pytest.mark.parametrize(
    "path",
    [
        "/NoSuchCode",
        "/a",
        "/" + "x" * 65,
        "/_under",
        "/-dash",
        "/has%20space",
        "/%FF%FE",
        "/..%2F..%2Fetc%2Fpasswd",
        "/caf%C3%A9",
    ],
)
async def test_unknown_or_impossible_codes_are_404(client: ContractClient, path: str) -> None:
    reply = await client.get(path)
    assert reply.status == 404
    assert reply.content_type == "application/problem+json"
    assert (await client.head(path)).status == 404


async def test_browsers_get_html_for_404_and_410(client: ContractClient, keys: Keys) -> None:
    html = {"Accept": "text/html,application/xhtml+xml"}
    missing = await client.get("/NoSuchCode", headers=html)
    assert missing.status == 404 and missing.content_type == "text/html"
    assert b"NoSuchCode" not in missing.body
    link = await create(client, keys.alice, url="https://example.com/secret-target")
    await client.delete(f"{LINKS}/{link['code']}", headers=keys.of(keys.alice))
    removed = await client.get(f"/{link['code']}", headers=html)
    assert removed.status == 410 and removed.content_type == "text/html"
    assert b"secret-target" not in removed.body


async def test_disabled_link_is_410_until_enabled(client: ContractClient, keys: Keys) -> None:
    link = await create(client, keys.alice, url="https://example.com/d")
    path = f"{LINKS}/{link['code']}"
    await client.patch(path, json={"disabled": True}, headers=keys.of(keys.alice))
    assert (await client.get(f"/{link['code']}")).status == 410
    assert (await client.head(f"/{link['code']}")).status == 410
    await client.patch(path, json={"disabled": False}, headers=keys.of(keys.alice))
    assert (await client.get(f"/{link['code']}")).status == 302


async def test_expired_link_is_410(client: ContractClient, keys: Keys) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=1)
    link = await create(
        client, keys.alice, url="https://example.com/e", expires_at=soon.isoformat()
    )
    first = await client.get(f"/{link['code']}")
    assert first.status == 302 and first.headers["Cache-Control"] == "no-store"
    # Until the expiry itself, not a guess at how long the test takes: from then on it is gone.
    await asyncio.sleep((soon - datetime.now(UTC)).total_seconds() + 0.01)
    assert (await client.get(f"/{link['code']}")).status == 410
    assert (await client.head(f"/{link['code']}")).status == 410


async def test_max_visits_is_exact_and_head_counts_none(client: ContractClient, keys: Keys) -> None:
    link = await create(client, keys.alice, url="https://example.com/m", max_visits=3)
    code = link["code"]
    assert (await client.head(f"/{code}")).status == 302
    statuses = [(await client.get(f"/{code}")).status for _ in range(5)]
    assert statuses == [302, 302, 302, 410, 410]
    assert (await client.head(f"/{code}")).status == 410
    got = await client.get(f"{LINKS}/{code}", headers=keys.of(keys.alice))
    assert got.json()["clicks"] == 3


async def test_max_visits_is_exact_under_concurrency(client: ContractClient, keys: Keys) -> None:
    link = await create(client, keys.alice, url="https://example.com/m", max_visits=10)
    replies = await asyncio.gather(*(client.get(f"/{link['code']}") for _ in range(40)))
    statuses = sorted(reply.status for reply in replies)
    assert statuses.count(302) == 10 and statuses.count(410) == 30


async def test_patch_max_visits_below_clicks_makes_410(client: ContractClient, keys: Keys) -> None:
    link = await create(client, keys.alice, url="https://example.com/m", max_visits=5)
    for _ in range(3):
        await client.get(f"/{link['code']}")
    path = f"{LINKS}/{link['code']}"
    await client.patch(path, json={"max_visits": 2}, headers=keys.of(keys.alice))
    assert (await client.get(f"/{link['code']}")).status == 410
    await client.patch(path, json={"max_visits": 4}, headers=keys.of(keys.alice))
    assert (await client.get(f"/{link['code']}")).status == 302
    assert (await client.get(f"/{link['code']}")).status == 410


async def test_patch_is_seen_at_once_by_the_writing_worker(
    client: ContractClient, keys: Keys
) -> None:
    link = await create(client, keys.alice, url="https://example.com/before")
    assert (await client.get(f"/{link['code']}")).headers[
        "Location"
    ] == "https://example.com/before"
    await client.patch(
        f"{LINKS}/{link['code']}",
        json={"url": "https://example.com/after"},
        headers=keys.of(keys.alice),
    )
    assert (await client.get(f"/{link['code']}")).headers["Location"] == "https://example.com/after"


async def test_unknown_code_is_cached_but_a_new_alias_is_seen(
    client: ContractClient, keys: Keys
) -> None:
    assert (await client.get("/later")).status == 404
    assert len(client.app[L1]) == 1
    await create(client, keys.alice, url="https://example.com/later", alias="later")
    assert (await client.get("/later")).status == 302


async def test_redirects_are_answered_from_l1_after_the_first(
    client: ContractClient, keys: Keys, monkeypatch: Any
) -> None:
    link = await create(client, keys.alice, url="https://example.com/hot")
    await client.get(f"/{link['code']}")
    store = client.app[L1]
    assert store.get(link["code"]) is not None
    from shortener.app import STORE

    calls = []
    real = client.app[STORE].get_link

    async def counting(code: str) -> Any:
        calls.append(code)
        return await real(code)

    monkeypatch.setattr(client.app[STORE], "get_link", counting)
    for _ in range(20):
        assert (await client.get(f"/{link['code']}")).status == 302
    assert calls == []
