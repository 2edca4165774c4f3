"""The production topology under load: when an instance or a worker dies, no redirect fails.

Real processes (devservices/topology.py): nginx on nginx/nginx.conf in front of three instances
of two gunicorn workers. A bounded, paced load runs through nginx (about 90% redirects over
seeded links, 10% creates) while a process is SIGKILLed. Each request carries its index as
X-Request-ID, which nginx's JSON access log records beside every upstream it tried, so each
request's send time on the load's clock is joined to where nginx sent it. docs/RESILIENCE.md
reports the figures each test prints.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil
import pytest

from devservices.processes import hung
from tests.services import PROJECT_ROOT, PostgresServer, RedisServer
from tests.test_serve_process import accept_queue
from tests.topology import Topology

pytestmark = pytest.mark.slow

CONCURRENCY = 20
RATE = 200.0  # requests a second: modest, the machine's two cores are shared
CREATE_SHARE = 0.1
SEEDED_LINKS = 200
MAX_REQUESTS = 10_000  # more than any test's load lasts at RATE; the time limit is the backstop
LOAD_TIME_LIMIT = 45.0
WARM_UP = 1.5  # seconds of load before the kill
QUIET = 2.0  # seconds without an attempt on the dead instance that count as "routed around"
SETTLE = 1.0  # seconds of load after the last event
TEST_TIME_LIMIT = 90.0

# nginx.conf's passive health check: after max_fails failures, fail_timeout seconds' rest.
_SERVER = re.search(
    r"^\s*server app:8080 .*max_fails=(\d+) fail_timeout=(\d+)s;",
    (PROJECT_ROOT / "nginx" / "nginx.conf").read_text(encoding="utf-8"),
    re.MULTILINE,
)
assert _SERVER, "nginx.conf's upstream server line changed shape"
MAX_FAILS, FAIL_TIMEOUT = int(_SERVER[1]), float(_SERVER[2])


@dataclass
class Outcome:
    """One request of the load; times are seconds on the load's clock."""

    index: int
    kind: str  # "redirect" or "create"
    started: float
    ended: float
    status: int | None  # None: no HTTP answer at all
    error: str = ""
    code: str = ""  # the link a 201 created

    @property
    def ok(self) -> bool:
        return self.status == (302 if self.kind == "redirect" else 201)


class Load:
    """Up to ``total`` requests through nginx, RATE a second, at most CONCURRENCY in flight,
    until all are sent, ``stop()`` is called or LOAD_TIME_LIMIT seconds are scheduled."""

    def __init__(self, topology: Topology, codes: list[str], *, total: int = MAX_REQUESTS) -> None:
        rng = random.Random(7)
        self._plan = [
            ("create", "") if rng.random() < CREATE_SHARE else ("redirect", rng.choice(codes))
            for _ in range(total)
        ]
        self._url = topology.url
        self._auth = {"Authorization": f"Bearer {topology.admin_key}"}
        self._next = 0
        self._stopped = False
        self._t0 = time.monotonic()
        self.outcomes: dict[int, Outcome] = {}
        self.duration = 0.0

    def now(self) -> float:
        return time.monotonic() - self._t0

    def stop(self) -> None:
        self._stopped = True

    async def run(self) -> None:
        self._t0 = time.monotonic()
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(*(self._sender(session) for _ in range(CONCURRENCY)))
        self.duration = self.now()

    async def _sender(self, session: aiohttp.ClientSession) -> None:
        while not self._stopped and self._next < len(self._plan):
            index = self._next
            self._next += 1
            due = index / RATE
            if due > LOAD_TIME_LIMIT:
                return
            await asyncio.sleep(max(0.0, due - self.now()))
            if self._stopped:
                return
            self.outcomes[index] = await self._send(session, index)

    async def _send(self, session: aiohttp.ClientSession, index: int) -> Outcome:
        kind, code = self._plan[index]
        headers = {"X-Request-ID": f"load-{index}"}
        started = self.now()
        created = ""
        try:
            if kind == "redirect":
                async with session.get(
                    f"{self._url}/{code}", headers=headers, allow_redirects=False
                ) as response:
                    await response.read()
                    status = response.status
            else:
                async with session.post(
                    f"{self._url}/api/v1/links",
                    json={"url": f"https://example.com/load/{index}"},
                    headers={**headers, **self._auth},
                ) as response:
                    body = await response.read()
                    status = response.status
                    if status == 201:
                        created = json.loads(body)["code"]
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Outcome(index, kind, started, self.now(), None, repr(exc))
        return Outcome(index, kind, started, self.now(), status, "", created)

    def failures(self, kind: str) -> list[Outcome]:
        return [o for o in self.outcomes.values() if o.kind == kind and not o.ok]

    def failed_tries_on(self, entries: list[dict[str, Any]], address: str) -> list[Outcome]:
        """The load's requests that nginx tried on ``address`` without that try answering
        them: retried elsewhere (``address`` is not the last upstream) or failed."""
        return [
            self.outcomes[index]
            for index, tried in _upstreams(entries).items()
            if address in tried
            and index in self.outcomes
            and (tried[-1] != address or not self.outcomes[index].ok)
        ]

    def served_by(self, entries: list[dict[str, Any]], address: str) -> list[Outcome]:
        """The load's requests that ``address`` answered successfully."""
        return [
            self.outcomes[index]
            for index, tried in _upstreams(entries).items()
            if tried[-1] == address and index in self.outcomes and self.outcomes[index].ok
        ]

    def summary(self) -> dict[str, int]:
        outcomes = self.outcomes.values()
        return {
            "requests": len(self.outcomes),
            "redirects": sum(o.kind == "redirect" for o in outcomes),
            "creates": sum(o.kind == "create" for o in outcomes),
            "redirect_failures": len(self.failures("redirect")),
            "create_failures": len(self.failures("create")),
        }


def _upstreams(entries: list[dict[str, Any]]) -> dict[int, list[str]]:
    """Load request index -> every upstream nginx tried for it, in order."""
    return {
        int(entry["request_id"].removeprefix("load-")): entry["upstream_addr"].split(", ")
        for entry in entries
        if entry["request_id"].startswith("load-")
    }


async def _seed(topology: Topology) -> list[str]:
    """Creates the links the load follows, through nginx."""
    headers = {"Authorization": f"Bearer {topology.admin_key}"}
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def create(n: int) -> str:
            body = {"url": f"https://example.com/seed/{n}"}
            async with session.post(f"{topology.url}/api/v1/links", json=body) as response:
                assert response.status == 201, await response.text()
                code: str = (await response.json())["code"]
                return code

        return list(await asyncio.gather(*(create(n) for n in range(SEEDED_LINKS))))


async def _until(condition: Callable[[], bool], limit: float, what: str) -> None:
    """Polls the (blocking) ``condition`` in a thread until it holds, for ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not await asyncio.to_thread(condition):
        if time.monotonic() > deadline:
            pytest.fail(f"not within {limit} s: {what}")
        await asyncio.sleep(0.1)


async def _missing_links(database_url: str, codes: list[str]) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        found: int = await connection.fetchval(
            "SELECT count(*) FROM links WHERE code = ANY($1::text[])", codes
        )
    finally:
        await connection.close()
    return len(codes) - found


async def _recorded_clicks(database_url: str) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        clicks: int = await connection.fetchval(
            "SELECT coalesce(sum(clicks), 0)::bigint FROM links"
        )
    finally:
        await connection.close()
    return clicks


def _gone(process: psutil.Process) -> bool:
    """Exited, or a zombie that nobody reaps (our processes' parents are gone)."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _report(name: str, figures: dict[str, Any]) -> None:
    """One line per run, collected into docs/RESILIENCE.md (visible with ``-rP``)."""
    print(f"FIGURES {name} {json.dumps(figures)}")


def _clicks(load: Load, clicks: int) -> dict[str, int]:
    served = sum(o.kind == "redirect" and o.ok for o in load.outcomes.values())
    return {"clicks_recorded": clicks, "clicks_lost": served - clicks}


def _assert_nothing_acknowledged_lost_or_doubled(missing: int, figures: dict[str, Any]) -> None:
    assert missing == 0, f"{missing} acknowledged creates are not in the database"
    assert figures["clicks_lost"] >= 0, "a retried redirect counted its click twice"


async def test_a_killed_instance_costs_no_redirect_and_takes_traffic_again_after_restart(
    topology: Topology,
) -> None:
    victim = 1
    dead = topology.addresses[victim]
    load = Load(topology, await _seed(topology))
    async with asyncio.timeout(TEST_TIME_LIMIT):
        running = asyncio.create_task(load.run())
        await asyncio.sleep(WARM_UP)

        kill_began = load.now()
        await asyncio.to_thread(topology.kill, victim)
        killed_at = load.now()

        def routed_around() -> bool:
            tries = load.failed_tries_on(topology.access_log(), dead)
            last = max((o.started for o in tries), default=kill_began)
            return load.now() - max(last, kill_began) >= QUIET

        await _until(routed_around, FAIL_TIMEOUT - QUIET, f"nginx stops trying {dead}")
        restart_began = load.now()
        await asyncio.to_thread(topology.restart, victim)
        restarted_at = load.now()

        def back_in_rotation() -> bool:
            served = load.served_by(topology.access_log(), dead)
            return any(o.started >= restart_began for o in served)

        # nginx rests a failed server for fail_timeout, then tries it again.
        await _until(back_in_rotation, FAIL_TIMEOUT + 5, f"nginx sends {dead} traffic again")
        await asyncio.sleep(SETTLE)
        load.stop()
        await running

    entries = await asyncio.to_thread(topology.access_log)
    failed_tries = load.failed_tries_on(entries, dead)
    last_try = max(o.started for o in failed_tries) if failed_tries else kill_began
    back = min(o.started for o in load.served_by(entries, dead) if o.started >= restart_began)
    served_after_restart = await asyncio.to_thread(topology.served, victim)
    create_failures = load.failures("create")

    await asyncio.to_thread(topology.nginx.stop)
    for instance in topology.instances:  # a graceful stop writes the buffered clicks
        await asyncio.to_thread(instance.stop)
    created = [o.code for o in load.outcomes.values() if o.code]
    missing = await _missing_links(topology.database_url, created)
    clicks = await _recorded_clicks(topology.database_url)

    figures: dict[str, Any] = {
        **load.summary(),
        "kill_s": round(killed_at - kill_began, 3),
        "failed_tries_on_dead": len(failed_tries),
        "last_failed_try_after_kill_s": round(last_try - kill_began, 3),
        "restart_s": round(restarted_at - restart_began, 2),
        "back_after_kill_s": round(back - kill_began, 2),
        "back_after_restart_s": round(back - restarted_at, 2),
        "load_s": round(load.duration, 1),
    }
    _report("instance_kill", {**figures, **_clicks(load, clicks)})

    assert load.failures("redirect") == [], "nginx must retry every redirect on a live instance"
    assert len(create_failures) <= CONCURRENCY, create_failures
    for failure in create_failures:  # only creates in flight on the instance as it died
        assert failure.status == 502, failure
        assert failure.started <= killed_at + 0.5 and failure.ended >= kill_began, failure
    assert len(failed_tries) <= CONCURRENCY + MAX_FAILS, "nginx kept trying the dead instance"
    assert last_try - kill_began <= QUIET, "nginx took too long to stop trying it"
    assert back - restarted_at <= FAIL_TIMEOUT + 2
    assert served_after_restart > 0, "the restarted instance's /metrics shows no redirect"
    _assert_nothing_acknowledged_lost_or_doubled(missing, _clicks(load, clicks))


async def test_a_killed_worker_is_respawned_and_no_redirect_fails(
    postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    # Topology.start itself, as a chaos runner would use it, to check that it cleans up.
    with Topology.start(
        tmp_path / "topology", database_url=postgres_url, redis_url=redis_url
    ) as topology:
        instance = topology.instances[0]
        nginx = psutil.Process(int((topology.nginx.prefix / "nginx.pid").read_text()))
        processes = [nginx, *nginx.children()]
        for started in topology.instances:
            master = psutil.Process(started.pid)
            processes += [master, *master.children()]
        load = Load(topology, await _seed(topology))
        async with asyncio.timeout(TEST_TIME_LIMIT):
            running = asyncio.create_task(load.run())
            await asyncio.sleep(WARM_UP)

            before = set(instance.worker_pids())
            killed = await asyncio.to_thread(topology.kill_worker, 0)
            killed_at = load.now()

            def respawned() -> bool:
                workers = set(instance.worker_pids())
                return killed not in workers and len(workers) == 2

            await _until(respawned, 30, "gunicorn forks a replacement worker")
            respawned_at = load.now()
            (new,) = set(instance.worker_pids()) - before
            processes.append(psutil.Process(new))
            metrics_dir = Path(instance.env["PROMETHEUS_MULTIPROC_DIR"])

            def new_worker_answers() -> bool:
                # Direct and on a fresh connection each time, so either worker may accept it;
                # a worker's histogram file appears with the first request it answers.
                with urllib.request.urlopen(f"{instance.url}/healthz", timeout=5) as reply:
                    reply.read()
                return (metrics_dir / f"histogram_{new}.db").exists()

            await _until(new_worker_answers, 30, f"the new worker {new} answers")
            answering_at = load.now()
            await asyncio.sleep(SETTLE)
            load.stop()
            await running
        create_failures = load.failures("create")
        retried = load.failed_tries_on(topology.access_log(), topology.addresses[0])

    for process in processes:
        assert _gone(process), f"{process} outlived the topology"
    created = [o.code for o in load.outcomes.values() if o.code]
    missing = await _missing_links(postgres_url, created)
    clicks = await _recorded_clicks(postgres_url)

    figures: dict[str, Any] = {
        **load.summary(),
        "failed_tries_on_instance": len(retried),
        "respawn_s": round(respawned_at - killed_at, 2),
        "new_worker_answers_s": round(answering_at - killed_at, 2),
        "load_s": round(load.duration, 1),
    }
    _report("worker_kill", {**figures, **_clicks(load, clicks)})

    assert load.failures("redirect") == [], "nginx must retry every redirect on a live worker"
    # A create in flight on the killed worker cannot be retried (nginx never resends a POST).
    assert len(create_failures) <= CONCURRENCY, create_failures
    for failure in create_failures:
        assert failure.status == 502, failure
    _assert_nothing_acknowledged_lost_or_doubled(missing, _clicks(load, clicks))


async def test_hung_redis_then_hung_postgres_cost_no_redirect(
    postgres_url: str,
    redis_url: str,
    redis_server: RedisServer,
    postgres_server: PostgresServer,
    tmp_path: Path,
) -> None:
    """Partitions, not crashes: Redis, then every PostgreSQL process, SIGSTOPped for 4 s
    each under the load, through nginx and two instances of two workers. No redirect fails;
    creates go on while Redis hangs and get 503 at once while the store does (after the
    first calls of each worker, which wait for their timeout, open its breaker)."""
    outage = 4.0
    with Topology.start(
        tmp_path / "topology", database_url=postgres_url, redis_url=redis_url, instances=2
    ) as topology:
        workers = sum(len(instance.worker_pids()) for instance in topology.instances)
        load = Load(topology, await _seed(topology))
        async with asyncio.timeout(TEST_TIME_LIMIT):
            running = asyncio.create_task(load.run())
            await asyncio.sleep(WARM_UP)
            with hung(redis_server.pid):
                redis_hung = load.now()
                await asyncio.sleep(outage)
            redis_back = load.now()
            await asyncio.sleep(2.0)
            # The store hangs from some moment in between: suspending every process of it
            # takes a while on a busy machine, and a create sent meanwhile may hang with it.
            store_hanging = load.now()
            with hung(postgres_server.pid):
                store_hung = load.now()
                await asyncio.sleep(outage)
            store_back = load.now()
            await asyncio.sleep(2.0)
            load.stop()
            await running

    creates = [o for o in load.outcomes.values() if o.kind == "create"]
    during_redis = [o for o in creates if redis_hung <= o.started and o.ended <= redis_back]
    during_store = [o for o in creates if store_hung <= o.started and o.ended <= store_back]
    # The calls in flight in the first second wait for their timeout (1 s at most); each
    # worker's breaker opens after three such failures, and from then on it refuses at once.
    # A worker whose first store calls came later may still spend three on timeouts.
    slow = [o for o in during_store if o.ended - o.started >= 0.1]
    slow_late = [o for o in slow if o.started >= store_hung + 1.5]
    late = [o for o in creates if o.started >= store_back + 1.5]
    figures: dict[str, Any] = {
        **load.summary(),
        "creates_during_redis_hang": len(during_redis),
        "creates_during_store_hang": len(during_store),
        "store_hang_503_max_ms": round(max(o.ended - o.started for o in during_store) * 1000),
        "store_hang_503_over_100_ms": len(slow),
        "of_those_sent_after_1_5_s": len(slow_late),
        "load_s": round(load.duration, 1),
    }
    _report("hung_redis_then_store", figures)

    assert load.failures("redirect") == [], "every redirect must succeed through both outages"
    assert during_redis and {o.status for o in during_redis} == {201}
    assert during_store and {o.status for o in during_store} == {503}
    assert max(o.ended - o.started for o in during_store) < 1.2
    assert len(slow_late) <= 3 * workers, slow_late
    assert len(during_store) - len(slow) >= 20, "too few creates were refused at once"
    assert late and {o.status for o in late} == {201}
    # Nothing but the store's outage failed a create.
    failed = [o for o in creates if not o.ok]
    assert all(store_hanging <= o.started <= store_back + 1.5 for o in failed), failed


OPEN_RATE = 400.0  # requests a second, sent on schedule whatever is still in flight
OPEN_SECONDS = 6.0
STALL = 2.0


async def test_a_stalled_instance_costs_no_redirect_under_open_model_load(
    topology: Topology,
) -> None:
    """The burst after a stall: an instance SIGSTOPped for 2 s (master and workers) while
    redirects keep arriving on schedule, then SIGCONTed. Its kernel queues the connections
    nginx opens meanwhile, up to the listen backlog, and the instance meets them all at once
    when it resumes; with aiohttp's 128 that queue overflowed. No redirect may fail."""
    assert all(accept_queue(instance.port) >= 1024 for instance in topology.instances)
    codes = await _seed(topology)
    rng = random.Random(11)
    outcomes: list[tuple[float, int | None]] = []
    connector = aiohttp.TCPConnector(limit=0)  # open model: no cap on requests in flight
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        asyncio.timeout(TEST_TIME_LIMIT),
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
    ):
        started = time.monotonic()

        async def redirect(due: float) -> None:
            await asyncio.sleep(max(0.0, due - (time.monotonic() - started)))
            try:
                url = f"{topology.url}/{rng.choice(codes)}"
                async with session.get(url, allow_redirects=False) as response:
                    outcomes.append((due, response.status))
            except (aiohttp.ClientError, TimeoutError):
                outcomes.append((due, None))

        requests = [
            asyncio.create_task(redirect(n / OPEN_RATE))
            for n in range(int(OPEN_RATE * OPEN_SECONDS))
        ]
        await asyncio.sleep(WARM_UP)
        with hung(topology.instances[0].pid):
            stalled = time.monotonic() - started
            await asyncio.sleep(STALL)
        await asyncio.gather(*requests)

    failed = [(due, status) for due, status in outcomes if status != 302]
    _report(
        "stalled_instance_open_model",
        {
            "redirects": len(outcomes),
            "failed": len(failed),
            "stalled_at_s": round(stalled, 2),
            "stall_s": STALL,
            "rate": OPEN_RATE,
        },
    )
    assert len(outcomes) == int(OPEN_RATE * OPEN_SECONDS)
    assert failed == [], f"{len(failed)} redirects failed around the stall"
