"""One client's burst must not take the service from everyone else.

Real processes: nginx on nginx/nginx.conf (rendered for loopback) in front of two instances
of `serve --workers 2` on PostgreSQL and Redis. An attacker at 127.0.0.2 opens 2,000
connections at once, each asking for /readyz (or a short link); meanwhile a second client
at 127.0.0.3 follows a real short link every 50 ms. Before nginx had per-client limits and
/readyz pinged PostgreSQL and Redis per call, the second client got 502 for about 10 s.
127.0.0.1 is the host itself, which nginx.conf leaves unlimited, so neither client uses it.
"""

from __future__ import annotations

import asyncio
import re
import resource
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from devservices.processes import PROJECT_ROOT
from devservices.topology import Topology

pytestmark = pytest.mark.slow

_NGINX_CONF = (PROJECT_ROOT / "nginx" / "nginx.conf").read_text(encoding="utf-8")
_RATE = re.search(r"zone=client_ops:\S+ rate=(\d+)r/s;", _NGINX_CONF)
_BURST = re.search(r"limit_req zone=client_ops burst=(\d+)", _NGINX_CONF)
assert _RATE and _BURST, "nginx.conf's limits on the health endpoints changed shape"
OPS_RATE, OPS_BURST = int(_RATE[1]), int(_BURST[1])

ATTACKER = "127.0.0.2"
BYSTANDER = "127.0.0.3"
CONNECTIONS = 2_000
ATTACK_TIME_LIMIT = 20.0  # seconds for the whole burst: every connection is bounded by it
BYSTANDER_INTERVAL = 0.05
AFTERMATH = 3.0  # seconds the bystander goes on after the burst


async def burst(host: str, port: int, path: str) -> Counter[str]:
    """CONNECTIONS requests for `path` from ATTACKER, all sent at once; their outcomes."""

    async def one() -> str:
        writer = None
        try:
            reader, writer = await asyncio.open_connection(host, port, local_addr=(ATTACKER, 0))
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            status_line = await reader.readline()
            return status_line.split(b" ")[1].decode() if status_line else "closed"
        except OSError as exc:
            return type(exc).__name__
        finally:
            if writer is not None:
                writer.close()

    async with asyncio.timeout(ATTACK_TIME_LIMIT):
        return Counter(await asyncio.gather(*(one() for _ in range(CONNECTIONS))))


async def bystander(url: str, done: asyncio.Event, slowest: list[float]) -> list[int | str]:
    """Follows `url` from BYSTANDER every BYSTANDER_INTERVAL until `done`, then once more;
    `slowest[0]` becomes the longest wait for an answer."""
    connector = aiohttp.TCPConnector(local_addr=(BYSTANDER, 0), force_close=True)
    timeout = aiohttp.ClientTimeout(total=5)
    answers: list[int | str] = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        while True:
            finished = done.is_set()
            sent = time.monotonic()
            try:
                async with session.get(url, allow_redirects=False) as response:
                    answers.append(response.status)
                    slowest[0] = max(slowest[0], time.monotonic() - sent)
            except (aiohttp.ClientError, TimeoutError) as exc:
                answers.append(type(exc).__name__)
            if finished:
                return answers
            await asyncio.sleep(BYSTANDER_INTERVAL)


@pytest.mark.parametrize("path", ["/readyz", "/{code}"])
async def test_a_burst_from_one_address_leaves_other_clients_served(
    postgres_url: str, redis_url: str, tmp_path: Path, path: str
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 3 * CONNECTIONS)), hard))
    with Topology.start(
        tmp_path / "topology",
        database_url=postgres_url,
        redis_url=redis_url,
        instances=2,
        workers=2,
    ) as topology:
        headers = {"Authorization": f"Bearer {topology.admin_key}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            body = {"url": "https://example.com/real"}
            async with session.post(f"{topology.url}/api/v1/links", json=body) as response:
                assert response.status == 201
                code = (await response.json())["code"]
        public = urlsplit(topology.url)
        assert public.hostname is not None and public.port is not None

        done = asyncio.Event()
        slowest = [0.0]
        watching = asyncio.create_task(bystander(f"{topology.url}/{code}", done, slowest))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        try:
            attack = await burst(public.hostname, public.port, path.format(code=code))
            # Instances that nginx marked failed would rest for fail_timeout after the burst.
            await asyncio.sleep(AFTERMATH)
        finally:
            done.set()
            answers = await watching
        took = time.monotonic() - started

    print(
        f"\n{path}: attacker {dict(attack)} in {took:.1f} s; "
        f"bystander {Counter(answers)}, slowest {slowest[0]:.2f} s"
    )
    assert sum(attack.values()) == CONNECTIONS
    # The attacker is told to slow down; nobody is told the service is gone.
    assert not {"502", "504"} & set(attack), attack
    assert attack["429"] > 0, "nginx's per-client limits never applied"
    if path == "/readyz":
        # At most the burst and the rate's allowance reach an instance, not 2,000 probes.
        assert attack["200"] <= OPS_BURST + OPS_RATE * (took + 1), attack
    assert len(answers) >= AFTERMATH / (BYSTANDER_INTERVAL + 0.1)
    assert set(answers) == {302}, Counter(answers)
