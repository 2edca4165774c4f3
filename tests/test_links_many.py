"""Managing many links on both backends: titles, tags, search and tag filters over pages."""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest

from shortener.config import Settings
from shortener.store import postgres
from tests.conftest import Keys
from tests.contract import ContractClient
from tests.test_api import LINKS, create


async def test_title_and_tags_are_stored_and_returned(client: ContractClient, keys: Keys) -> None:
    link = await create(
        client,
        keys.alice,
        url="https://example.com/t",
        title="Ünïcode title ✓",
        tags=["News", "launch-2030", "news", "A_b"],
    )
    assert link["title"] == "Ünïcode title ✓"
    assert link["tags"] == ["news", "launch-2030", "a_b"]
    again = (await client.get(f"{LINKS}/{link['code']}", headers=keys.of(keys.alice))).json()
    assert again["title"] == link["title"] and again["tags"] == link["tags"]


async def test_title_and_tags_default_to_null_and_empty(client: ContractClient, keys: Keys) -> None:
    link = await create(client, keys.alice, url="https://example.com/plain")
    assert link["title"] is None and link["tags"] == []


async def test_patch_sets_and_clears_title_and_tags(client: ContractClient, keys: Keys) -> None:
    link = await create(client, keys.alice, url="https://example.com/p", title="old", tags=["a"])
    path = f"{LINKS}/{link['code']}"
    changed = await client.patch(
        path, json={"title": "new", "tags": ["B", "c"]}, headers=keys.of(keys.alice)
    )
    assert changed.status == 200
    assert changed.json()["title"] == "new" and changed.json()["tags"] == ["b", "c"]
    untouched = await client.patch(path, json={"disabled": True}, headers=keys.of(keys.alice))
    assert untouched.json()["title"] == "new" and untouched.json()["tags"] == ["b", "c"]
    cleared = await client.patch(
        path, json={"title": None, "tags": []}, headers=keys.of(keys.alice)
    )
    assert cleared.json()["title"] is None and cleared.json()["tags"] == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("title", "x" * 513),
        ("title", 5),
        ("title", ["a"]),
        ("tags", "news"),
        ("tags", None),
        ("tags", [""]),
        ("tags", ["a" * 65]),
        ("tags", ["has space"]),
        ("tags", ["ünï"]),
        ("tags", ["dot.ted"]),
        ("tags", [1]),
        ("tags", [f"t{i}" for i in range(11)]),
    ],
)
async def test_bad_title_or_tags_are_400_naming_the_field(
    client: ContractClient, keys: Keys, field: str, value: Any
) -> None:
    body = {"url": "https://example.com/x", field: value}
    reply = await client.post(LINKS, json=body, headers=keys.of(keys.alice))
    assert reply.status == 400
    assert [error["field"] for error in reply.json()["errors"]] == [field]
    link = await create(client, keys.alice, url="https://example.com/y")
    patched = await client.patch(
        f"{LINKS}/{link['code']}", json={field: value}, headers=keys.of(keys.alice)
    )
    assert patched.status == 400
    assert [error["field"] for error in patched.json()["errors"]] == [field]


async def test_title_of_512_and_ten_tags_of_64_are_accepted(
    client: ContractClient, keys: Keys
) -> None:
    tags = [f"{i}" + "x" * 63 for i in range(10)]
    link = await create(
        client, keys.alice, url="https://example.com/max", title="t" * 512, tags=tags
    )
    assert len(link["title"]) == 512 and link["tags"] == tags


async def pages(client: ContractClient, key: str, limit: int, **filters: Any) -> list[str]:
    """Every code a filtered listing gives, page by page, failing on a repeated code."""
    seen: list[str] = []
    cursor = None
    while True:
        query: list[tuple[str, Any]] = [("limit", limit)]
        for name, value in filters.items():
            values = value if isinstance(value, list) else [value]
            query += [(name, item) for item in values]
        if cursor:
            query.append(("cursor", cursor))
        reply = await client.get(f"{LINKS}?{urlencode(query)}", headers={"X-API-Key": key})
        assert reply.status == 200, reply.body
        page = reply.json()
        assert len(page["items"]) <= limit
        seen += [item["code"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)), "a link appeared twice"
    return seen


@pytest.mark.parametrize("window", [5000, 4])
async def test_search_and_tag_filters_page_without_duplicates_or_gaps(
    client: ContractClient, keys: Keys, window: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PostgreSQL reads the newest links first, then older ones through the trigram index:
    # a small window makes every page cross from one to the other.
    monkeypatch.setattr(postgres, "_SEARCH_WINDOW", window)
    made: list[dict[str, Any]] = []
    for i in range(23):
        tags = ["even" if i % 2 == 0 else "odd"] + (["three"] if i % 3 == 0 else [])
        made.append(
            await create(
                client,
                keys.alice,
                url=f"https://example.com/item/{i}?ref=Campaign{i % 4}",
                title=f"Report №{i} Über" if i % 5 == 0 else None,
                tags=tags,
                alias=f"code{i}",
            )
        )
    await create(client, keys.bob, url="https://example.com/item/bob", tags=["even"])
    newest_first = [link["code"] for link in reversed(made)]

    def expect(keep: Any) -> list[str]:
        return [code for code, link in zip(newest_first, reversed(made), strict=True) if keep(link)]

    # url, case-insensitively
    assert await pages(client, keys.alice, 4, q="CAMPAIGN1") == expect(
        lambda link: link["url"].endswith("Campaign1")
    )
    # title, folded beyond ASCII
    assert await pages(client, keys.alice, 2, q="über") == expect(lambda link: link["title"])
    # code
    assert await pages(client, keys.alice, 3, q="ODE1") == expect(
        lambda link: "ode1" in link["code"]
    )
    # one or two letters: no trigram for the index to look up
    assert await pages(client, keys.alice, 3, q="/1") == expect(lambda link: "/1" in link["url"])
    assert await pages(client, keys.alice, 5, tag="even") == expect(
        lambda link: "even" in link["tags"]
    )
    assert await pages(client, keys.alice, 2, tag=["Even", "three"]) == expect(
        lambda link: {"even", "three"} <= set(link["tags"])
    )
    assert await pages(client, keys.alice, 3, tag="odd", q="item/1") == expect(
        lambda link: "odd" in link["tags"] and "item/1" in link["url"]
    )
    assert await pages(client, keys.alice, 3, tag="nowhere") == []
    # an admin searches everyone's links
    assert len(await pages(client, keys.admin, 7, tag="even")) == 13


async def test_search_matches_like_wildcards_literally(client: ContractClient, keys: Keys) -> None:
    literal = await create(client, keys.alice, url="https://example.com/100%_off")
    await create(client, keys.alice, url="https://example.com/100xyoff")
    assert await pages(client, keys.alice, 10, q="100%_") == [literal["code"]]
    backslash = await create(client, keys.alice, url="https://example.com/", title="a\\b")
    assert await pages(client, keys.alice, 10, q="a\\b") == [backslash["code"]]


async def test_deleted_links_are_not_found_by_search(client: ContractClient, keys: Keys) -> None:
    link = await create(client, keys.alice, url="https://example.com/gone", tags=["x"])
    await client.delete(f"{LINKS}/{link['code']}", headers=keys.of(keys.alice))
    assert await pages(client, keys.alice, 10, q="gone") == []
    assert await pages(client, keys.alice, 10, tag="x") == []


@pytest.mark.parametrize(
    "query",
    [
        "q=a%0Ab",
        "q=" + "a" * 2049,
        "tag=has%20space",
        "tag=",
        "tag=" + "a" * 65,
        "&".join(f"tag=t{i}" for i in range(11)),
    ],
)
async def test_bad_filters_are_400_naming_the_parameter(
    client: ContractClient, keys: Keys, query: str
) -> None:
    reply = await client.get(f"{LINKS}?{query}", headers=keys.of(keys.alice))
    assert reply.status == 400
    assert reply.json()["errors"][0]["field"] == query.split("=")[0]


BATCH = f"{LINKS}/batch"


async def batch(client: ContractClient, key: str | None, links: list[Any]) -> list[Any]:
    headers = {"X-API-Key": key} if key else {}
    reply = await client.post(BATCH, json={"links": links}, headers=headers)
    assert reply.status == 200, reply.body
    results: list[Any] = reply.json()["results"]
    assert len(results) == len(links)
    return results


async def test_batch_judges_each_item_alone_and_keeps_the_order(
    client: ContractClient, keys: Keys
) -> None:
    await create(client, keys.bob, url="https://example.com/bob", alias="bobs")
    await client.post(
        "/api/v1/blocklist", json={"domain": "blocked.test"}, headers=keys.of(keys.admin)
    )
    results = await batch(
        client,
        keys.alice,
        [
            {"url": "https://example.com/1", "title": "one", "tags": ["A"]},
            {"url": "ftp://example.com/bad"},
            {"url": "https://example.com/2", "alias": "mine"},
            {"url": "https://example.com/3", "alias": "bobs"},
            {"url": "https://example.com/4", "alias": "mine"},
            {"url": "https://www.blocked.test/x"},
            {"url": "https://example.com/5", "unknown": 1},
            "not an object",
            {"url": "https://example.com/6", "title": "x" * 17_000},
            {"url": "https://example.com/7", "redirect_status": 301},
        ],
    )
    assert [result["status"] for result in results] == [
        201,
        400,
        201,
        409,
        409,
        400,
        400,
        400,
        413,
        201,
    ]
    assert results[0]["link"]["title"] == "one" and results[0]["link"]["tags"] == ["a"]
    assert results[2]["link"]["code"] == "mine"
    assert results[1]["problem"]["errors"][0]["field"] == "url"
    assert results[5]["problem"]["errors"][0]["field"] == "url"
    assert results[6]["problem"]["errors"][0]["field"] == "unknown"
    assert results[9]["link"]["redirect_status"] == 301
    for result in (results[0], results[2], results[9]):
        code = result["link"]["code"]
        found = await client.get(f"/{code}")
        assert found.headers["Location"] == result["link"]["url"]
    # one request, newest first: the later item is listed first
    listed = await pages(client, keys.alice, 100)
    assert listed == [results[i]["link"]["code"] for i in (9, 2, 0)]


async def test_batch_create_replaces_a_cached_unknown_code(
    client: ContractClient, keys: Keys
) -> None:
    assert (await client.get("/later")).status == 404
    results = await batch(client, keys.alice, [{"url": "https://example.com/l", "alias": "later"}])
    assert results[0]["status"] == 201
    assert (await client.get("/later")).headers["Location"] == "https://example.com/l"


async def test_batch_of_a_thousand_creates_a_thousand(
    make_client: Any, settings: Settings, keys: Keys
) -> None:
    client = await make_client(dataclasses.replace(settings, creates_per_key_per_minute=1000))
    links = [{"url": f"https://example.com/{i}", "tags": ["bulk"]} for i in range(1000)]
    results = await batch(client, keys.alice, links)
    assert {result["status"] for result in results} == {201}
    codes = [result["link"]["code"] for result in results]
    assert len(set(codes)) == 1000
    assert [result["link"]["url"] for result in results] == [link["url"] for link in links]
    assert await pages(client, keys.alice, 100, tag="bulk") == list(reversed(codes))


async def test_batch_counts_the_rate_limit_per_link(
    make_client: Any, settings: Settings, keys: Keys
) -> None:
    limited = await make_client(dataclasses.replace(settings, creates_per_key_per_minute=5))
    results = await batch(limited, keys.alice, [{"url": "https://example.com/"}] * 3)
    assert [result["status"] for result in results] == [201] * 3
    results = await batch(
        limited, keys.alice, [{"url": "ftp://bad"}] + [{"url": "https://e.com/"}] * 3
    )
    # the invalid item counts too, as an invalid single create would
    assert [result["status"] for result in results] == [400, 201, 429, 429]
    assert "try again in" in results[2]["problem"]["detail"]
    single = await limited.post(LINKS, json={"url": "https://e.com/"}, headers=keys.of(keys.alice))
    assert single.status == 429
    other = await batch(limited, keys.bob, [{"url": "https://example.com/"}])
    assert other[0]["status"] == 201


async def test_keyless_batch_needs_public_create_and_is_limited_per_address(
    make_client: Any, settings: Settings
) -> None:
    closed = await make_client(settings)
    assert (await closed.post(BATCH, json={"links": [{"url": "https://e.com/"}]})).status == 401
    public = await make_client(
        dataclasses.replace(settings, public_create=True, public_create_per_minute=2)
    )
    results = await batch(public, None, [{"url": "https://e.com/"}] * 3)
    assert [result["status"] for result in results] == [201, 201, 429]


@pytest.mark.parametrize(
    "body",
    [
        {"links": []},
        {"links": [{"url": "https://example.com/"}] * 1001},
        {"links": {"url": "https://example.com/"}},
        {"links": None},
        {},
        {"links": [{"url": "https://example.com/"}], "extra": 1},
        [{"url": "https://example.com/"}],
    ],
)
async def test_bad_batch_bodies_are_400(client: ContractClient, keys: Keys, body: Any) -> None:
    reply = await client.post(BATCH, json=body, headers=keys.of(keys.alice))
    assert reply.status == 400


async def test_hostile_batch_bodies_are_refused_without_harm(
    client: ContractClient, keys: Keys
) -> None:
    item = {"url": "https://example.com/" + "a" * 2000, "title": "t" * 512, "pad": "x" * 13_500}
    huge = orjson.dumps({"links": [item] * 1000})
    assert len(huge) > 16_000_000
    json_headers = {**keys.of(keys.alice), "Content-Type": "application/json"}
    reply = await client.post(BATCH, data=huge, headers=json_headers)
    assert reply.status == 413

    async def chunks() -> Any:
        for _ in range(100):
            yield b" " * 65_536

    chunked = await client.post(BATCH, data=chunks(), headers=json_headers)
    assert chunked.status == 413
    nested = b'{"links": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}"
    deep = await client.post(BATCH, data=nested, headers=json_headers)
    assert deep.status == 400
    nested_item = {"links": [{"url": "https://example.com/", "title": _nest(200)}]}
    results = await batch(client, keys.alice, nested_item["links"])
    assert results[0]["status"] == 400
    assert await pages(client, keys.alice, 100) == []


def _nest(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"a": [value]}
    return value


async def test_keyless_batch_from_another_site_is_403_and_text_bodies_are_415(
    make_client: Any, settings: Settings, keys: Keys
) -> None:
    public = await make_client(dataclasses.replace(settings, public_create=True))
    body = {"links": [{"url": "https://example.com/"}]}
    foreign = await public.post(BATCH, json=body, headers={"Origin": "https://evil.example"})
    assert foreign.status == 403
    own = await public.post(BATCH, json=body, headers={"Origin": "https://sho.rt"})
    assert own.status == 200
    text = await public.post(BATCH, data=orjson.dumps(body), headers={"Content-Type": "text/plain"})
    assert text.status == 415


async def test_migration_0003_applies_after_a_later_one_landed_first(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shortener import store as store_package
    from shortener.store import make_store
    from shortener.store import sqlite as sqlite_store

    every = store_package.migration_scripts

    def without_3(dialect: str) -> list[tuple[int, str]]:
        return [step for step in every(dialect) if step[0] != 3]

    store = make_store(settings)
    await store.open()
    try:
        for module in (postgres, sqlite_store):
            monkeypatch.setattr(module, "migration_scripts", without_3)
        first = await store.migrate()
        assert 3 not in first and max(first) > 3
        for module in (postgres, sqlite_store):
            monkeypatch.setattr(module, "migration_scripts", every)
        assert await store.migrate() == [3]
        assert await store.migrate() == []
    finally:
        await store.close()


async def test_a_batch_of_blocked_links_makes_nothing(client: ContractClient, keys: Keys) -> None:
    await client.post(
        "/api/v1/blocklist", json={"domain": "blocked.test"}, headers=keys.of(keys.admin)
    )
    results = await batch(
        client,
        keys.alice,
        [{"url": "https://blocked.test/a"}, {"url": "https://x.blocked.test/", "alias": "bx"}],
    )
    assert [result["status"] for result in results] == [400, 400]
    assert all("blocked" in result["problem"]["errors"][0]["message"] for result in results)
    assert await pages(client, keys.alice, 10) == []
    # the alias of a refused item is still free
    again = await batch(client, keys.alice, [{"url": "https://example.com/", "alias": "bx"}])
    assert again[0]["status"] == 201
