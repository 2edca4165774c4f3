"""Visit analytics as real processes see them: `shortener serve` with two gunicorn workers on
PostgreSQL killed with SIGKILL mid-traffic, and what nginx and the app write about a visitor."""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from devservices.topology import Topology, access_log, upstream_failures
from shortener.config import Settings
from tests.services import AppInstance, AppInstanceFactory, NginxFactory, free_port, keys_create
from tests.test_burst import OPS_BURST
from tests.test_visits import (
    CURL,
    FIREFOX_LINUX,
    SAFARI_IPHONE,
    SECRET_PATH,
    SECRET_QUERY,
    SECRET_UA,
    _everything_stored,
)

pytestmark = pytest.mark.slow

FLUSH_INTERVAL = 1.0
USER_AGENTS = (FIREFOX_LINUX, SAFARI_IPHONE, CURL)  # two visits and a bot, in turn
WAIT = 30.0  # for a flush to show, at most


def _call(
    instance: AppInstance, method: str, path: str, headers: dict[str, str], body: Any = None
) -> tuple[int, Any]:
    """One request on a connection of its own, so the kernel spreads them over the workers."""
    connection = http.client.HTTPConnection(instance.host, instance.port, timeout=10)
    try:
        sent = {"Connection": "close", **headers}
        payload = None if body is None else json.dumps(body)
        if payload is not None:
            sent["Content-Type"] = "application/json"
        connection.request(method, path, body=payload, headers=sent)
        reply = connection.getresponse()
        data = reply.read()
        kind = reply.getheader("Content-Type") or ""
        return reply.status, json.loads(data) if "json" in kind and data else None
    finally:
        connection.close()


def _redirects(instance: AppInstance, codes: list[str], rounds: int) -> dict[str, Sent]:
    """`rounds` redirects of every code, User-Agents in turn; the visits and bots sent."""
    sent = {code: Sent() for code in codes}
    for number in range(rounds):
        for code in codes:
            user_agent = USER_AGENTS[number % len(USER_AGENTS)]
            status, _ = _call(instance, "GET", f"/{code}", {"User-Agent": user_agent})
            assert status == 302
            if user_agent == CURL:
                sent[code].bots += 1
            else:
                sent[code].visits += 1
    return sent


@dataclasses.dataclass
class Sent:
    visits: int = 0
    bots: int = 0

    @property
    def clicks(self) -> int:
        return self.visits + self.bots


def _stored(instance: AppInstance, key: str, codes: list[str]) -> dict[str, tuple[int, int, int]]:
    """(clicks, visits, bots) of each code, as the store holds them."""
    auth = {"Authorization": f"Bearer {key}"}
    result = {}
    for code in codes:
        status, link = _call(instance, "GET", f"/api/v1/links/{code}", auth)
        assert status == 200
        status, stats = _call(instance, "GET", f"/api/v1/links/{code}/stats", auth)
        assert status == 200
        result[code] = (link["clicks"], stats["visits"], stats["bots"])
    return result


def test_kill_9_loses_at_most_what_came_after_the_last_flush(
    postgres_url: str, app_instance_factory: AppInstanceFactory, tmp_path: Path
) -> None:
    # postgres_url first: its database is dropped after the instance has stopped.
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    env = {
        "SHORTENER_DATABASE_URL": postgres_url,
        "SHORTENER_CLICK_FLUSH_INTERVAL": str(FLUSH_INTERVAL),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
    }
    instance = app_instance_factory(env, workers=2)
    key = keys_create(env, "owner")
    codes = []
    for number in range(3):
        status, link = _call(
            instance,
            "POST",
            "/api/v1/links",
            {"Authorization": f"Bearer {key}"},
            {"url": f"https://example.com/{number}"},
        )
        assert status == 201
        codes.append(link["code"])

    before = _redirects(instance, codes, rounds=20)
    # Longer than a flush interval: until the store holds all of them, each worker having
    # flushed what it took (waited for, at most WAIT seconds, never timed).
    deadline = time.monotonic() + WAIT
    while True:
        stored = _stored(instance, key, codes)
        if all(
            stored[code] == (sent.clicks, sent.visits, sent.bots) for code, sent in before.items()
        ):
            break
        assert time.monotonic() < deadline, f"{stored} not flushed after {WAIT} s: {before}"
        time.sleep(FLUSH_INTERVAL / 4)
    after = _redirects(instance, codes, rounds=20)
    workers = instance.worker_pids()
    assert len(workers) == 2

    instance.kill()  # SIGKILL to the master and both workers at once
    instance.start()
    assert not set(workers) & set(instance.worker_pids())

    stored = _stored(instance, key, codes)
    for code in codes:
        clicks, visits, bots = stored[code]
        assert visits + bots == clicks, (code, stored[code])
        # Everything flushed before the kill is there, and nothing counted twice.
        assert before[code].visits <= visits <= before[code].visits + after[code].visits, code
        assert before[code].bots <= bots <= before[code].bots + after[code].bots, code


# A client of its own on loopback (nginx leaves 127.0.0.1, the host itself, unlimited, and
# 127.0.0.1 names the upstreams in nginx's logs too), and an X-Forwarded-For it makes up.
CLIENT = "127.88.77.66"
SPOOFED = "198.51.100.23"


def _from_client(url: str, path: str, headers: dict[str, str] | None = None) -> int:
    parts = urlsplit(url)
    assert parts.hostname is not None
    connection = http.client.HTTPConnection(
        parts.hostname, parts.port, timeout=10, source_address=(CLIENT, 0)
    )
    try:
        connection.request("GET", path, headers={"Connection": "close", **(headers or {})})
        reply = connection.getresponse()
        reply.read()
        return reply.status
    finally:
        connection.close()


def test_no_log_or_store_keeps_a_client_address_user_agent_or_referer_path(
    postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    workdir = tmp_path / "topology"
    with Topology.start(
        workdir, database_url=postgres_url, redis_url=redis_url, instances=2, workers=1
    ) as topology:
        admin = {"Authorization": f"Bearer {topology.admin_key}"}
        instance = topology.instances[0]
        status, link = _call(
            instance, "POST", "/api/v1/links", admin, {"url": "https://example.com/private"}
        )
        assert status == 201
        code = link["code"]
        secrets = {
            "User-Agent": SECRET_UA,
            "Referer": f"https://Ref.Example/{SECRET_PATH}?{SECRET_QUERY}",
            "X-Forwarded-For": SPOOFED,
        }
        assert _from_client(topology.url, f"/{code}", secrets) == 302
        # Counted per client in Redis, to slow down scanners of codes.
        assert _from_client(topology.url, "/NoSuchCode", secrets) == 404
        # A request the app cannot parse, sent to it directly: aiohttp logs the peer and
        # the raw header line it choked on.
        with socket.create_connection(
            (instance.host, instance.port), timeout=10, source_address=(CLIENT, 0)
        ) as connection:
            broken = f"Referer: {secrets['Referer']}\x01"
            connection.sendall(f"GET /x HTTP/1.1\r\nHost: sho.rt\r\n{broken}\r\n\r\n".encode())
            assert connection.recv(64).startswith(b"HTTP/1.0 400")
        # nginx's limit on the health endpoints rejects a burst of probes from one address.
        statuses = []
        for _ in range(3 * OPS_BURST):
            statuses.append(_from_client(topology.url, "/healthz", secrets))
            if statuses[-1] == 429:
                break
        assert statuses[-1] == 429, statuses
        # Every instance down: nginx's connects are refused, then it has none left to try.
        for index in range(len(topology.instances)):
            topology.kill(index)
        answers = [_from_client(topology.url, f"/{code}", secrets) for _ in range(6)]
        assert set(answers) == {502}, answers
        failures = topology.upstream_failures()
        assert failures["connect error"] >= 2 and failures["no live upstreams"] >= 1, failures
        entries = topology.access_log()
        stored = asyncio.run(_everything_stored(Settings(database_url=postgres_url), redis_url))

    rejected = [e for e in entries if e["status"] == 429 and e["limit_req"] == "REJECTED"]
    assert rejected and not rejected[0]["upstream_addr"], entries
    assert {e["client_network"] for e in entries if e["uri"] != "/api/v1/links"} == {
        "127.88.77.0/24"
    }
    logs = [*workdir.glob("nginx/*/*.log"), *workdir.glob("apps/*.log")]
    assert {path.name for path in logs} >= {"access.log", "error.log"}
    text = "\n".join(path.read_text(errors="replace") for path in logs)
    assert "client: " not in text  # no line of nginx's error log names any client
    for secret in (CLIENT, ".77.66", SPOOFED, SECRET_UA, "unique-ua-7f3a9c", SECRET_PATH):
        assert secret not in text, f"{secret!r} is logged"
        assert secret.encode() not in stored, f"{secret!r} is stored"
    assert SECRET_QUERY not in text and SECRET_QUERY.encode() not in stored
    assert code.encode() in stored and "127.88.77.0/24" in text  # the searches see the rest


def test_a_connect_timeout_is_counted_from_the_access_log(nginx_factory: NginxFactory) -> None:
    """What the chaos run counts as connect timeouts, now that nginx's error log omits them:
    an upstream whose accept queue is full drops the SYN, and nginx gives up after
    proxy_connect_timeout (2 s)."""
    with socket.socket() as full:
        full.bind(("127.0.0.1", free_port()))
        full.listen(0)  # one connection fills the queue; nothing ever accepts it
        with socket.create_connection(full.getsockname(), timeout=10):
            host, port = full.getsockname()
            nginx = nginx_factory.production([f"{host}:{port}"])
            status = _from_client(nginx.url, "/AnyCode")
    assert status == 504
    entries = access_log(nginx.access_log_path)
    assert [e["upstream_connect_time"] for e in entries] == ["-"]
    assert upstream_failures(entries) == {"connect timeout": 1}
    assert "client: " not in nginx.log_path.read_text()
