"""The core paths, measured side by side with a bare aiohttp floor in one run.

On 127.0.0.1 only, in a private temporary folder, it starts:

- a PostgreSQL cluster of its own on a free port (fsync off, so a shared disk is not what
  gets measured) and a Redis of its own;
- app "hit": `python -m shortener serve --workers 1` on a private SQLite file with a one-hour
  L1, so every measured redirect is answered from L1 (metrics, visit recording and
  everything else on, as by default);
- app "miss": the same against PostgreSQL with `SHORTENER_L1_SIZE=0`, so every redirect
  reads the store;
- app "production": PostgreSQL and Redis with the default caches, behind a trusted proxy
  (127.0.0.1): it answers a scanner of random, well-formed, unknown codes sent from 65,000
  client addresses through X-Forwarded-For, and the creates;
- "bare": bench/bare.py, aiohttp + uvloop answering every GET with a constant 302.

Every server (PostgreSQL and Redis included) is pinned to CPU 1 and wrk to CPU 0. Before
each round it waits (up to --quiet-wait seconds) for the 1-minute load average to fall
under 1.0, and the table gives the load average each round started at. Rounds are
interleaved (hit, bare, miss, unknown, hit, bare, ...); each figure is the median over the
rounds, and each ratio the median of the ratios within a round. Then the L1 redirect and
bare again at 32 connections (their p99s), then creates (POST /api/v1/links of a url no
other request sends, 16 connections, the per-key limit raised out of the way) against the
same app's L1 redirect rate, in interleaved rounds, each round with the creates in two
placements: PostgreSQL and Redis on CPU 1 with the app, as above, then every process and
thread of the bench's own PostgreSQL cluster (the postmaster and all its children, the app's
pooled backends included) and Redis moved to CPU 0 (wrk's core, shared with wrk), leaving
the app alone on CPU 1 as in production, and moved back after the run. Besides req/s and
latency, it reads each server process's CPU time around each run, and for creates
PostgreSQL's and Redis's too: CPU per request moves less than req/s when other work shares
the machine.
The table is printed and written as the section "## Core redirect path" of docs/BENCHMARKS.md.
Every process it starts is stopped, by process group, on success, error, Ctrl-C or SIGTERM.

    python bench/redirect.py [--duration S] [--connections C] [--threads T] [--rounds N]
                             [--quiet-wait S] [--out docs/BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, NoReturn

import aiohttp
import psutil
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # devservices, in the checkout

from devservices.app import AppInstance, HttpProcess, keys_create
from devservices.postgres import PostgresServer, postgres_bindir
from devservices.processes import (
    Server,
    ServiceError,
    close_all,
    debian_binary,
    free_port,
    log_tail,
    pin,
)
from devservices.redis import REDIS_SERVER, RedisServer

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
SERVER_CPU = "1"
CLIENT_CPU = "0"
# Every seeded link has this shape; bench/bare.py answers with the first, so lengths match.
SEED_URL = "https://example.com/bench/landing/page-{:04d}?utm_source=bench&utm_medium=wrk"
MIN_LINKS = 256
WARMUP_SECONDS = 2
TARGET_RATIO = 0.90
# Creates against the same worker's redirects from L1, and the p99 at 32 connections.
CREATE_TARGET = 0.10
P99_CONNECTIONS = 32
P99_TARGET = 1.5
CREATE_CONNECTIONS = 16
# What the creates need besides the app, by the names Processes started them under (and
# the names the report gives them): moved to CLIENT_CPU for the creates apart from the app.
BACKING = {"postgres": "PostgreSQL", "redis": "Redis"}
# A round starts once the 1-minute load average is under this (or the wait is over).
QUIET_LOAD = 1.0
# Per-round app/bare ratios further apart than this mean the machine was busy during the run.
NOISY_SPREAD = 0.15
SECTION = "## Core redirect path"
INTRO = """# Benchmarks

Figures from the scripts in [bench/](../bench/), each run on one machine: Debian 12 with
2 cores that the servers share with the load generator (servers pinned to CPU 1, wrk to
CPU 0) and, often, with other work, since the machine is shared. All traffic is on loopback
(127.0.0.1). Absolute numbers move with the machine's load; the ratios are measured side by
side in one run, rounds interleaved, and are what to compare between runs.
"""

# wrk calls done() once, with every thread's figures merged; latencies are in microseconds.
# A script that sets bench_threads and a `wrong` status per thread gets one reported too.
LUA_DONE = """
done = function(summary, latency, _)
  local e = summary.errors
  local wrong = 0
  for _, thread in ipairs(bench_threads or {}) do
    wrong = math.max(wrong, thread:get("wrong") or 0)
  end
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,'
    .. '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"wrong":%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout, wrong))
end
"""


class BenchError(RuntimeError):
    """A step of the benchmark failed; the message says which and ends with any log tail."""


@dataclass(frozen=True, slots=True)
class Options:
    duration: int
    connections: int
    threads: int
    rounds: int
    out: Path
    # Seconds to wait, before each round, for the 1-minute load average to fall under
    # QUIET_LOAD; a round that starts louder says so in the table.
    quiet_wait: float = 900.0


@dataclass(frozen=True, slots=True)
class WrkRun:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    wrong_status: int  # a status other than the expected one, if a script watches for it
    # CPU time of the server process per request: steadier than req/s when others share CPU 1.
    cpu_us: float
    # The errors by wrk's kinds: connect, read, write, status (an answer >= 400), timeout.
    error_kinds: tuple[tuple[str, int], ...] = ()
    # Every figure the Lua script printed, for a script that counts more than LUA_DONE does.
    figures: Mapping[str, int] = field(default_factory=dict, compare=False)
    # The 1-minute load average when its round started.
    load: float = math.nan
    # CPU time per request of the processes behind the server (PostgreSQL, Redis) by name.
    backing_cpu_us: Mapping[str, float] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class Figure:
    """One case's runs and their medians."""

    runs: tuple[WrkRun, ...]

    @property
    def rps(self) -> float:
        return statistics.median(run.rps for run in self.runs)

    @property
    def p50_ms(self) -> float:
        return statistics.median(run.p50_ms for run in self.runs)

    @property
    def p99_ms(self) -> float:
        return statistics.median(run.p99_ms for run in self.runs)

    @property
    def cpu_us(self) -> float:
        return statistics.median(run.cpu_us for run in self.runs)

    def backing_cpu_us(self, name: str) -> float:
        """The median CPU per request of the backing process `name` (nan if not read)."""
        return statistics.median(run.backing_cpu_us.get(name, math.nan) for run in self.runs)

    @property
    def cpu_text(self) -> str:
        """The server's CPU per request, with its backing processes' own if they were read."""
        names = self.runs[0].backing_cpu_us
        backing = ", ".join(f"{name} {self.backing_cpu_us(name):.0f}" for name in names)
        return f"{self.cpu_us:.0f}" + (f" (+ {backing})" if backing else "")

    @property
    def errors(self) -> int:
        return sum(run.errors for run in self.runs)

    @property
    def errors_text(self) -> str:
        if not self.errors:
            return "0"
        kinds: dict[str, int] = {}
        for run in self.runs:
            for kind, count in run.error_kinds:
                kinds[kind] = kinds.get(kind, 0) + count
        detail = [f"{count} {kind}" for kind, count in kinds.items() if count]
        wrong = max(run.wrong_status for run in self.runs)
        if wrong:
            detail.append(f"e.g. HTTP {wrong}")
        return f"{self.errors} ({', '.join(detail)})"


@dataclass(frozen=True, slots=True)
class Results:
    hit: Figure
    bare: Figure
    miss: Figure
    # Creates with PostgreSQL and Redis on the app's core (SERVER_CPU).
    create: Figure
    # The create app's own L1 redirects, each run seconds before a create run: the rate the
    # creates are compared with.
    full_hit: Figure
    # Unknown, well-formed codes from many client addresses (PostgreSQL and Redis behind).
    unknown: Figure
    # The L1 redirect and bare at P99_CONNECTIONS, for their tail latencies.
    hit_p99: Figure
    bare_p99: Figure
    # Creates with PostgreSQL and Redis on wrk's core (CLIENT_CPU), the app alone on its own.
    create_apart: Figure


# --- processes ---------------------------------------------------------------------------


class Processes:
    """Every server the benchmark starts (devservices starters), stopped together."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._started: list[Server] = []
        self._logs: dict[str, Path] = {}
        self._cleanups: list[Callable[[], object]] = []
        # Each process by the name it was started under.
        self.pids: dict[str, int] = {}

    def start(self, name: str, service: Server, cleanup: Callable[[], object] | None = None) -> int:
        """Starts ``service``, pins it (and all it forks later) to SERVER_CPU; its pid."""
        self._started.append(service)
        self._logs[name] = service.log_path
        if cleanup is not None:
            self._cleanups.append(cleanup)
        try:
            service.start()
        except ServiceError as exc:
            raise BenchError(str(exc)) from None
        pin(service.pid, {int(SERVER_CPU)})
        self.pids[name] = service.pid
        return service.pid

    def log_tails(self) -> str:
        return "\n".join(log_tail(path, 30) for path in self._logs.values())

    def stop_all(self) -> None:
        try:
            close_all(self._started[::-1])
        finally:
            self._started.clear()
            for cleanup in self._cleanups:
                cleanup()


def _raise_on_sigterm(_signum: int, _frame: object) -> NoReturn:
    raise SystemExit("stopped by SIGTERM")


def pinned(cpu: str, command: Sequence[str]) -> list[str]:
    return ["taskset", "-c", cpu, *command]


def _tree(pid: int) -> list[psutil.Process]:
    """Process `pid` and every descendant alive now (for PostgreSQL, the postmaster and all
    its children: background processes and every backend, pooled ones included)."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def affinities(pid: int) -> dict[str, set[int]]:
    """The CPUs of every process of `pid`'s tree and of each of their threads, by a label
    naming the process (and thread)."""
    found: dict[str, set[int]] = {}
    for member in _tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
            label = f"{member.name()} (pid {member.pid})"
            found[label] = set(member.cpu_affinity())
            for thread in member.threads():
                if thread.id != member.pid:
                    found[f"{label} thread {thread.id}"] = os.sched_getaffinity(thread.id)
    return found


def misplaced(found: Mapping[str, set[int]], cpus: set[int]) -> list[str]:
    """What of `found` (label to CPUs) is not on exactly `cpus`, each said with its CPUs."""
    return [f"{label} on CPUs {sorted(on)}" for label, on in found.items() if on != cpus]


def place(processes: Processes, cpu: str) -> None:
    """Moves every process and thread of the bench's PostgreSQL and Redis to `cpu` (their
    later children inherit it), and checks that each is there."""
    cpus = {int(cpu)}
    for name in BACKING:
        pin(processes.pids[name], cpus)
    wrong = [line for name in BACKING for line in misplaced(affinities(processes.pids[name]), cpus)]
    if wrong:
        raise BenchError(
            f"could not move PostgreSQL and Redis to CPU {cpu}, still elsewhere: {'; '.join(wrong)}"
        )


@contextlib.contextmanager
def backing_on(processes: Processes, cpu: str) -> Iterator[None]:
    """PostgreSQL and Redis on `cpu` for the block, then back on SERVER_CPU."""
    place(processes, cpu)
    try:
        yield
    finally:
        place(processes, SERVER_CPU)


# --- PostgreSQL --------------------------------------------------------------------------


def start_postgres(processes: Processes) -> str:
    """A private cluster on a free port; returns its URL."""
    server = PostgresServer.create(processes.workdir)
    processes.start("postgres", server, lambda: shutil.rmtree(server.base_dir, ignore_errors=True))
    return server.url("postgres")


def postgres_version() -> str:
    out = subprocess.run(
        [str(postgres_bindir() / "postgres"), "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()[2]  # "postgres (PostgreSQL) 15.x (Debian ...)"


# --- the servers -------------------------------------------------------------------------


def app_env(database_url: str, l1_size: int, l1_ttl: float | None = 3600) -> dict[str, str]:
    """The app's environment; `l1_ttl` None leaves the app's default L1 TTL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHORTENER_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if l1_ttl is not None:
        env["SHORTENER_L1_TTL"] = f"{l1_ttl:g}"
    env.update(
        SHORTENER_DATABASE_URL=database_url,
        SHORTENER_L1_SIZE=str(l1_size),
        SHORTENER_LOG_LEVEL="warning",
        # Throughput, not abuse: the per-key create limit would answer 429 within a second.
        SHORTENER_CREATES_PER_KEY_PER_MINUTE=str(10**9),
    )
    return env


def cpu_seconds(pid: int) -> float:
    """User and system time the process has used so far, all its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> dict[tuple[int, float], float]:
    """User and system seconds of each process of `pid`'s tree alive now, by pid and start
    time (so that a reused pid is another process)."""
    times: dict[tuple[int, float], float] = {}
    for member in _tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            used = member.cpu_times()
            times[(member.pid, member.create_time())] = used.user + used.system
    return times


def cpu_spent(
    before: Mapping[tuple[int, float], float], after: Mapping[tuple[int, float], float]
) -> float:
    """CPU seconds the processes alive at `after` used since `before`: one started in
    between counts whole; one that ended in between is not seen."""
    return sum(used - before.get(process, 0.0) for process, used in after.items())


def start_app(processes: Processes, name: str, env: Mapping[str, str]) -> AppInstance:
    app = AppInstance(env, workers=1, port=free_port(), log_path=processes.workdir / f"{name}.log")
    processes.start(name, app)
    return app


def start_bare(processes: Processes) -> HttpProcess:
    port = free_port()
    command = [sys.executable, str(ROOT / "bench" / "bare.py"), "--port", str(port)]
    command += ["--location", SEED_URL.format(0)]
    bare = HttpProcess(
        "bare", command, port, processes.workdir / "bare.log", ready_path="/ready", status="302"
    )
    processes.start("bare", bare)
    return bare


def create_key(env: Mapping[str, str]) -> str:
    return keys_create(env, "bench")


# --- HTTP: seeding, warming, checking ----------------------------------------------------


def request(
    port: int, method: str, path: str, body: bytes | None = None, key: str | None = None
) -> tuple[int, str | None, bytes]:
    """One request on a fresh connection: status, Location and body."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=5)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.getheader("Location"), response.read()
    finally:
        connection.close()


def seed_links(port: int, key: str, count: int) -> list[str]:
    codes = []
    for i in range(count):
        body = json.dumps({"url": SEED_URL.format(i)}).encode()
        status, _, answer = request(port, "POST", "/api/v1/links", body, key)
        if status != 201:
            raise BenchError(f"creating a link answered {status}: {answer[:300]!r}")
        codes.append(json.loads(answer)["code"])
    return codes


def check_redirects(port: int, codes: Sequence[str]) -> None:
    """Follows every code once: a check that each redirects right, and the L1 warm-up."""
    for i, code in enumerate(codes):
        status, location, _ = request(port, "GET", f"/{code}")
        if status != 302 or location != SEED_URL.format(i):
            raise BenchError(f"GET /{code} answered {status} {location}, not 302 to the seed")


# --- wrk ---------------------------------------------------------------------------------


# GETs over a Lua list `paths`, each thread from its own `start`: the prepared requests are
# built once, so wrk spends its time on the server, not in Lua.
ROTATE_LUA = """
local prepared = {}
local i = 0
init = function(_)
  for k, path in ipairs(paths) do prepared[k] = wrk.format("GET", path) end
  i = start
end
request = function()
  i = i % #prepared + 1
  return prepared[i]
end
"""


def redirect_script(workdir: Path, codes: Sequence[str], threads: int) -> Path:
    """GETs rotating over the codes; each thread starts at its own place in the list."""
    paths = ",\n  ".join(json.dumps(f"/{code}") for code in codes)
    script = f"""
local paths = {{
  {paths}
}}
local threads = 0
setup = function(thread)
  thread:set("start", threads * {len(codes) // threads})
  threads = threads + 1
end
"""
    return _write(workdir / "redirect.lua", script + ROTATE_LUA + LUA_DONE)


def create_script(workdir: Path, key: str) -> Path:
    """POSTs of a url no other request of the run (or of an earlier wrk run) sends: the
    seeded urls' shape with a path of the run's start second, the thread and a counter."""
    prefix, query = SEED_URL.split("?")
    url = prefix.replace("{:04d}", "%d-%d-%d") + "?" + query
    script = f"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
bench_threads = {{}}
thread_id = 0
local started = os.time()
local sent = 0
setup = function(thread)
  table.insert(bench_threads, thread)
  thread:set("thread_id", #bench_threads)
end
request = function()
  sent = sent + 1
  local url = string.format("{url}", started, thread_id, sent)
  return wrk.format(nil, nil, nil, '{{"url": "' .. url .. '"}}')
end
response = function(status, _, _)
  if status ~= 201 then wrong = status end
end
"""
    return _write(workdir / "create.lua", script + LUA_DONE)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def run_wrk(target: Target, options: Options, duration: int) -> WrkRun:
    command = ["wrk", "-t", str(options.threads), "-c", str(options.connections)]
    command += [
        "-d",
        f"{duration}s",
        "-s",
        str(target.script),
        f"http://{LOOPBACK}:{target.port}{target.path}",
    ]
    cpu_before = cpu_seconds(target.pid) if target.pid is not None else math.nan
    backing_before = {name: tree_cpu(pid) for name, pid in target.backing.items()}
    out = subprocess.run(
        pinned(CLIENT_CPU, command),
        capture_output=True,
        text=True,
        check=True,
        timeout=duration + 30,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise BenchError(f"wrk printed no figures:\n{out.stdout}\n{out.stderr}")
    cpu = cpu_seconds(target.pid) - cpu_before if target.pid is not None else math.nan
    backing = {
        name: cpu_spent(backing_before[name], tree_cpu(pid)) for name, pid in target.backing.items()
    }
    figures = json.loads(lines[-1])
    requests = max(figures["requests"], 1)
    kinds = tuple(
        (kind, figures[kind]) for kind in ("connect", "read", "write", "status", "timeout")
    )
    return WrkRun(
        rps=figures["requests"] / (figures["duration_us"] / 1e6),
        p50_ms=figures["p50_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
        errors=sum(count for _, count in kinds),
        wrong_status=figures["wrong"],
        cpu_us=cpu * 1e6 / requests,
        error_kinds=kinds,
        figures=figures,
        backing_cpu_us={name: spent * 1e6 / requests for name, spent in backing.items()},
    )


# --- the run -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """Where a wrk run goes: a port, the Lua script that makes its requests, and their path.

    With the server's pid, the run also reads the server's CPU time per request, and that of
    every process of each tree in `backing` (a name to its root pid).
    """

    port: int
    script: Path
    path: str = "/"
    pid: int | None = None
    backing: Mapping[str, int] = field(default_factory=dict)


def measure(options: Options, processes: Processes) -> Results:
    say("starting PostgreSQL, Redis, three apps and the bare server, all pinned to CPU 1")
    postgres_url = start_postgres(processes)
    redis_url = start_redis(processes)
    hit_env = app_env(f"sqlite:///{processes.workdir / 'hit.db'}", l1_size=100_000)
    miss_env = app_env(postgres_url, l1_size=0)
    # Production-like: PostgreSQL and Redis, default caches, behind a trusted proxy.
    full_env = app_env(postgres_url.rsplit("/", 1)[0] + "/production", l1_size=100_000, l1_ttl=None)
    full_env.update(SHORTENER_REDIS_URL=redis_url, SHORTENER_TRUSTED_PROXIES=LOOPBACK)
    create_database(postgres_url, "production")
    hit = start_app(processes, "app-hit", hit_env)
    miss = start_app(processes, "app-miss", miss_env)
    full = start_app(processes, "app-full", full_env)
    bare = start_bare(processes)

    links = max(MIN_LINKS, 4 * options.connections)
    say(f"seeding {links} links into each app through the API, checking each redirect")
    hit_lua = seeded_script(processes.workdir / "hit", hit.port, hit_env, links, options)
    miss_lua = seeded_script(processes.workdir / "miss", miss.port, miss_env, links, options)
    unknown_lua = _write(processes.workdir / "unknown.lua", UNKNOWN_LUA + LUA_DONE)
    targets = {
        "hit": Target(hit.port, hit_lua, pid=hit.pid),
        "bare": Target(bare.port, hit_lua, pid=bare.pid),
        "miss": Target(miss.port, miss_lua, pid=miss.pid),
        "unknown": Target(full.port, unknown_lua, pid=full.pid),
    }
    runs = run_rounds(targets, options)
    runs["unknown"] = [_expected_not_found(run) for run in runs["unknown"]]
    say(f"the L1 redirect and bare again at {P99_CONNECTIONS} connections, for p99")
    tail_options = replace(options, connections=P99_CONNECTIONS)
    tails = run_rounds({"hit": targets["hit"], "bare": targets["bare"]}, tail_options)
    full_hits, creates, creates_apart = create_rounds(processes, full, full_env, options)
    return Results(
        hit=Figure(tuple(runs["hit"])),
        bare=Figure(tuple(runs["bare"])),
        miss=Figure(tuple(runs["miss"])),
        create=Figure(tuple(creates)),
        full_hit=Figure(tuple(full_hits)),
        unknown=Figure(tuple(runs["unknown"])),
        hit_p99=Figure(tuple(tails["hit"])),
        bare_p99=Figure(tuple(tails["bare"])),
        create_apart=Figure(tuple(creates_apart)),
    )


def create_rounds(
    processes: Processes, full: AppInstance, env: Mapping[str, str], options: Options
) -> tuple[list[WrkRun], list[WrkRun], list[WrkRun]]:
    """Interleaved rounds on the production-like app, each after a quiet wait: its L1
    redirects (at the bench's connections), creates (at CREATE_CONNECTIONS) with PostgreSQL
    and Redis on the app's core, then creates with them on wrk's core."""
    links = max(MIN_LINKS, 4 * options.connections)
    say(f"seeding {links} links into the PostgreSQL + Redis app, for its L1 redirect rate")
    hit_lua = seeded_script(processes.workdir / "full", full.port, env, links, options)
    redirects = Target(full.port, hit_lua, pid=full.pid)
    create_options = replace(options, connections=max(CREATE_CONNECTIONS, options.threads))
    create_lua = create_script(processes.workdir, create_key(env))
    backing = {label: processes.pids[name] for name, label in BACKING.items()}
    create = Target(full.port, create_lua, "/api/v1/links", full.pid, backing)
    run_wrk(redirects, options, WARMUP_SECONDS)
    run_wrk(create, create_options, WARMUP_SECONDS)
    with backing_on(processes, CLIENT_CPU):
        run_wrk(create, create_options, WARMUP_SECONDS)
    hits: list[WrkRun] = []
    creates: list[WrkRun] = []
    apart: list[WrkRun] = []
    for round_number in range(1, options.rounds + 1):
        load = wait_for_quiet(options.quiet_wait)
        hits.append(replace(run_wrk(redirects, options, options.duration), load=load))
        creates.append(replace(run_wrk(create, create_options, options.duration), load=load))
        with backing_on(processes, CLIENT_CPU):
            apart.append(replace(run_wrk(create, create_options, options.duration), load=load))
        counted = f"round {round_number}/{options.rounds}"
        say(f"{counted} redirect (app with creates) {_describe(hits[-1])}")
        say(f"{counted} create, PostgreSQL and Redis on CPU {SERVER_CPU} {_describe(creates[-1])}")
        say(f"{counted} create, PostgreSQL and Redis on CPU {CLIENT_CPU} {_describe(apart[-1])}")
    return hits, creates, apart


def _expected_not_found(run: WrkRun) -> WrkRun:
    """wrk counts every answer >= 400 as an error; for unknown codes a 404 is the answer."""
    if run.wrong_status:
        return run
    kinds = tuple((kind, 0 if kind == "status" else count) for kind, count in run.error_kinds)
    return replace(run, errors=sum(count for _, count in kinds), error_kinds=kinds)


def start_redis(processes: Processes) -> str:
    """A redis-server on a free port with no persistence; returns its URL."""
    directory = processes.workdir / "redis"
    directory.mkdir()
    redis = RedisServer(REDIS_SERVER, directory, free_port())
    processes.start("redis", redis)
    return redis.url


def create_database(postgres_url: str, name: str) -> None:
    """A second database in the cluster, so that each app has a schema of its own."""
    subprocess.run(
        [str(postgres_bindir() / "psql"), postgres_url, "-qc", f"CREATE DATABASE {name}"],
        check=True,
        capture_output=True,
        timeout=60,
    )


# A scanner: random well-formed codes that name no link (7 characters, as generated ones),
# each from one of 65,000 client addresses behind the trusted proxy, so that no address
# reaches the per-address limit for unknown codes and each request costs its full lookup.
UNKNOWN_LUA = """
local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
local picks = {}
init = function(_)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
end
request = function()
  for i = 1, 7 do
    local r = math.random(1, #alphabet)
    picks[i] = alphabet:sub(r, r)
  end
  local client = string.format("198.18.%d.%d", math.random(0, 255), math.random(1, 254))
  return wrk.format("GET", "/" .. table.concat(picks), {["X-Forwarded-For"] = client})
end
bench_threads = {}
setup = function(thread) table.insert(bench_threads, thread) end
response = function(status, _, _)
  if status ~= 404 then wrong = status end
end
"""


def seeded_script(
    workdir: Path, port: int, env: Mapping[str, str], links: int, options: Options
) -> Path:
    """Seeds links with a fresh key, follows each once (warming L1), and scripts their GETs."""
    codes = seed_links(port, create_key(env), links)
    check_redirects(port, codes)
    workdir.mkdir()
    return redirect_script(workdir, codes, options.threads)


def run_rounds(targets: Mapping[str, Target], options: Options) -> dict[str, list[WrkRun]]:
    """Interleaved rounds (every target once a round); each round waits for a quiet machine."""
    say(f"warming each server with wrk for {WARMUP_SECONDS} s")
    for target in targets.values():
        run_wrk(target, options, WARMUP_SECONDS)
    runs: dict[str, list[WrkRun]] = {name: [] for name in targets}
    for round_number in range(1, options.rounds + 1):
        load = wait_for_quiet(options.quiet_wait)
        for name, target in targets.items():
            run = replace(run_wrk(target, options, options.duration), load=load)
            runs[name].append(run)
            say(f"round {round_number}/{options.rounds} {name:<7} {_describe(run)}")
    return runs


def wait_for_quiet(limit: float, poll: float = 5.0) -> float:
    """Waits up to `limit` seconds for the 1-minute load average to fall under QUIET_LOAD;
    returns the load average it starts at."""
    deadline = time.monotonic() + limit
    load = os.getloadavg()[0]
    if load >= QUIET_LOAD:
        say(f"load average {load:.2f}: waiting up to {limit:.0f} s for it to fall under 1.0")
    while load >= QUIET_LOAD and time.monotonic() < deadline:
        time.sleep(poll)
        load = os.getloadavg()[0]
    return load


def loads_text(runs: Sequence[WrkRun]) -> str:
    """The load averages the rounds started at, and how many of them were quiet."""
    loads = [run.load for run in runs]
    quiet = sum(load < QUIET_LOAD for load in loads)
    listed = ", ".join(f"{load:.2f}" for load in loads)
    return f"{listed} ({quiet} of {len(loads)} rounds under {QUIET_LOAD:.1f})"


def _describe(run: WrkRun) -> str:
    errors = f", {Figure((run,)).errors_text} errors" if run.errors else ""
    cpu = "" if math.isnan(run.cpu_us) else f"  {Figure((run,)).cpu_text} us CPU/req"
    return f"{run.rps:8.0f} req/s  p50 {run.p50_ms:6.2f} ms  p99 {run.p99_ms:6.2f} ms{cpu}{errors}"


def say(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", flush=True)


# --- the report --------------------------------------------------------------------------


def paired_ratios(numerator: Figure, denominator: Figure) -> list[float]:
    """The ratio within each round, where both ran seconds apart under much the same load."""
    pairs = zip(numerator.runs, denominator.runs, strict=True)
    return [top.rps / bottom.rps for top, bottom in pairs]


def paired_ratio(numerator: Figure, denominator: Figure) -> float:
    return statistics.median(paired_ratios(numerator, denominator))


def table(results: Results, options: Options) -> str:
    hit_ratio = paired_ratio(results.hit, results.bare)
    miss_ratio = paired_ratio(results.miss, results.hit)
    unknown_cpu = results.unknown.cpu_us / results.hit.cpu_us
    create_ratio = paired_ratio(results.create, results.full_hit)
    apart_ratio = paired_ratio(results.create_apart, results.full_hit)
    p99_ratio = results.hit_p99.p99_ms / results.bare_p99.p99_ms
    c, p = f"{options.connections} connections", f"{P99_CONNECTIONS} connections"
    rows = [
        (f"app, redirect from L1 ({c})", results.hit, f"{hit_ratio:.2f} of bare"),
        (f"bare aiohttp + uvloop 302 ({c})", results.bare, "1.00"),
        (f"app, redirect from PostgreSQL, L1 off ({c})", results.miss, f"{miss_ratio:.2f} of L1"),
        (
            f"app, unknown code, PostgreSQL + Redis, 65,000 client addresses ({c})",
            results.unknown,
            f"CPU {unknown_cpu:.1f}x an L1 redirect's",
        ),
        (
            f"app, PostgreSQL + Redis, redirect from L1 ({c})",
            results.full_hit,
            f"{paired_ratio(results.full_hit, results.hit):.2f} of the SQLite app's",
        ),
        (
            f"the same app, create, PostgreSQL and Redis on its core ({CREATE_CONNECTIONS} "
            "connections)",
            results.create,
            f"{create_ratio:.3f} of its L1 req/s",
        ),
        (
            f"the same app, create, PostgreSQL and Redis on wrk's core ({CREATE_CONNECTIONS} "
            "connections)",
            results.create_apart,
            f"{apart_ratio:.3f} of its L1 req/s",
        ),
        (f"app, redirect from L1 ({p})", results.hit_p99, f"p99 {p99_ratio:.2f}x bare"),
        (f"bare aiohttp + uvloop 302 ({p})", results.bare_p99, "1.00"),
    ]
    lines = [
        "| case | req/s | p50 ms | p99 ms | ratio | server CPU µs/req | req/s by round "
        "| load avg at round start | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: |",
    ]
    for name, figure, ratio in rows:
        by_round = ", ".join(f"{run.rps:.0f}" for run in figure.runs)
        lines.append(
            f"| {name} | {figure.rps:.0f} | {figure.p50_ms:.2f} | {figure.p99_ms:.2f} "
            f"| {ratio} | {figure.cpu_text} | {by_round} | {loads_text(figure.runs)} "
            f"| {figure.errors_text} |"
        )
    return "\n".join(lines)


def reading(results: Results) -> str:
    by_round = paired_ratios(results.hit, results.bare)
    ratio = statistics.median(by_round)
    of_medians = results.hit.rps / results.bare.rps
    cpu = results.hit.cpu_us / results.bare.cpu_us
    create_rounds = paired_ratios(results.create, results.full_hit)
    create_ratio = statistics.median(create_rounds)
    apart_rounds = paired_ratios(results.create_apart, results.full_hit)
    apart_ratio = statistics.median(apart_rounds)
    p99_ratio = results.hit_p99.p99_ms / results.bare_p99.p99_ms
    figures = (
        results.hit,
        results.bare,
        results.miss,
        results.unknown,
        results.create,
        results.full_hit,
        results.hit_p99,
        results.bare_p99,
        results.create_apart,
    )
    failed = sum(figure.errors for figure in figures)
    loud = [run.load for figure in figures for run in figure.runs if not run.load < QUIET_LOAD]
    notes = f" {failed} requests failed (see the errors column)." if failed else ""
    if loud:
        notes += (
            f" {len(loud)} runs started with the load average at or over {QUIET_LOAD:.1f} (up "
            f"to {max(loud):.2f}): other work shared the machine, so these figures are "
            "indicative; trust the CPU per request more than req/s, and rerun when it is quiet."
        )
    elif max(by_round) - min(by_round) > NOISY_SPREAD:
        notes += (
            f" The rounds disagree by more than {NOISY_SPREAD:.2f}: something else ran; "
            "rerun to confirm."
        )
    return (
        f"Reading: a redirect from L1 runs at {ratio:.2f} of bare aiohttp, the median of the "
        f"rounds ({', '.join(f'{value:.2f}' for value in by_round)}; the ratio of the median "
        f"req/s is {of_medians:.2f}), which {_verdict(ratio >= TARGET_RATIO)} the "
        f"{TARGET_RATIO:.2f} target, at {cpu:.2f}x its CPU per request. With PostgreSQL and "
        f"Redis on the app's core (CPU {SERVER_CPU}), creates run at {create_ratio:.3f} of the "
        f"same app's L1 redirect rate, the median of the rounds "
        f"({', '.join(f'{value:.3f}' for value in create_rounds)}; "
        f"{_verdict(create_ratio >= CREATE_TARGET)} {CREATE_TARGET:.2f}), the core paying "
        f"{_create_cpu(results.create)}; with them on wrk's core (CPU {CLIENT_CPU}) and the "
        f"app alone on its own, as in production, at {apart_ratio:.3f} "
        f"({', '.join(f'{value:.3f}' for value in apart_rounds)}; "
        f"{_verdict(apart_ratio >= CREATE_TARGET)} {CREATE_TARGET:.2f}), the app's core paying "
        f"its {results.create_apart.cpu_us:.0f} µs a create and wrk's core "
        f"{_backing_cpu(results.create_apart)}; an unknown code "
        f"costs {results.unknown.cpu_us:.0f} µs of CPU, "
        f"{results.unknown.cpu_us / results.hit.cpu_us:.1f}x an L1 redirect; at "
        f"{P99_CONNECTIONS} connections the L1 redirect's p99 is {p99_ratio:.2f}x bare's "
        f"({_verdict(p99_ratio <= P99_TARGET)} {P99_TARGET:.1f}x); a redirect that reads "
        f"PostgreSQL runs at {paired_ratio(results.miss, results.hit):.2f} of the L1 rate."
        f"{notes}"
    )


def _backing_cpu(figure: Figure) -> str:
    """PostgreSQL's and Redis's own CPU per request in a create run, in words."""
    return " and ".join(
        f"{label}'s {figure.backing_cpu_us(label):.0f} µs" for label in BACKING.values()
    )


def _create_cpu(figure: Figure) -> str:
    """All a create costs one core that runs the app, PostgreSQL and Redis, in words."""
    total = figure.cpu_us + sum(figure.backing_cpu_us(label) for label in BACKING.values())
    return f"{total:.0f} µs a create: the app's {figure.cpu_us:.0f} µs, {_backing_cpu(figure)}"


def _verdict(met: bool) -> str:
    return "meets" if met else "misses"


def section(results: Results, options: Options, command: str, load: str) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    setup = (
        f"{options.rounds} interleaved rounds (L1, bare, PostgreSQL, unknown codes) of "
        f"{options.duration} s, {options.connections} keep-alive connections, then "
        f"{options.rounds} interleaved rounds (L1, bare) at {P99_CONNECTIONS} connections, "
        f"then {options.rounds} interleaved rounds on the PostgreSQL + Redis app: its L1 "
        f"redirects at {options.connections} connections, then creates at "
        f"{CREATE_CONNECTIONS} (each a url no other request sends) in two placements, first "
        f"with PostgreSQL and Redis on CPU {SERVER_CPU} with the app, as every server, then "
        "with every process and thread of them (the postmaster, all its children and the "
        f"app's pooled backends, and Redis) moved to CPU {CLIENT_CPU}, wrk's core, leaving "
        f"the app alone on CPU {SERVER_CPU} as in production, and moved back after the run; "
        f"{options.threads} wrk thread(s); "
        f"each round waits (up to {options.quiet_wait:.0f} s) for the 1-minute load average "
        f"to fall under {QUIET_LOAD:.1f}, and the table gives the load each round started at; "
        "figures are medians over the rounds, ratios the median of the per-round ratios; "
        "server CPU is the user and system time of the app (or bare) process per request; "
        "for creates PostgreSQL's and Redis's own follow it in brackets (the user and system "
        "time of every process of theirs alive at the end of the run, per request). Load "
        "average (1 min) at start and end: "
        f"{load}"
    )
    versions = (
        f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
        f"uvloop {uvloop.__version__}, PostgreSQL {postgres_version()} (fsync off), "
        f"{_cpu_model()}"
    )
    return "\n\n".join(
        [
            SECTION,
            f"Command: `{command}`  \nDate: {when}  \nSetup: {setup}.  \nVersions: {versions}.",
            table(results, options),
            reading(results),
        ]
    )


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def write_section(path: Path, text: str, heading: str = SECTION) -> None:
    """Replaces the section under `heading` in the file, or appends it; the rest is kept.

    The file is read right before writing: other benchmarks write their own sections.
    """
    existing = path.read_text() if path.exists() else INTRO
    lines = existing.rstrip("\n").splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    if start is None:
        kept_before, kept_after = lines, []
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        kept_before, kept_after = lines[:start], lines[end:]
    before = "\n".join(kept_before).rstrip("\n")
    after = "\n".join(kept_after)
    parts = [before, text.rstrip("\n")] + ([after] if after else [])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(part for part in parts if part) + "\n")


# --- entry point -------------------------------------------------------------------------


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=_positive, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=_positive, default=64)
    parser.add_argument("--threads", type=_positive, default=1, help="wrk threads")
    parser.add_argument("--rounds", type=_positive, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "BENCHMARKS.md")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=900.0,
        help="seconds each round waits for the 1-minute load average to fall under 1.0",
    )
    args = parser.parse_args(argv)
    if args.connections < args.threads:
        parser.error("--connections must be at least --threads")
    return Options(
        args.duration, args.connections, args.threads, args.rounds, args.out, args.quiet_wait
    )


def _positive(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def check_machine() -> None:
    missing = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
    if missing:
        raise BenchError(f"missing tools: {missing}")
    try:
        postgres_bindir()
        debian_binary(REDIS_SERVER, "redis-server")
    except ServiceError as exc:
        raise BenchError(str(exc)) from None
    if not {int(CLIENT_CPU), int(SERVER_CPU)} <= os.sched_getaffinity(0):
        raise BenchError(f"needs CPUs {CLIENT_CPU} and {SERVER_CPU} to pin wrk and the servers")


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    command = shlex.join(["python", "bench/redirect.py", *(sys.argv[1:] if argv is None else argv)])
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="shortener-bench-"))
    workdir.chmod(0o755)  # the postgres user must reach its data folder inside
    processes = Processes(workdir)
    load_before = os.getloadavg()[0]
    try:
        check_machine()
        results = measure(options, processes)
    except (BenchError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        print(f"redirect benchmark failed: {exc}", file=sys.stderr)
        _print_stderr(exc)
        print(processes.log_tails(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("redirect benchmark interrupted; stopping what it started", file=sys.stderr)
        return 130
    finally:
        processes.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    text = section(results, options, command, f"{load_before:.1f}, {os.getloadavg()[0]:.1f}")
    write_section(options.out, text)
    print(f"\n{text}\n\n(written to {options.out})")
    return 0


def _print_stderr(exc: BaseException, out: IO[str] = sys.stderr) -> None:
    captured = getattr(exc, "stderr", None)
    if captured:
        out.write(captured if isinstance(captured, str) else captured.decode(errors="replace"))


if __name__ == "__main__":
    sys.exit(main())
