"""High availability: a primary that turns read-only is unavailable (503), never a 500,
and the pool finds a writable primary again without a restart."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql

from shortener.app import STORE, create_app
from shortener.auth import create_key
from shortener.config import Settings
from tests.contract import ContractClient
from tests.test_api import LINKS


def _set_read_only(database_url: str, read_only: bool) -> None:
    """What a demotion looks like to a client: every session ends, new ones are read-only."""
    dbname = database_url.rsplit("/", 1)[1].split("?")[0]
    with psycopg.connect(database_url.split("?")[0], autocommit=True) as conn:
        conn.execute("SET default_transaction_read_only = off")
        value = sql.Literal("on" if read_only else "off")
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = {}").format(
                sql.Identifier(dbname), value
            )
        )
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.mark.parametrize("session_attrs", ["", "?target_session_attrs=read-write"])
async def test_read_only_primary_answers_503_until_writable_again(
    postgres_url: str, aiohttp_client: Callable[..., Any], session_attrs: str
) -> None:
    database_url = postgres_url + session_attrs
    app = ContractClient(
        await aiohttp_client(
            create_app(Settings(database_url=database_url, base_url="https://sho.rt"))
        )
    )
    _, key = await create_key(app.app[STORE], "ops", admin=True)
    headers = {"Authorization": f"Bearer {key}"}
    cached = (await app.post(LINKS, json={"url": "https://example.com/c"}, headers=headers)).json()
    assert (await app.get(f"/{cached['code']}")).status == 302

    _set_read_only(database_url, True)
    for n in range(5):
        reply = await app.post(LINKS, json={"url": f"https://example.com/{n}"}, headers=headers)
        assert reply.status == 503 and reply.headers["Retry-After"]
        assert (await app.get(f"/{cached['code']}")).status == 302

    _set_read_only(database_url, False)
    statuses = [
        (await app.post(LINKS, json={"url": f"https://example.com/w{n}"}, headers=headers)).status
        for n in range(3)
    ]
    # The sessions the pool held were ended: at most the first write finds that out.
    assert statuses[1:] == [201, 201] and statuses[0] in {201, 503}
