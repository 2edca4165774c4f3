"""Shared fixtures: the app on each real backend, keys, and a client that checks the contract."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import BaseRunner, TestClient, TestServer

from shortener.app import STORE, create_app
from shortener.auth import create_key
from shortener.config import Settings
from shortener.web import server
from tests.contract import ContractClient

pytest_plugins = [
    "tests.services",
    "tests.topology",
    "tests.monitoring",
    "tests.threads",
    "pytester",
]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """Each kind of store: every test using it runs on both backends (a module may add
    "pgbouncer": PostgreSQL through PgBouncer in transaction pooling mode)."""
    return str(request.param)


@pytest.fixture
def backend_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty store of the kind ``backend`` names."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'shortener.db'}"
    else:
        yield request.getfixturevalue(f"{backend}_url")


@pytest.fixture
def settings(backend_url: str, backend: str) -> Settings:
    return Settings(
        database_url=backend_url,
        base_url="https://sho.rt",
        db_transaction_pooling=backend == "pgbouncer",
    )


AppFactory = Callable[..., Any]


class ServedApp(TestServer):
    """A test server that serves the app as `shortener serve` does: through
    shortener.web.server's runner, its front door and its bounds on request heads."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return server.AppRunner(self.app, **kwargs)


@pytest.fixture
async def make_client(
    backend_url: str, aiohttp_client: Callable[..., Any]
) -> AsyncIterator[Callable[[Settings], Any]]:
    """Apps on the test's store; they close before the store is dropped."""

    async def make(settings: Settings) -> ContractClient:
        app: web.Application = create_app(settings)
        client: TestClient[Any, Any] = await aiohttp_client(ServedApp(app))
        return ContractClient(client)

    yield make


@pytest.fixture
async def client(make_client: Callable[[Settings], Any], settings: Settings) -> ContractClient:
    result: ContractClient = await make_client(settings)
    return result


@dataclasses.dataclass
class Keys:
    alice: str
    bob: str
    admin: str

    def of(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def keys(client: ContractClient) -> Keys:
    store = client.app[STORE]
    _, alice = await create_key(store, "alice", admin=False)
    _, bob = await create_key(store, "bob", admin=False)
    _, admin = await create_key(store, "ops", admin=True)
    return Keys(alice=alice, bob=bob, admin=admin)
