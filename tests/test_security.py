"""Attacks from the second security review, each against the running app on both stores.

docs/SECURITY.md lists every attack with the defence and the test here that holds it.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Keys
from tests.contract import ContractClient
from tests.test_api import LINKS, create

# Inputs that once reached a 500: the URL parser, date arithmetic or the store overflowed.
BAD_URLS = ["http://[::1", "http://[1.2.3.4]/", "http://[::ffff:127.1]/", "http://[zz]/"]
BAD_EXPIRIES = ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"]
# "id:" and 19 nines, and 20 nines: past 2**63 - 1, the largest id the stores hold.
BAD_CURSORS = ["aWQ6OTk5OTk5OTk5OTk5OTk5OTk5OQ", "aWQ6OTk5OTk5OTk5OTk5OTk5OTk5OTk"]


def field_errors(reply: Any) -> list[str]:
    return [error["field"] for error in reply.json()["errors"]]


@pytest.mark.parametrize(
    ("field", "value"),
    [("url", url) for url in BAD_URLS] + [("expires_at", moment) for moment in BAD_EXPIRIES],
)
async def test_inputs_that_overflowed_are_400_on_create_and_patch(
    client: ContractClient, keys: Keys, field: str, value: str
) -> None:
    body = {"url": "https://example.com/", field: value}
    created = await client.post(LINKS, json=body, headers=keys.of(keys.alice))
    assert created.status == 400 and field_errors(created) == [field]
    link = await create(client, keys.alice, url="https://example.com/")
    patched = await client.patch(
        f"{LINKS}/{link['code']}", json={field: value}, headers=keys.of(keys.alice)
    )
    assert patched.status == 400 and field_errors(patched) == [field]


@pytest.mark.parametrize("cursor", BAD_CURSORS)
async def test_cursor_past_64_bits_is_400(client: ContractClient, keys: Keys, cursor: str) -> None:
    await create(client, keys.alice, url="https://example.com/")
    reply = await client.get(f"{LINKS}?cursor={cursor}", headers=keys.of(keys.alice))
    assert reply.status == 400 and field_errors(reply) == ["cursor"]
