"""`shortener serve` alone, without nginx: slow and huge request heads are bounded.

A real `serve` (one process, and gunicorn with two workers) on SQLite. Before it bounded
heads, 400 connections each sending 126 headers of 8 KB and then stalling took the process
from 92 MB to 849 MB, and 1,100 slow-header connections kept a second client out for 30 s.
The process's memory (RSS of the process and its workers) is measured with psutil.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from devservices.app import AppInstance
from shortener.web.server import HEADER_TIMEOUT, MAX_HEAD_BYTES

pytestmark = pytest.mark.slow

HUGE_CONNECTIONS = 400
HUGE_HEADERS = 126
HEADER_VALUE = 8_000
SLOW_CONNECTIONS = 1_100
# The attack's whole budget: every loop below ends by then.
TIME_LIMIT = HEADER_TIMEOUT + 20
# Memory the process may gain from the huge heads: 400 x 32 KiB heads is 13 MiB, and the
# interpreter's allocator keeps some; before the bound it was 750 MB.
MEMORY_GROWTH_LIMIT = 80 * 2**20


def rss(instance: AppInstance) -> int:
    process = psutil.Process(instance.pid)
    return sum(p.memory_info().rss for p in [process, *process.children()])


async def huge_head(port: int) -> str:
    """Request line, then HUGE_HEADERS headers of HEADER_VALUE bytes, then a stall."""
    writer = None
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        for index in range(HUGE_HEADERS):
            writer.write(f"X-Filler-{index}: ".encode() + b"a" * HEADER_VALUE + b"\r\n")
            await writer.drain()
        line = await asyncio.wait_for(reader.readline(), HEADER_TIMEOUT + 5)
        return line.split(b" ")[1].decode() if line else "closed"
    except (OSError, TimeoutError) as exc:
        return type(exc).__name__
    finally:
        if writer is not None:
            writer.close()


async def slow_head(port: int, opened: asyncio.Event, count: list[int]) -> tuple[str, float]:
    """One header line a second, never the blank line that ends the head; what the server
    answers, and after how long."""
    writer = None
    started = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        count[0] += 1
        if count[0] == SLOW_CONNECTIONS:
            opened.set()
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        reading = asyncio.ensure_future(reader.readline())
        while not reading.done() and time.monotonic() - started < HEADER_TIMEOUT + 10:
            writer.write(b"X-Slow: a\r\n")
            await writer.drain()
            await asyncio.wait([reading], timeout=1.0)
        if not reading.done():
            reading.cancel()
            return "still open", time.monotonic() - started
        line = reading.result()
        return (line.split(b" ")[1].decode() if line else "closed"), time.monotonic() - started
    except OSError as exc:
        return type(exc).__name__, time.monotonic() - started
    finally:
        if writer is not None:
            writer.close()


async def second_client(url: str, until: asyncio.Event) -> list[Any]:
    answers: list[Any] = []
    timeout = aiohttp.ClientTimeout(total=3)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while not until.is_set():
            try:
                async with session.get(f"{url}/healthz") as response:
                    answers.append(response.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                answers.append(type(exc).__name__)
            await asyncio.sleep(0.2)
    return answers


@pytest.fixture(params=[1, 2], ids=["serve", "serve-workers-2"])
def served(request: pytest.FixtureRequest, app_instance_factory: Any, tmp_path: Path) -> Any:
    # `serve` starts with the soft limit many systems give a login shell: 1,024 open files.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        env = {"SHORTENER_DATABASE_URL": f"sqlite:///{tmp_path / 'links.db'}"}
        instance = app_instance_factory(env, workers=request.param)
    finally:
        # The attack itself needs more than 1,100 connections.
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * SLOW_CONNECTIONS)), hard)
        )
    return instance


async def test_huge_heads_are_refused_and_memory_stays_bounded(served: AppInstance) -> None:
    before = rss(served)
    async with asyncio.timeout(TIME_LIMIT):
        outcomes = Counter(
            await asyncio.gather(*(huge_head(served.port) for _ in range(HUGE_CONNECTIONS)))
        )
    await asyncio.sleep(0.5)
    grown = rss(served) - before
    print(f"\nhuge heads: {dict(outcomes)}; RSS {before / 2**20:.0f} MiB, +{grown / 2**20:.0f} MiB")
    assert outcomes["200"] == 0, outcomes
    assert grown < MEMORY_GROWTH_LIMIT
    async with aiohttp.ClientSession() as session, session.get(f"{served.url}/healthz") as reply:
        assert reply.status == 200


async def test_slow_heads_are_cut_off_and_a_second_client_is_served(served: AppInstance) -> None:
    before = rss(served)
    opened, finished = asyncio.Event(), asyncio.Event()
    count = [0]
    async with asyncio.timeout(TIME_LIMIT):
        attack = asyncio.gather(
            *(slow_head(served.port, opened, count) for _ in range(SLOW_CONNECTIONS))
        )
        await asyncio.wait_for(opened.wait(), 10)
        watching = asyncio.create_task(second_client(served.url, finished))
        outcomes = await attack
        finished.set()
        answers = await watching
    grown = rss(served) - before
    statuses = Counter(status for status, _ in outcomes)
    slowest = max(took for _, took in outcomes)
    print(
        f"\nslow heads: {dict(statuses)}, last cut after {slowest:.1f} s; second client "
        f"{Counter(answers)}; RSS +{grown / 2**20:.0f} MiB"
    )
    assert statuses == {"408": SLOW_CONNECTIONS}, statuses
    assert slowest < HEADER_TIMEOUT + 5
    assert answers and set(answers) == {200}, Counter(answers)
    assert grown < MEMORY_GROWTH_LIMIT
    assert MAX_HEAD_BYTES < HUGE_HEADERS * HEADER_VALUE
