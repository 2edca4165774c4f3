"""Concurrent single creates written together: each still answers as a create of its own."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from shortener.errors import Problem, StoreUnavailable, conflict
from shortener.links.grouping import MAX_GROUP, CreateGroups
from shortener.links.model import ApiKey, Link, NewLink
from shortener.store.postgres import PostgresStore
from shortener.store.sqlite import SqliteStore
from tests.conftest import Keys
from tests.contract import ContractClient
from tests.test_api import LINKS

NOW = datetime(2030, 1, 1, tzinfo=UTC)
ALICE = ApiKey(id=1, name="alice", admin=False)
BOB = ApiKey(id=2, name="bob", admin=False)


def new(url: str) -> NewLink:
    return NewLink(url=url, alias=None, expires_at=None, max_visits=None, redirect_status=302)


def link(code: str, new: NewLink, owner: ApiKey | None) -> Link:
    return Link(
        id=hash(code) & 0xFFFF,
        code=code,
        url=new.url,
        owner_id=owner.id if owner else None,
        created_at=NOW,
        updated_at=NOW,
        expires_at=None,
        max_visits=None,
        redirect_status=302,
        disabled=False,
        deleted=False,
        clicks=0,
        version=1,
    )


class Writes:
    """Fakes of the service's store_one, store_many and the caches' publish: each call
    recorded, and each held until the test lets it go (publishes go at once unless held)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], int | None]] = []
        self.gate = asyncio.Event()
        self.fail: BaseException | None = None
        self.published: list[list[str]] = []
        self.publish_gate = asyncio.Event()
        self.publish_gate.set()
        self.publish_fails: BaseException | None = None

    async def publish(self, links: list[Link]) -> None:
        self.published.append([link.url for link in links])
        await self.publish_gate.wait()
        if self.publish_fails is not None:
            raise self.publish_fails

    async def one(self, new: NewLink, owner: ApiKey | None) -> Link:
        self.calls.append(("one", [new.url], owner.id if owner else None))
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        if new.url.endswith("/taken"):
            raise conflict("taken")
        return link(f"c{len(self.calls)}", new, owner)

    async def many(
        self, items: list[NewLink | Problem], owner: ApiKey | None
    ) -> list[Link | Problem]:
        news = [item for item in items if isinstance(item, NewLink)]
        self.calls.append(("many", [item.url for item in news], owner.id if owner else None))
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return [
            conflict("taken") if item.url.endswith("/taken") else link(f"m{n}", item, owner)
            for n, item in enumerate(news)
        ]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_creates_arriving_during_a_write_are_written_together_per_owner() -> None:
    writes = Writes()
    groups = CreateGroups(writes.one, writes.many, writes.publish)
    first = asyncio.ensure_future(groups.create(new("https://e.com/0"), ALICE))
    await settle()
    later = [
        asyncio.ensure_future(groups.create(new(f"https://e.com/{n}"), owner))
        for n, owner in ((1, ALICE), (2, BOB), (3, ALICE), (4, None), (5, ALICE))
    ]
    await settle()
    assert writes.calls == [("one", ["https://e.com/0"], 1)]  # alone: written at once
    writes.gate.set()
    made = await asyncio.gather(first, *later)
    assert [each.url for each in made] == [f"https://e.com/{n}" for n in range(6)]
    assert [each.owner_id for each in made] == [1, 1, 2, 1, None, 1]
    assert sorted(writes.calls[1:], key=lambda call: str(call[2])) == [
        ("many", ["https://e.com/1", "https://e.com/3", "https://e.com/5"], 1),
        ("one", ["https://e.com/2"], 2),
        ("one", ["https://e.com/4"], None),
    ]


async def test_the_next_group_is_stored_while_the_last_is_published_and_each_answers_after() -> (
    None
):
    writes = Writes()
    groups = CreateGroups(writes.one, writes.many, writes.publish)
    writes.gate.set()
    writes.publish_gate.clear()
    first = asyncio.ensure_future(groups.create(new("https://e.com/0"), ALICE))
    await settle()
    later = [
        asyncio.ensure_future(groups.create(new(url), ALICE))
        for url in ("https://e.com/1", "https://e.com/taken", "https://e.com/2")
    ]
    await settle()
    # The first link is being published; the next group is stored meanwhile.
    assert writes.calls == [
        ("one", ["https://e.com/0"], 1),
        ("many", ["https://e.com/1", "https://e.com/taken", "https://e.com/2"], 1),
    ]
    assert writes.published == [["https://e.com/0"], ["https://e.com/1", "https://e.com/2"]]
    assert not any(each.done() for each in (first, *later))  # none answers before its publish
    writes.publish_gate.set()
    outcomes = await asyncio.gather(first, *later, return_exceptions=True)
    answers = [getattr(outcome, "url", getattr(outcome, "status", None)) for outcome in outcomes]
    assert answers == ["https://e.com/0", "https://e.com/1", 409, "https://e.com/2"]


async def test_a_publish_that_raises_answers_its_creates_with_it() -> None:
    writes = Writes()
    groups = CreateGroups(writes.one, writes.many, writes.publish)
    writes.gate.set()
    writes.publish_fails = RuntimeError("a bug in the caches")
    creates = [groups.create(new(f"https://e.com/{n}"), ALICE) for n in range(3)]
    outcomes = await asyncio.gather(*creates, return_exceptions=True)
    assert all(isinstance(outcome, RuntimeError) for outcome in outcomes)
    writes.publish_fails = None
    assert (await groups.create(new("https://e.com/3"), ALICE)).url == "https://e.com/3"


async def test_a_problem_answers_its_own_create_only() -> None:
    writes = Writes()
    groups = CreateGroups(writes.one, writes.many, writes.publish)
    first = asyncio.ensure_future(groups.create(new("https://e.com/taken"), ALICE))
    await settle()
    rest = [
        asyncio.ensure_future(groups.create(new(url), ALICE))
        for url in ("https://e.com/a", "https://e.com/taken", "https://e.com/b")
    ]
    await settle()
    writes.gate.set()
    outcomes = await asyncio.gather(first, *rest, return_exceptions=True)
    answers = [
        outcome.url if isinstance(outcome, Link) else getattr(outcome, "status", outcome)
        for outcome in outcomes
    ]
    assert answers == [409, "https://e.com/a", 409, "https://e.com/b"]


async def test_a_failed_write_fails_each_create_of_its_group_and_the_next_group_is_written() -> (
    None
):
    writes = Writes()
    groups = CreateGroups(writes.one, writes.many, writes.publish)
    writes.fail = ConnectionError("store down")
    first = asyncio.ensure_future(groups.create(new("https://e.com/0"), ALICE))
    await settle()
    rest = [asyncio.ensure_future(groups.create(new(f"https://e.com/{n}"), ALICE)) for n in (1, 2)]
    await settle()
    writes.gate.set()
    outcomes = await asyncio.gather(first, *rest, return_exceptions=True)
    assert all(isinstance(outcome, ConnectionError) for outcome in outcomes)
    writes.fail = None
    assert (await groups.create(new("https://e.com/3"), ALICE)).url == "https://e.com/3"


async def test_creates_waiting_behind_a_write_the_store_failed_fail_with_it_unwritten() -> None:
    """A create waits for at most one write: the store's timeout, not two of them."""
    writes = Writes()
    groups = CreateGroups(writes.one, writes.many, writes.publish)
    writes.fail = StoreUnavailable("no answer within the timeout")
    first = asyncio.ensure_future(groups.create(new("https://e.com/0"), ALICE))
    await settle()
    rest = [
        asyncio.ensure_future(groups.create(new(f"https://e.com/{n}"), owner))
        for n, owner in ((1, ALICE), (2, BOB))
    ]
    await settle()
    writes.gate.set()
    outcomes = await asyncio.gather(first, *rest, return_exceptions=True)
    assert all(isinstance(outcome, StoreUnavailable) for outcome in outcomes)
    assert writes.calls == [("one", ["https://e.com/0"], 1)]
    writes.fail = None
    assert (await groups.create(new("https://e.com/3"), ALICE)).url == "https://e.com/3"


async def test_a_create_that_gives_up_leaves_the_others_alone() -> None:
    writes = Writes()
    groups = CreateGroups(writes.one, writes.many, writes.publish)
    first = asyncio.ensure_future(groups.create(new("https://e.com/0"), ALICE))
    await settle()
    quitter = asyncio.ensure_future(groups.create(new("https://e.com/1"), ALICE))
    stayer = asyncio.ensure_future(groups.create(new("https://e.com/2"), ALICE))
    await settle()
    quitter.cancel()
    writes.gate.set()
    assert (await first).url == "https://e.com/0"
    assert (await stayer).url == "https://e.com/2"
    assert quitter.cancelled()


async def test_groups_hold_at_most_max_group_creates() -> None:
    writes = Writes()
    groups = CreateGroups(writes.one, writes.many, writes.publish)
    first = asyncio.ensure_future(groups.create(new("https://e.com/first"), ALICE))
    await settle()
    rest = [
        asyncio.ensure_future(groups.create(new(f"https://e.com/{n}"), ALICE))
        for n in range(MAX_GROUP + 1)
    ]
    await settle()
    writes.gate.set()
    await asyncio.gather(first, *rest)
    assert [(kind, len(urls)) for kind, urls, _ in writes.calls] == [
        ("one", 1),
        ("many", MAX_GROUP),
        ("one", 1),
    ]


def count_group_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of each group the stores are asked to write from now on."""
    sizes: list[int] = []
    for store in (PostgresStore, SqliteStore):
        insert_links = store.insert_links

        async def counted(
            self: Any, rows: list[Any], *args: Any, _insert: Any = insert_links
        ) -> Any:
            sizes.append(len(rows))
            return await _insert(self, rows, *args)

        monkeypatch.setattr(store, "insert_links", counted)
    return sizes


async def test_concurrent_creates_each_answer_as_a_create_of_their_own(
    client: ContractClient, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    await client.post(
        "/api/v1/blocklist", json={"domain": "blocked.test"}, headers=keys.of(keys.admin)
    )
    assert (await client.get("/grouped")).status == 404  # cached as unknown
    bodies: list[tuple[str, dict[str, Any]]] = [
        (keys.alice, {"url": f"https://example.com/{n}", "tags": [f"t{n}"]}) for n in range(12)
    ]
    bodies += [
        (keys.bob, {"url": "https://example.com/bob"}),
        (keys.alice, {"url": "https://example.com/alias", "alias": "grouped"}),
        (keys.bob, {"url": "https://example.com/alias2", "alias": "grouped"}),
        (keys.alice, {"url": "https://www.blocked.test/x"}),
        (keys.alice, {"url": "ftp://example.com/"}),
    ]
    groups = count_group_writes(monkeypatch)
    replies = await asyncio.gather(
        *(client.post(LINKS, json=body, headers=keys.of(key)) for key, body in bodies)
    )
    assert groups and max(groups) > 1  # they were written together
    statuses = [reply.status for reply in replies]
    assert statuses[:13] == [201] * 13
    assert sorted(statuses[13:15]) == [201, 409]  # one alias, one of them first
    assert statuses[15:] == [400, 400]
    made = [reply.json() for reply in replies if reply.status == 201]
    assert len({link["code"] for link in made}) == len(made)
    for (_, body), reply in zip(bodies, replies, strict=True):
        if reply.status == 201:
            link = reply.json()
            assert link["url"] == body["url"]
            assert link["tags"] == body.get("tags", [])
            assert reply.headers["Location"] == f"{LINKS}/{link['code']}"
            assert (await client.get(f"/{link['code']}")).headers["Location"] == body["url"]
    owners: dict[str, set[str]] = {}
    for key in (keys.alice, keys.bob):
        listed = await client.get(f"{LINKS}?limit=100", headers=keys.of(key))
        owners[key] = {link["url"] for link in listed.json()["items"]}
    assert "https://example.com/bob" in owners[keys.bob]
    assert "https://example.com/bob" not in owners[keys.alice]
    assert {f"https://example.com/{n}" for n in range(12)} <= owners[keys.alice]


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_a_store_failure_answers_each_grouped_create_503(
    client: ContractClient, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down(*_: object, **__: object) -> None:
        raise StoreUnavailable("down")

    monkeypatch.setattr(PostgresStore, "insert_link", down)
    monkeypatch.setattr(PostgresStore, "insert_links", down)
    replies = await asyncio.gather(
        *(
            client.post(LINKS, json={"url": f"https://e.com/{n}"}, headers=keys.of(keys.alice))
            for n in range(6)
        )
    )
    assert [reply.status for reply in replies] == [503] * 6
    assert all(reply.headers.get("Retry-After") for reply in replies)
