"""`shortener serve` as a real process: the embedded default, gunicorn workers, and shutdown."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from mirakuru import HTTPExecutor

from tests.services import AppInstance, free_port, keys_create

pytestmark = pytest.mark.slow


async def shorten(base: str, key: str, **body: Any) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{base}/api/v1/links", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as response,
    ):
        assert response.status == 201, await response.text()
        result: dict[str, Any] = await response.json()
        return result


async def follow(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url, allow_redirects=False) as response:
        return response.status


def test_serve_runs_on_the_embedded_default_with_no_configuration(tmp_path: Path) -> None:
    port = free_port()
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("SHORTENER_")}
    server = HTTPExecutor(
        [sys.executable, "-m", "shortener", "serve", "--port", str(port)],
        url=f"http://127.0.0.1:{port}/healthz",
        status=200,
        timeout=30,
        cwd=str(tmp_path),
        envvars=clean_env,
    )
    with server:
        key = keys_create(clean_env, cwd=tmp_path)
        assert key.startswith("sk_")
        link = asyncio.run(shorten(f"http://127.0.0.1:{port}", key, url="https://example.com/x"))

        async def check() -> None:
            async with aiohttp.ClientSession() as session:
                assert await follow(session, f"http://127.0.0.1:{port}/{link['code']}") == 302

        asyncio.run(check())
    assert (tmp_path / "shortener.db").exists()


def test_gunicorn_workers_flush_clicks_and_visits_on_sigterm(
    app_instance_factory: Any, postgres_url: str
) -> None:
    env = {
        "SHORTENER_DATABASE_URL": postgres_url,
        # Only the shutdown flush can write these clicks in time.
        "SHORTENER_CLICK_FLUSH_INTERVAL": "600",
    }
    instance: AppInstance = app_instance_factory(env, workers=2)
    assert len(instance.worker_pids()) == 2
    key = keys_create(env)
    link = asyncio.run(shorten(instance.url, key, url="https://example.com/count"))

    async def visit() -> list[int]:
        async with aiohttp.ClientSession() as session:
            return await asyncio.gather(
                *(follow(session, f"{instance.url}/{link['code']}") for _ in range(40))
            )

    assert asyncio.run(visit()) == [302] * 40
    instance.stop()

    async def clicks_and_visits() -> tuple[int, int]:
        connection = await asyncpg.connect(postgres_url)
        try:
            row = await connection.fetchrow(
                """SELECT clicks, (SELECT coalesce(sum(count), 0)::bigint FROM visit_counts
                                   WHERE link_id = links.id AND dimension = 'total')
                   FROM links WHERE code = $1""",
                link["code"],
            )
            assert row is not None
            return row[0], row[1]
        finally:
            await connection.close()

    # The visits too: the shutdown flush writes them with the clicks.
    assert asyncio.run(clicks_and_visits()) == (40, 40)


def test_max_visits_is_exact_across_instances_and_workers(
    app_instance_factory: Any, postgres_url: str
) -> None:
    env = {"SHORTENER_DATABASE_URL": postgres_url}
    instances = [app_instance_factory(env, workers=2) for _ in range(2)]
    key = keys_create(env)
    link = asyncio.run(shorten(instances[0].url, key, url="https://example.com/m", max_visits=50))

    async def stampede() -> list[int]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            return await asyncio.gather(
                *(follow(session, f"{instances[i % 2].url}/{link['code']}") for i in range(200))
            )

    statuses = asyncio.run(stampede())
    assert statuses.count(302) == 50
    assert statuses.count(410) == 150


def test_unreachable_database_at_start_is_retried_not_a_traceback(tmp_path: Path) -> None:
    dead_port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "shortener", "serve", "--port", str(free_port())],
            env={
                **os.environ,
                "SHORTENER_DATABASE_URL": f"postgresql://nobody@127.0.0.1:{dead_port}/none",
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and log_path.read_text().count("retrying") < 2:
            time.sleep(0.2)
        assert process.poll() is None, "serve gave up instead of waiting for the database"
    finally:
        process.terminate()
        process.wait(timeout=10)
    output = log_path.read_text()
    assert output.count("store unreachable, retrying") >= 2
    assert "Traceback" not in output


def test_metrics_cover_every_worker_in_one_scrape(
    app_instance_factory: Any, postgres_url: str
) -> None:
    env = {"SHORTENER_DATABASE_URL": postgres_url}
    instance: AppInstance = app_instance_factory(env, workers=2)
    key = keys_create(env)
    link = asyncio.run(shorten(instance.url, key, url="https://example.com/metrics"))

    async def answered_by(session: aiohttp.ClientSession) -> str:
        async with session.get(f"{instance.url}/{link['code']}", allow_redirects=False) as got:
            assert got.status == 302
            # A worker's request ids share its random prefix of 8 hex digits.
            return got.headers["X-Request-ID"][:8]

    async def visit_then_scrape() -> tuple[int, dict[str, float]]:
        # New connections, so both workers take a share of the redirects.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            workers: list[str] = []
            for _ in range(20):
                workers += await asyncio.gather(*(answered_by(session) for _ in range(30)))
                if len(set(workers)) == 2:
                    break
            assert len(set(workers)) == 2, "one worker answered every redirect"
            # Scraped until a metrics sync has published every worker's latencies.
            deadline = time.monotonic() + 10
            while True:
                async with session.get(f"{instance.url}/metrics") as response:
                    assert response.status == 200
                    samples = _samples(await response.text())
                if samples.get(REDIRECTS) == len(workers) or time.monotonic() > deadline:
                    return len(workers), samples
                await asyncio.sleep(0.1)

    redirects, samples = asyncio.run(visit_then_scrape())
    assert samples[REDIRECTS] == redirects
    l1 = 'shortener_cache_lookups_total{{result="{}",tier="l1"}}'
    assert samples[l1.format("hit")] + samples[l1.format("miss")] == redirects
    assert any(name.startswith("shortener_build_info{") for name in samples)


REDIRECTS = (
    'shortener_http_request_duration_seconds_count{method="GET",route="/{code}",status_class="3xx"}'
)


def _samples(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples
