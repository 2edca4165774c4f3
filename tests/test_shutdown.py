"""Shutdown always ends: every close, last flush and background task has a bound, and a part
that hangs is abandoned with an error logged instead of holding the process forever."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from aiohttp.test_utils import TestClient, TestServer

from shortener import app as app_module
from shortener.app import LIMITER, STORE, TIERED, VISITS, create_app
from shortener.config import Settings
from shortener.store import postgres
from shortener.store.postgres import PostgresStore
from shortener.telemetry import sync_metrics
from shortener.web.ops import Operations
from tests.services import PostgresServer, free_port

# Far above every bound the steps have (CLOSE_TIMEOUT, CLOSE_GRACE): only a hang reaches it.
HANG = 60


async def _hang(*_args: Any) -> None:
    await asyncio.Event().wait()


async def _stubborn(*_args: Any) -> None:
    """Background work that ignores its first cancellation (a second one ends it)."""
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        await asyncio.Event().wait()


def _store(app: Any) -> Any:
    return app[STORE]


def _limiter(app: Any) -> Any:
    return app[LIMITER]


def _visits(app: Any) -> Any:
    return app[VISITS]


def _l2(app: Any) -> Any:
    return app[TIERED].l2


# The part of the app made to hang, its method, what replaces it, the step the log names.
PARTS: dict[str, tuple[Callable[[Any], Any], str, Callable[..., Any], str]] = {
    "store close": (_store, "close", _hang, "closing the store"),
    "rate limiter close": (_limiter, "close", _hang, "closing the rate limiter's Redis client"),
    "last visit and click flush": (
        _visits,
        "drain",
        _hang,
        "writing the buffered visits and clicks",
    ),
    "visit flusher task": (_visits, "run", _stubborn, "stopping the visit flusher"),
    "Redis clients close": (_l2, "close", _hang, "closing the Redis clients"),
    "invalidation listener task": (_l2, "listen", _stubborn, "stopping the invalidation listener"),
}


class _PingCancels:
    """A store whose health check ends just as the task running it is cancelled: the timing
    of a shutdown that lands on the metrics sync's periodic store check."""

    breaker = None  # as SQLite has

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None

    async def ping(self) -> None:
        await asyncio.sleep(0)
        assert self.task is not None
        self.task.cancel()

    def pool_stats(self) -> tuple[int, int]:
        return 0, 0


async def test_the_metrics_sync_stops_when_cancelled_as_its_store_check_ends(
    tmp_path: Path,
) -> None:
    """The teardown hang seen once: asyncio.wait_for on Python 3.11 returned the ping's result
    and dropped the cancellation, so the sync ran on and shutdown awaited it forever."""
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'shortener.db'}"))
    store: Any = _PingCancels()
    task = asyncio.create_task(sync_metrics(app[TIERED], app[VISITS], store))
    store.task = task
    await asyncio.wait({task}, timeout=HANG)
    assert task.cancelled()


@pytest.mark.parametrize("part", PARTS)
async def test_shutdown_ends_when_a_part_hangs(
    part: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(app_module, "CLOSE_TIMEOUT", 0.2)
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'shortener.db'}",
        # Nothing listens there: the Redis parts exist, and fail fast.
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
    )
    app = create_app(settings)
    owner, method, replacement, step = PARTS[part]
    monkeypatch.setattr(owner(app), method, replacement)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    assert (await client.get("/healthz")).status == 200
    await asyncio.wait_for(client.close(), HANG)
    assert f"shutdown: {step} took over 0.2 s; abandoned" in caplog.text
    # An abandoned store close leaves SQLite's threads running, and the test process could
    # not exit: close it for real.
    monkeypatch.undo()
    await app[STORE].close()


@pytest.mark.parametrize(
    ("owner", "name", "step"),
    [
        (Operations, "keep_refreshing", "stopping the readiness probes"),
        (app_module, "sync_metrics", "stopping the metrics sync"),
    ],
    ids=["readiness probes", "metrics sync"],
)
async def test_shutdown_ends_when_a_background_loop_ignores_cancellation(
    owner: object,
    name: str,
    step: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(app_module, "CLOSE_TIMEOUT", 0.2)
    monkeypatch.setattr(owner, name, _stubborn)
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'shortener.db'}"))
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    await asyncio.wait_for(client.close(), HANG)
    assert f"shutdown: {step} took over 0.2 s; abandoned" in caplog.text


async def test_store_close_ends_while_work_holds_a_connection(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pool.close() waits until every connection is back: work stuck while holding one kept
    it waiting forever. After CLOSE_GRACE the pool is terminated instead."""
    monkeypatch.setattr(postgres, "CLOSE_GRACE", 0.5)
    store = PostgresStore(Settings(database_url=postgres_url))
    await store.open()
    holding = asyncio.Event()

    async def stuck() -> None:
        async with store._connection("stuck"):
            holding.set()
            await asyncio.Event().wait()

    work = asyncio.create_task(stuck())
    await holding.wait()
    await asyncio.wait_for(store.close(), HANG)
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await work


@pytest.mark.slow
async def test_store_close_ends_while_postgresql_is_frozen(
    postgres_server: PostgresServer, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A query times out on the frozen server, asyncpg asks the server to cancel it, and no
    answer ever comes: the pool is closed all the same, and the store's close ends."""
    monkeypatch.setattr(postgres, "CLOSE_GRACE", 0.5)
    store = PostgresStore(Settings(database_url=postgres_url, db_statement_timeout=0.3))
    await store.open()
    await store.migrate()
    postmaster = psutil.Process(postgres_server.pid)
    cluster = [postmaster, *postmaster.children(recursive=True)]
    query = asyncio.create_task(store.get_link("frozen"))
    await asyncio.sleep(0)  # the query is on its way
    for process in cluster:
        process.send_signal(signal.SIGSTOP)
    try:
        await asyncio.wait({query}, timeout=1.0)  # past the statement timeout
        await asyncio.wait_for(store.close(), HANG)
    finally:
        for process in cluster:
            with contextlib.suppress(psutil.NoSuchProcess):
                os.kill(process.pid, signal.SIGCONT)
    query.cancel()
    with contextlib.suppress(BaseException):
        await query
