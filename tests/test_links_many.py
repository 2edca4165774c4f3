"""Managing many links on both backends: titles, tags, search and tag filters over pages."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest

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


async def test_search_and_tag_filters_page_without_duplicates_or_gaps(
    client: ContractClient, keys: Keys
) -> None:
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
