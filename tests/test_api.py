"""The JSON API of the contract, on both backends (PostgreSQL also through PgBouncer), every
response checked against OpenAPI."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from ipaddress import ip_network
from typing import Any, TypeVar

import pytest

from shortener.config import Settings
from shortener.links.codes import ALPHABET
from tests.conftest import Keys
from tests.contract import ContractClient

LINKS = "/api/v1/links"
T = TypeVar("T")


@pytest.fixture(params=["sqlite", "postgres", "pgbouncer"])
def backend(request: pytest.FixtureRequest) -> str:
    """The API on each store, and on PostgreSQL through PgBouncer in transaction pooling mode."""
    return str(request.param)


async def create(client: ContractClient, key: str, **body: Any) -> dict[str, Any]:
    reply = await client.post(LINKS, json=body, headers={"Authorization": f"Bearer {key}"})
    assert reply.status == 201, reply.body
    result: dict[str, Any] = reply.json()
    return result


async def eventually(probe: Callable[[], Awaitable[T]], done: Callable[[T], bool]) -> T:
    """``probe()`` once ``done`` holds for it: what background work (click flushes, cache
    expiry) shows, awaited instead of slept for. Polled every 50 ms, for at most 10 s."""
    deadline = time.monotonic() + 10
    while True:
        value = await probe()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"still {value!r} after 10 s"
        await asyncio.sleep(0.05)


def future(days: int = 1) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


async def test_create_returns_link_object_and_location(client: ContractClient, keys: Keys) -> None:
    reply = await client.post(
        LINKS, json={"url": "https://example.com/a?b=1#frag"}, headers=keys.of(keys.alice)
    )
    assert reply.status == 201
    link = reply.json()
    assert reply.headers["Location"] == f"/api/v1/links/{link['code']}"
    assert link["url"] == "https://example.com/a?b=1#frag"
    assert link["short_url"] == f"https://sho.rt/{link['code']}"
    assert link["redirect_status"] == 302
    assert link["clicks"] == 0
    assert link["expires_at"] is None and link["max_visits"] is None
    assert link["disabled"] is False
    assert link["created_at"].endswith("Z") and link["updated_at"] == link["created_at"]


async def test_generated_codes_are_long_random_and_distinct(
    client: ContractClient, keys: Keys
) -> None:
    codes = [
        (await create(client, keys.alice, url="https://example.com"))["code"] for _ in range(30)
    ]
    assert len(set(codes)) == 30
    for code in codes:
        assert len(code) >= 7 and set(code) <= set(ALPHABET)
    # Not sequential: consecutive codes share no long common prefix.
    assert sum(a[:3] == b[:3] for a, b in itertools.pairwise(codes)) < 3


async def test_create_is_durable_before_201(
    client: ContractClient, keys: Keys, settings: Settings, make_client: Any
) -> None:
    link = await create(client, keys.alice, url="https://example.com/durable")
    other = await make_client(settings)  # a second app on the same store sees it at once
    assert (await other.get(f"/{link['code']}")).headers["Location"] == (
        "https://example.com/durable"
    )


async def test_alias_is_used_and_case_sensitive(client: ContractClient, keys: Keys) -> None:
    await create(client, keys.alice, url="https://example.com/lower", alias="promo")
    await create(client, keys.alice, url="https://example.com/upper", alias="Promo")
    assert (await client.get("/promo")).headers["Location"] == "https://example.com/lower"
    assert (await client.get("/Promo")).headers["Location"] == "https://example.com/upper"


async def test_taken_alias_is_409_even_after_delete(client: ContractClient, keys: Keys) -> None:
    await create(client, keys.alice, url="https://example.com/1", alias="taken")
    again = await client.post(
        LINKS, json={"url": "https://example.com/2", "alias": "taken"}, headers=keys.of(keys.bob)
    )
    assert again.status == 409
    assert (await client.delete(f"{LINKS}/taken", headers=keys.of(keys.alice))).status == 204
    after_delete = await client.post(
        LINKS, json={"url": "https://example.com/3", "alias": "taken"}, headers=keys.of(keys.bob)
    )
    assert after_delete.status == 409
    assert (await client.get("/taken")).status == 410


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("url", "ftp://example.com/file"),
        ("url", "javascript:alert(1)"),
        ("url", "JaVaScRiPt://example.com/%0aalert(1)"),
        ("url", "data:text/html,hi"),
        ("url", "//example.com/no-scheme"),
        ("url", "/relative/path"),
        ("url", "https://"),
        ("url", "http://user:pass@example.com/"),
        ("url", "http://user@example.com/"),
        ("url", "https://exa mple.com/"),
        ("url", "https://example.com/a b"),
        ("url", "https://example.com/\r\nSet-Cookie: x=1"),
        ("url", "https://example.com/\t"),
        ("url", "https://example.com:99999/"),
        ("url", "https://sho.rt/loop"),
        ("url", "https://SHO.RT:8443/loop"),
        ("url", "https://example.com/" + "a" * 2040),
        ("url", 42),
        ("url", None),
        ("url", ["https://example.com"]),
        ("alias", ""),
        ("alias", "a" * 65),
        ("alias", "_hidden"),
        ("alias", "-dash"),
        ("alias", "has space"),
        ("alias", "slash/y"),
        ("alias", "dot.ted"),
        ("alias", "ünï"),
        ("alias", "api"),
        ("alias", "API"),
        ("alias", "healthz"),
        ("alias", "Metrics"),
        ("alias", "readyz"),
        ("alias", "static"),
        ("alias", 7),
        ("expires_at", "2030-01-01T00:00:00"),
        ("expires_at", "2030-01-01"),
        ("expires_at", "2001-01-01T00:00:00Z"),
        ("expires_at", "2030-13-01T00:00:00Z"),
        ("expires_at", "tomorrow"),
        ("expires_at", 1893456000),
        ("max_visits", 0),
        ("max_visits", -5),
        ("max_visits", 1.5),
        ("max_visits", "10"),
        ("max_visits", True),
        ("redirect_status", 200),
        ("redirect_status", 303),
        ("redirect_status", "301"),
        ("bogus", 1),
    ],
)
async def test_bad_create_input_is_400_naming_the_field(
    client: ContractClient, keys: Keys, field: str, value: Any
) -> None:
    body = {"url": "https://example.com/ok", field: value}
    reply = await client.post(LINKS, json=body, headers=keys.of(keys.alice))
    assert reply.status == 400, reply.body
    problem = reply.json()
    assert problem["type"].endswith(":validation")
    assert field in problem["detail"]
    assert [error["field"] for error in problem["errors"]] == [field]
    listing = await client.get(LINKS, headers=keys.of(keys.admin))
    assert listing.json()["items"] == []


async def test_missing_url_is_400(client: ContractClient, keys: Keys) -> None:
    reply = await client.post(LINKS, json={"alias": "x"}, headers=keys.of(keys.alice))
    assert reply.status == 400
    assert reply.json()["errors"] == [{"field": "url", "message": "is required"}]


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe{}", "not valid UTF-8"),
        (b'["https://example.com"]', "JSON object"),
        (b'"https://example.com"', "JSON object"),
        (b"", "not valid JSON"),
        (b"[" * 5000 + b"]" * 5000, "not valid JSON"),
    ],
)
async def test_malformed_bodies_are_400(
    client: ContractClient, keys: Keys, raw: bytes, detail: str
) -> None:
    headers = {**keys.of(keys.alice), "Content-Type": "application/json"}
    reply = await client.post(LINKS, data=raw, headers=headers)
    assert reply.status == 400
    assert detail in reply.json()["detail"]


async def test_body_over_16_kib_is_413(client: ContractClient, keys: Keys) -> None:
    body = b'{"url": "https://example.com/' + b"a" * 16_400 + b'"}'
    headers = {**keys.of(keys.alice), "Content-Type": "application/json"}
    reply = await client.post(LINKS, data=body, headers=headers)
    assert reply.status == 413
    assert reply.content_type == "application/problem+json"


async def test_chunked_body_over_16_kib_is_413(client: ContractClient, keys: Keys) -> None:
    async def chunks() -> Any:
        for _ in range(20):
            yield b" " * 1024

    headers = {**keys.of(keys.alice), "Content-Type": "application/json"}
    reply = await client.post(LINKS, data=chunks(), headers=headers)
    assert reply.status == 413


async def test_idn_host_is_stored_in_ascii(client: ContractClient, keys: Keys) -> None:
    link = await create(client, keys.alice, url="https://bücher.example/straße?q=ä#x")
    assert link["url"] == "https://xn--bcher-kva.example/stra%C3%9Fe?q=%C3%A4#x"
    location = (await client.get(f"/{link['code']}")).headers["Location"]
    assert location == link["url"] and location.isascii()


async def test_expires_at_any_offset_is_returned_in_utc(client: ContractClient, keys: Keys) -> None:
    link = await create(
        client, keys.alice, url="https://example.com", expires_at="2031-06-01T12:00:00+02:00"
    )
    assert link["expires_at"] == "2031-06-01T10:00:00.000000Z"


async def test_requests_without_a_valid_key_are_401(client: ContractClient, keys: Keys) -> None:
    link = await create(client, keys.alice, url="https://example.com")
    for headers in [
        {},
        {"Authorization": "Bearer sk_wrong"},
        {"Authorization": "Basic abc"},
        {"X-API-Key": ""},
    ]:
        for method, path in [
            ("POST", LINKS),
            ("GET", LINKS),
            ("GET", f"{LINKS}/{link['code']}"),
            ("PATCH", f"{LINKS}/{link['code']}"),
            ("DELETE", f"{LINKS}/{link['code']}"),
        ]:
            reply = await client.request(
                method, path, json={"url": "https://e.com"}, headers=headers
            )
            assert reply.status == 401, (method, path, headers)


async def test_x_api_key_header_works(client: ContractClient, keys: Keys) -> None:
    reply = await client.post(
        LINKS, json={"url": "https://example.com"}, headers={"X-API-Key": keys.bob}
    )
    assert reply.status == 201


async def test_a_key_sees_only_its_own_links_and_admin_sees_all(
    client: ContractClient, keys: Keys
) -> None:
    mine = await create(client, keys.alice, url="https://example.com/alice")
    theirs = await create(client, keys.bob, url="https://example.com/bob")
    path = f"{LINKS}/{theirs['code']}"
    assert (await client.get(path, headers=keys.of(keys.alice))).status == 404
    assert (
        await client.patch(path, json={"disabled": True}, headers=keys.of(keys.alice))
    ).status == 404
    assert (await client.delete(path, headers=keys.of(keys.alice))).status == 404
    assert (await client.get(f"/{theirs['code']}")).status == 302
    alice_list = (await client.get(LINKS, headers=keys.of(keys.alice))).json()["items"]
    assert [item["code"] for item in alice_list] == [mine["code"]]
    admin_list = (await client.get(LINKS, headers=keys.of(keys.admin))).json()["items"]
    assert {item["code"] for item in admin_list} == {mine["code"], theirs["code"]}
    assert (
        await client.patch(path, json={"disabled": True}, headers=keys.of(keys.admin))
    ).status == 200


async def test_get_link(client: ContractClient, keys: Keys) -> None:
    link = await create(client, keys.alice, url="https://example.com/g")
    reply = await client.get(f"{LINKS}/{link['code']}", headers=keys.of(keys.alice))
    assert reply.status == 200 and reply.json() == link
    assert (await client.get(f"{LINKS}/NoSuchCode", headers=keys.of(keys.alice))).status == 404
    assert (await client.get(f"{LINKS}/bad%20code", headers=keys.of(keys.alice))).status == 404


async def test_patch_changes_each_field(client: ContractClient, keys: Keys) -> None:
    link = await create(client, keys.alice, url="https://example.com/old")
    path = f"{LINKS}/{link['code']}"
    expires = future(3)
    reply = await client.patch(
        path,
        json={
            "url": "https://example.com/new",
            "expires_at": expires,
            "max_visits": 9,
            "redirect_status": 308,
        },
        headers=keys.of(keys.alice),
    )
    assert reply.status == 200
    changed = reply.json()
    assert changed["url"] == "https://example.com/new"
    assert changed["max_visits"] == 9 and changed["redirect_status"] == 308
    assert changed["expires_at"] is not None and changed["updated_at"] > link["updated_at"]
    cleared = await client.patch(
        path, json={"expires_at": None, "max_visits": None}, headers=keys.of(keys.alice)
    )
    assert cleared.json()["expires_at"] is None and cleared.json()["max_visits"] is None
    assert cleared.json()["url"] == "https://example.com/new"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("url", "mailto:someone@example.com"),
        ("url", None),
        ("redirect_status", None),
        ("redirect_status", 418),
        ("disabled", "yes"),
        ("disabled", None),
        ("max_visits", 0),
        ("expires_at", "2030-01-01T00:00:00"),
        ("alias", "newname"),
        ("code", "other"),
        ("clicks", 5),
    ],
)
async def test_bad_patch_input_is_400_and_changes_nothing(
    client: ContractClient, keys: Keys, field: str, value: Any
) -> None:
    link = await create(client, keys.alice, url="https://example.com/keep")
    path = f"{LINKS}/{link['code']}"
    reply = await client.patch(path, json={field: value}, headers=keys.of(keys.alice))
    assert reply.status == 400
    assert [error["field"] for error in reply.json()["errors"]] == [field]
    assert (await client.get(path, headers=keys.of(keys.alice))).json() == link


async def test_patch_body_must_be_an_object(client: ContractClient, keys: Keys) -> None:
    link = await create(client, keys.alice, url="https://example.com/keep")
    headers = {**keys.of(keys.alice), "Content-Type": "application/json"}
    reply = await client.patch(f"{LINKS}/{link['code']}", data=b"[]", headers=headers)
    assert reply.status == 400


async def test_delete_then_api_404_and_redirect_410(client: ContractClient, keys: Keys) -> None:
    link = await create(client, keys.alice, url="https://example.com/bye")
    path = f"{LINKS}/{link['code']}"
    assert (await client.get(f"/{link['code']}")).status == 302
    reply = await client.delete(path, headers=keys.of(keys.alice))
    assert reply.status == 204 and reply.body == b""
    assert (await client.get(path, headers=keys.of(keys.alice))).status == 404
    assert (await client.delete(path, headers=keys.of(keys.alice))).status == 404
    assert (
        await client.patch(path, json={"disabled": False}, headers=keys.of(keys.alice))
    ).status == 404
    assert (await client.get(f"/{link['code']}")).status == 410
    listing = (await client.get(LINKS, headers=keys.of(keys.alice))).json()
    assert listing["items"] == []


async def test_list_is_newest_first_with_cursor_pages(client: ContractClient, keys: Keys) -> None:
    made = [
        (await create(client, keys.alice, url=f"https://example.com/{i}"))["code"] for i in range(7)
    ]
    await create(client, keys.bob, url="https://example.com/bob")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = "?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = (await client.get(LINKS + query, headers=keys.of(keys.alice))).json()
        seen += [item["code"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(made))
    assert pages == 3
    default = (await client.get(LINKS, headers=keys.of(keys.alice))).json()
    assert len(default["items"]) == 7 and default["next_cursor"] is None


async def test_list_default_limit_is_20(client: ContractClient, keys: Keys) -> None:
    for i in range(21):
        await create(client, keys.alice, url=f"https://example.com/{i}")
    page = (await client.get(LINKS, headers=keys.of(keys.alice))).json()
    assert len(page["items"]) == 20 and page["next_cursor"] is not None


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=101",
        "limit=-1",
        "limit=abc",
        "limit=" + "9" * 5000,
        "limit=1.5",
        "limit=",
        "limit=٣",
        "cursor=garbage!",
        "cursor=",
        "cursor=aWQ6eA",
        "cursor=%FF",
    ],
)
async def test_bad_list_parameters_are_400(client: ContractClient, keys: Keys, query: str) -> None:
    reply = await client.get(f"{LINKS}?{query}", headers=keys.of(keys.alice))
    assert reply.status == 400
    assert reply.json()["errors"][0]["field"] == query.split("=")[0]


async def test_clicks_appear_in_the_link_and_head_counts_none(
    client: ContractClient, keys: Keys
) -> None:
    link = await create(client, keys.alice, url="https://example.com/c")
    for _ in range(5):
        assert (await client.get(f"/{link['code']}")).status == 302
    await client.head(f"/{link['code']}")

    async def clicks() -> int:
        reply = await client.get(f"{LINKS}/{link['code']}", headers=keys.of(keys.alice))
        counted: int = reply.json()["clicks"]
        return counted

    # The HEAD came last: had it counted, it would be flushed with the GETs or after them.
    assert await eventually(clicks, lambda counted: counted >= 5) == 5


async def test_public_create_needs_the_setting(make_client: Any, settings: Settings) -> None:
    closed = await make_client(settings)
    assert (await closed.post(LINKS, json={"url": "https://example.com"})).status == 401


async def test_public_create_is_rate_limited_per_address(
    make_client: Any, settings: Settings
) -> None:
    public = await make_client(
        dataclasses.replace(
            settings,
            public_create=True,
            public_create_per_minute=3,
            trusted_proxies=(ip_network("127.0.0.0/8"), ip_network("::1")),
        )
    )
    one = {"X-Forwarded-For": "203.0.113.7"}
    for _ in range(3):
        assert (
            await public.post(LINKS, json={"url": "https://example.com"}, headers=one)
        ).status == 201
    limited = await public.post(LINKS, json={"url": "https://example.com"}, headers=one)
    assert limited.status == 429
    assert int(limited.headers["Retry-After"]) >= 1
    other = {"X-Forwarded-For": "203.0.113.8"}
    assert (
        await public.post(LINKS, json={"url": "https://example.com"}, headers=other)
    ).status == 201
    wrong_key = {"Authorization": "Bearer sk_nope"}
    assert (
        await public.post(LINKS, json={"url": "https://example.com"}, headers=wrong_key)
    ).status == 401


async def test_unknown_paths_and_methods_are_problems(client: ContractClient) -> None:
    assert (await client.get("/api/v2/links")).status == 404
    assert (await client.request("PUT", "/api/v1/links")).status == 405
    assert (await client.post("/somecode")).status == 405


async def test_openapi_document_is_served_and_valid(client: ContractClient) -> None:
    from openapi_spec_validator import validate

    reply = await client.get("/api/v1/openapi.json")
    assert reply.status == 200
    document = reply.json()
    validate(document)
    assert document["openapi"].startswith("3.1")
