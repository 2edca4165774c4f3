"""Error paths the other tests never reach: the last-resort 500, running out of codes, a link
deleted between the read and the write of a change, and /readyz answering 503."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from devservices.postgres import PostgresServer
from shortener.app import STORE, create_app
from shortener.config import Settings
from shortener.errors import CodeTaken
from shortener.links.model import Link
from tests.conftest import Keys
from tests.contract import ContractClient
from tests.test_api import LINKS, create


async def test_an_unexpected_error_is_a_500_problem_that_tells_nothing(
    client: ContractClient, keys: Keys, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    async def broken(code: str) -> Link | None:
        raise RuntimeError("secret detail of the failure")

    monkeypatch.setattr(client.app[STORE], "get_link", broken)
    with caplog.at_level(logging.ERROR, logger="shortener.web.problems"):
        # The raw client: a 500 is, rightly, in no answer the OpenAPI document lists.
        async with client.raw.get(f"{LINKS}/abc", headers=keys.of(keys.alice)) as response:
            status, body = response.status, await response.read()
            content_type = response.headers["Content-Type"]
    assert status == 500
    assert content_type.startswith("application/problem+json")
    assert orjson.loads(body) == {
        "type": "urn:shortener:problem:internal",
        "title": "Internal error",
        "status": 500,
        "detail": "Something went wrong on our side.",
        "instance": f"{LINKS}/abc",
    }
    assert b"secret" not in body
    logged = [r for r in caplog.records if r.getMessage() == f"unhandled error on GET {LINKS}/abc"]
    assert logged and logged[0].exc_info is not None


async def test_running_out_of_codes_is_a_503_after_a_bounded_search(
    client: ContractClient, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    tried: list[str] = []

    async def taken(code: str, *args: Any) -> Link:
        tried.append(code)
        raise CodeTaken(code)

    monkeypatch.setattr(client.app[STORE], "insert_link", taken)
    reply = await client.post(
        LINKS, json={"url": "https://example.com/full"}, headers=keys.of(keys.alice)
    )
    assert reply.status == 503 and reply.headers["Retry-After"] == "1"
    assert reply.json()["detail"] == "Could not find a free code; try again."
    # Three tries at each length from 7 to 10, then it gives up.
    assert [len(code) for code in tried] == [7] * 3 + [8] * 3 + [9] * 3 + [10] * 3


@pytest.mark.parametrize("change", ["PATCH", "DELETE"])
async def test_a_link_deleted_between_read_and_write_is_404(
    client: ContractClient, keys: Keys, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    link = await create(client, keys.alice, url="https://example.com/race")
    store = client.app[STORE]
    get_link = store.get_link

    async def read_then_lose(code: str) -> Link | None:
        found = await get_link(code)
        # Another request deletes the link right after this one has read it.
        await store.delete_link(code, datetime.now(UTC))
        return found

    monkeypatch.setattr(store, "get_link", read_then_lose)
    path = f"{LINKS}/{link['code']}"
    if change == "PATCH":
        reply = await client.patch(path, json={"disabled": True}, headers=keys.of(keys.alice))
    else:
        reply = await client.delete(path, headers=keys.of(keys.alice))
    assert reply.status == 404
    monkeypatch.undo()
    gone = await client.get(path, headers=keys.of(keys.alice))
    assert gone.status == 404
    assert (await client.get(f"/{link['code']}")).status == 410


async def _readiness(client: ContractClient, status: int) -> dict[str, Any]:
    """/readyz once it answers `status`: it answers from probes made in the background."""
    deadline = time.monotonic() + 10
    while True:
        reply = await client.get("/readyz")
        if reply.status == status:
            result: dict[str, Any] = reply.json()
            return result
        assert time.monotonic() < deadline, f"/readyz never answered {status}: {reply.body!r}"
        await asyncio.sleep(0.1)


async def test_readyz_is_503_when_the_instance_can_answer_nothing(
    postgres_server: PostgresServer, postgres_url: str, aiohttp_client: Any
) -> None:
    # PostgreSQL, no Redis, nothing in L1: with the store gone nothing can be answered.
    settings = Settings(database_url=postgres_url, base_url="https://sho.rt")
    client = ContractClient(await aiohttp_client(create_app(settings)))
    assert (await _readiness(client, 200))["dependencies"]["store"] == {"status": "up"}

    postgres_server.kill()
    body = await _readiness(client, 503)
    assert body["status"] == "unavailable"
    assert body["dependencies"]["store"] == {"status": "down"}
    assert body["dependencies"]["redis"] == {"status": "disabled"}
    assert body["dependencies"]["l1"] == {"status": "up", "entries": 0}

    postgres_server.start()
    assert (await _readiness(client, 200))["status"] == "ready"
