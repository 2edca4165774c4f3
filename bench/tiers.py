"""The two-tier cache under a Zipf-like mix of redirects: L1 + L2, L2 only, the store only.

On 127.0.0.1 only, in a private temporary folder, it starts a PostgreSQL 15 cluster of its
own (fsync off) and a redis-server without persistence, each on a free port; has the app
create the schema (`python -m shortener migrate`); and seeds 100,000 links with one
INSERT ... SELECT (random 7-character codes, urls https://example.com/<n>). Then three
`python -m shortener serve --workers 1` processes, all on that PostgreSQL, with the app's
default L1 (100,000 links, 30 s TTL, 5 s for unknown codes) where L1 is on:

- (a) L1 + L2: SHORTENER_REDIS_URL set;
- (b) L2 only: SHORTENER_L1_SIZE=0, Redis set (the same Redis as (a), as instances share it);
- (c) store only: SHORTENER_L1_SIZE=0, no Redis;
- (d) the L1-only baseline: app (a) itself, asked for a handful of hot codes only, so that
  every redirect is answered from L1;
- and, to show what the unknown codes cost (a), app (a) asked for the mix without them.

The request mix is a list of 50,000 paths drawn with popularity 1/rank^1.1 over the 100,000
codes plus 2% unknown codes (random codes that name no link, each once in the list), shuffled
and written to a file that a wrk Lua script reads and rotates over; the script counts 302s,
404s and anything else (unexpected). The 404 limit per client address is raised far out of
the way (SHORTENER_NOT_FOUND_PER_MINUTE), so the unknown codes never trip the scanner penalty.

Servers (PostgreSQL and Redis included) are pinned to CPU 1, wrk to CPU 0. Warm-up: every
code of the mix once through (b), which puts them all into Redis (the unknown codes as
unknown), then a few seconds of the mix through (b) and (c) and of the hot codes through
(a). Each round starts once the 1-minute load average is under 1.0 (waiting up to
--quiet-wait seconds). Rounds are interleaved: (a), (a) links only, (b), (d), (c), each for
the same duration, connections and threads. Each (a) run follows a pass over every link of
the mix through (a) (not the unknown codes: their negative entries are left to the mix),
once everything its L1 held has expired (L1 does not renew an entry on a read, so an older
entry would expire mid-run): the measured runs find every link in L1, none expiring
meanwhile. Each figure is the median over the rounds; the ratio to (d) is the median of the
per-round ratios. The hit ratio of each tier comes from the app's /metrics
(shortener_cache_lookups_total, published once a second), read before and after each
measured run once the app has been idle long enough for its counters to be published, summed
over the rounds. CPU per request is read from /proc: the app's own, and that of all servers
(the app, Redis, the postmaster and every backend).

L1 memory is measured in a fresh Python process: the app's L1Cache filled with 100,000
Target entries whose urls are 40-80 characters long, its resident-set growth (and, in
another fresh process, what tracemalloc sees allocated).
The table is printed and written as the section "## Tiered cache" of docs/BENCHMARKS.md.
Every process it starts is stopped, by process group, on success, error, Ctrl-C or SIGTERM.

    python bench/tiers.py [--duration S] [--connections C] [--threads T] [--rounds N]
                          [--warmup S] [--quiet-wait S] [--out docs/BENCHMARKS.md]

About four minutes with the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import itertools
import json
import os
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import asyncpg
import redirect
from redirect import (
    CLIENT_CPU,
    SERVER_CPU,
    BenchError,
    Figure,
    Options,
    Processes,
    Target,
    WrkRun,
    run_wrk,
    say,
    start_app,
    start_postgres,
)

from devservices.app import AppInstance
from devservices.redis import REDIS_SERVER, RedisServer
from shortener.cache.l1 import L1Cache
from shortener.config import Settings
from shortener.links.codes import ALPHABET, GENERATED_LENGTH, is_reserved
from shortener.links.model import Target as LinkTarget

SECTION = "## Tiered cache"
LINKS = 100_000
MIX_PATHS = 50_000
ZIPF_S = 1.1
UNKNOWN_SHARE = 0.02
HOT_CODES = 8
SEED = 20261128
SEED_URL = "https://example.com/{}"
# Far above any rate here: the unknown codes in the mix must never trip the scanner penalty.
NOT_FOUND_PER_MINUTE = 10_000_000
WARMUP_SECONDS = 3  # of the mix through (b) and (c), after a pass over every code of it
# Warming goes through a list in wrk runs this long, each taking up where the last one stopped.
COVER_SECONDS = 3
HOT_WARMUP_SECONDS = 2
# The app publishes its counters once a second: this long idle, /metrics has them all.
SETTLE_SECONDS = 1.5
L1_MEMORY_ENTRIES = 100_000
TARGET_OF_HOT = 0.80
TARGET_STORE_SHARE = 0.01
DEFAULTS = Settings()


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    label: str
    app: str  # the app process that serves it
    mix: str  # "zipf", "links" (the mix without its unknown codes) or "hot"


CASES = (
    Case("a", "(a) L1 + L2 (Redis)", app="l1+l2", mix="zipf"),
    # Not a configuration: (a) without the unknown codes, to show what they cost it.
    Case("a'", "(a) links only: the mix without its unknown codes", app="l1+l2", mix="links"),
    Case("b", "(b) L2 only (L1 off)", app="l2", mix="zipf"),
    Case("c", "(c) store only (L1 off, no Redis)", app="store", mix="zipf"),
    Case("d", f"(d) L1 only: {HOT_CODES} hot codes, app (a)", app="l1+l2", mix="hot"),
)
# (a') and (d) run on (a)'s process: (a') right after (a), so that its L1 is as warm.
ORDER = ("a", "a'", "b", "d", "c")


@dataclass(frozen=True, slots=True)
class Plan:
    wrk: Options
    warmup: int


@dataclass(frozen=True, slots=True)
class Mix:
    """The seeded codes (codes[i] redirects to SEED_URL.format(i + 1)) and the requests."""

    codes: list[str]
    unknown: list[str]
    requests: list[str]  # the Zipf mix with the unknown codes, shuffled
    hot: list[str]

    @property
    def distinct(self) -> list[str]:
        """Every code of the mix once, links and unknown codes, in the order they first come."""
        return list(dict.fromkeys(self.requests))

    @property
    def distinct_links(self) -> list[str]:
        """Every seeded code of the mix once, in the order they first come."""
        return list(dict.fromkeys(self.links_only))

    @property
    def links_only(self) -> list[str]:
        unknown = set(self.unknown)
        return [code for code in self.requests if code not in unknown]

    @property
    def working_set(self) -> int:
        """Distinct seeded codes in the mix: what L1 and L2 hold once warm."""
        return len(self.distinct_links)


@dataclass(frozen=True, slots=True)
class Lookups:
    """Deltas of the app's shortener_cache_lookups_total, by "tier:result"."""

    counts: Mapping[str, float]

    def of(self, tier: str) -> float:
        return sum(self.counts.get(f"{tier}:{result}", 0.0) for result in RESULTS)

    def answered(self, tier: str) -> float:
        return self.counts.get(f"{tier}:hit", 0.0) + self.counts.get(f"{tier}:negative", 0.0)

    @property
    def redirects(self) -> float:
        return self.of("l1")  # every redirect asks L1 first, even when it is off

    def hit_ratio(self, tier: str) -> float | None:
        lookups = self.of(tier)
        return self.answered(tier) / lookups if lookups else None

    def store_share(self, result: str | None = None) -> float:
        reached = self.of("store") if result is None else self.counts.get(f"store:{result}")
        return (reached or 0.0) / max(self.redirects, 1.0)

    @property
    def redis_errors(self) -> float:
        return self.counts.get("redis_errors", 0.0)

    def describe(self) -> str:
        return (
            f"L1 {_percent(self.hit_ratio('l1'))}, L2 {_percent(self.hit_ratio('l2'))} hits; "
            f"PostgreSQL {self.store_share():.2%} of {self.redirects:.0f} redirects "
            f"(links {self.store_share('hit'):.2%}); {self.redis_errors:.0f} Redis errors"
        )


@dataclass(frozen=True, slots=True)
class Measured:
    """One case over the rounds: wrk's figures, /metrics deltas, CPU of all the servers."""

    figure: Figure
    lookups: Lookups  # summed over the rounds
    servers_cpu_us: float  # median over the rounds

    @property
    def unexpected(self) -> int:
        return sum(run.figures.get("unexpected", 0) for run in self.figure.runs)

    @property
    def socket_errors(self) -> int:
        kinds = ("connect", "read", "write", "timeout")
        return sum(
            count for run in self.figure.runs for kind, count in run.error_kinds if kind in kinds
        )


@dataclass(frozen=True, slots=True)
class L1Memory:
    entries: int
    rss_bytes: int
    traced_bytes: int
    mean_url: float

    def mib_per(self, entries: int, size: int) -> float:
        return size / self.entries * entries / 2**20


RESULTS = ("hit", "negative", "miss")


# --- Redis, the schema and the links ------------------------------------------------------


def start_redis(processes: Processes) -> tuple[str, RedisServer]:
    """A redis-server on a free port with no persistence; returns its URL."""
    directory = processes.workdir / "redis"
    directory.mkdir()
    redis = RedisServer(REDIS_SERVER, directory, redirect.free_port())
    processes.start("redis", redis)
    return redis.url, redis


def migrate(database_url: str) -> None:
    env = redirect.app_env(database_url, l1_size=0)
    subprocess.run(
        [sys.executable, "-m", "shortener", "migrate"],
        cwd=redirect.ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )


def make_mix(links: int, paths: int, rng: random.Random) -> Mix:
    taken: set[str] = set()
    codes = _new_codes(links, taken, rng)
    unknown = _new_codes(round(paths * UNKNOWN_SHARE), taken, rng)
    # codes[0] is the most popular: weight 1 / rank^s.
    weights = itertools.accumulate(1 / rank**ZIPF_S for rank in range(1, links + 1))
    requests = rng.choices(codes, cum_weights=list(weights), k=paths - len(unknown))
    requests += unknown
    rng.shuffle(requests)
    return Mix(codes, unknown, requests, codes[:HOT_CODES])


def _new_codes(count: int, taken: set[str], rng: random.Random) -> list[str]:
    codes: list[str] = []
    while len(codes) < count:
        code = "".join(rng.choices(ALPHABET, k=GENERATED_LENGTH))
        if code not in taken and not is_reserved(code):
            taken.add(code)
            codes.append(code)
    return codes


async def _seed(database_url: str, codes: Sequence[str]) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            """INSERT INTO links (code, url, created_at, updated_at)
               SELECT code, 'https://example.com/' || n, now(), now()
               FROM unnest($1::text[]) WITH ORDINALITY AS seeded(code, n)""",
            list(codes),
        )
        await connection.execute("ANALYZE links")
        count: int = await connection.fetchval("SELECT count(*) FROM links")
    finally:
        await connection.close()
    return count


def seed(database_url: str, codes: Sequence[str]) -> None:
    count = asyncio.run(_seed(database_url, codes))
    if count != len(codes):
        raise BenchError(f"seeded {count} links, not {len(codes)}")


def check_app(name: str, port: int, mix: Mix) -> None:
    """A sample of seeded codes redirects where it should, and unknown codes answer 404."""
    for index in [*range(HOT_CODES), *range(0, len(mix.codes), len(mix.codes) // 16)]:
        status, location, _ = redirect.request(port, "GET", f"/{mix.codes[index]}")
        if status != 302 or location != SEED_URL.format(index + 1):
            raise BenchError(f"{name}: GET /{mix.codes[index]} answered {status} {location}")
    for code in mix.unknown[:4]:
        status, _, body = redirect.request(port, "GET", f"/{code}")
        if status != 404:
            raise BenchError(f"{name}: unknown GET /{code} answered {status}: {body[:200]!r}")


# --- wrk ---------------------------------------------------------------------------------


def mix_script(workdir: Path, name: str, codes: Sequence[str], threads: int) -> Path:
    """GETs rotating over the paths in a file; counts 302s, 404s and any other status."""
    paths = workdir / f"{name}.paths"
    paths.write_text("".join(f"/{code}\n" for code in codes))
    script = f"""
local paths = {{}}
for line in io.lines({json.dumps(str(paths))}) do paths[#paths + 1] = line end
bench_threads = {{}}
setup = function(thread)
  thread:set("start", #bench_threads * math.floor(#paths / {threads}))
  table.insert(bench_threads, thread)
end
{redirect.ROTATE_LUA}found, unknown, unexpected = 0, 0, 0
response = function(status, _, _)
  if status == 302 then found = found + 1
  elseif status == 404 then unknown = unknown + 1
  else
    unexpected = unexpected + 1
    wrong = status
  end
end
done = function(summary, latency, _)
  local e = summary.errors
  local t = {{found = 0, unknown = 0, unexpected = 0}}
  local wrong = 0
  for _, thread in ipairs(bench_threads) do
    for key, total in pairs(t) do t[key] = total + (thread:get(key) or 0) end
    wrong = math.max(wrong, thread:get("wrong") or 0)
  end
  io.write(string.format(
    '{{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,'
    .. '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"wrong":%d,'
    .. '"found":%d,"unknown":%d,"unexpected":%d}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout, wrong,
    t.found, t.unknown, t.unexpected))
end
"""
    script_path = workdir / f"{name}.lua"
    script_path.write_text(script)
    return script_path


# --- /metrics and CPU ----------------------------------------------------------------------

_SAMPLE = re.compile(r"^(\w+)\{([^}]*)\} (\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def read_counts(port: int) -> dict[str, float]:
    """Cache lookups by "tier:result", and Redis errors, from the app's /metrics."""
    status, _, body = redirect.request(port, "GET", "/metrics")
    if status != 200:
        raise BenchError(f"GET /metrics on port {port} answered {status}")
    counts: dict[str, float] = {}
    for line in body.decode().splitlines():
        sample = _SAMPLE.match(line)
        if sample is None:
            continue
        name, labels, value = sample[1], dict(_LABEL.findall(sample[2])), float(sample[3])
        if name == "shortener_cache_lookups_total":
            counts[f"{labels['tier']}:{labels['result']}"] = value
        elif name == "shortener_redis_errors_total":
            counts["redis_errors"] = counts.get("redis_errors", 0.0) + value
    return counts


class Meter:
    """An app's /metrics, read only once the app has been idle long enough to publish."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.busy_until = 0.0
        # The case whose run the next reading closes, and the reading from before that run.
        self.pending: tuple[str, dict[str, float]] | None = None

    def read(self) -> dict[str, float]:
        wait = self.busy_until + SETTLE_SECONDS - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        return read_counts(self.port)


def servers_cpu_seconds(roots: Collection[int]) -> float:
    """User and system time so far of these processes and every live descendant.

    By descent, not by process group: each PostgreSQL backend is a session of its own.
    """
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        ticks[pid] = int(fields[11]) + int(fields[12])
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    total, todo = 0, [pid for pid in roots if pid in ticks]
    while todo:
        pid = todo.pop()
        total += ticks[pid]
        todo.extend(children.get(pid, ()))
    return total / os.sysconf("SC_CLK_TCK")


# --- the run -----------------------------------------------------------------------------


def measure(plan: Plan, processes: Processes, mix: Mix) -> dict[str, Measured]:
    say(f"starting PostgreSQL and Redis, pinned to CPU {SERVER_CPU} (wrk: CPU {CLIENT_CPU})")
    database_url = start_postgres(processes)
    redis_url, redis = start_redis(processes)
    migrate(database_url)
    started = time.monotonic()
    seed(database_url, mix.codes)
    say(f"seeded {len(mix.codes)} links in {time.monotonic() - started:.1f} s")

    envs = {
        "l1+l2": app_env(database_url, DEFAULTS.l1_size, redis_url),
        "l2": app_env(database_url, 0, redis_url),
        "store": app_env(database_url, 0, None),
    }
    apps = {name: start_app(processes, f"app-{name}", env) for name, env in envs.items()}
    for name, app in apps.items():
        check_app(name, app.port, mix)
    workdir, threads = processes.workdir, plan.wrk.threads
    scripts = {
        "zipf": mix_script(workdir, "zipf", mix.requests, threads),
        "hot": mix_script(workdir, "hot", mix.hot, threads),
        "links": mix_script(workdir, "links", mix.links_only, threads),
    }
    targets = {
        case.name: Target(apps[case.app].port, scripts[case.mix], pid=apps[case.app].pid)
        for case in CASES
    }
    meters = {name: Meter(app.port) for name, app in apps.items()}
    # Redis and PostgreSQL (the postmaster and every backend): with the app, what a redirect
    # costs on the servers' CPU.
    shared = {redis.pid, processes.pids["postgres"]}

    # Every code of the mix into Redis, links and unknown codes, as continuous traffic would
    # leave it; through (b), since (a)'s L1 is loaded before each (a) run.
    say("warming: every code of the mix once through (b), which puts them all into Redis")
    cover(apps["l2"], workdir, mix.distinct, plan.wrk)
    warmups = {"b": plan.warmup, "c": plan.warmup, "d": HOT_WARMUP_SECONDS}
    for name, seconds in warmups.items():
        say(f"warming ({name}) for {seconds} s")
        run_wrk(targets[name], plan.wrk, seconds)
        meters[_case(name).app].busy_until = time.monotonic()
    mix_ended = 0.0  # when (a)'s process last served the mix

    runs: dict[str, list[WrkRun]] = {name: [] for name in ORDER}
    cpu: dict[str, list[float]] = {name: [] for name in ORDER}
    deltas: dict[str, list[Lookups]] = {name: [] for name in ORDER}

    def read_closing(meter: Meter) -> dict[str, float]:
        """A fresh reading, which also closes the run the meter was waiting on."""
        now = meter.read()
        if meter.pending is not None:
            name, before = meter.pending
            delta = Lookups({key: now[key] - before.get(key, 0.0) for key in now})
            deltas[name].append(delta)
            meter.pending = None
            say(f"  ({name}) {delta.describe()}")
        return now

    duration = plan.wrk.duration
    for round_number in range(1, plan.wrk.rounds + 1):
        load = redirect.wait_for_quiet(plan.wrk.quiet_wait)
        for name in ORDER:
            case = _case(name)
            meter, target = meters[case.app], targets[name]
            if name == "a":
                # Every link of the mix into L1, once what it held has expired (L1 does not
                # renew an entry when it is read), so none expires during the measured runs.
                read_closing(meter)
                time.sleep(max(0.0, mix_ended + DEFAULTS.l1_ttl - time.monotonic()))
                cover(apps["l1+l2"], workdir, mix.distinct_links, plan.wrk)
                meter.busy_until = time.monotonic()
            before = read_closing(meter)
            servers = {apps[case.app].pid, *shared}
            cpu_before = servers_cpu_seconds(servers)
            run = dataclasses.replace(run_wrk(target, plan.wrk, duration), load=load)
            cpu_used = servers_cpu_seconds(servers) - cpu_before
            meter.busy_until = time.monotonic()
            meter.pending = (name, before)
            if case.app == "l1+l2" and case.mix != "hot":
                mix_ended = meter.busy_until
            runs[name].append(run)
            cpu[name].append(cpu_used * 1e6 / max(run.figures["requests"], 1))
            say(f"round {round_number}/{plan.wrk.rounds} ({name}) {_describe(run)}")
    for meter in meters.values():
        read_closing(meter)

    return {
        name: Measured(
            Figure(tuple(runs[name])),
            Lookups(_summed(delta.counts for delta in deltas[name])),
            statistics.median(cpu[name]),
        )
        for name in ORDER
    }


def cover(app: AppInstance, workdir: Path, paths: Sequence[str], options: Options) -> None:
    """Requests every path at least once: wrk, one thread, over what is left of the list."""
    single = dataclasses.replace(options, threads=1)
    left = list(paths)
    while True:
        script = mix_script(workdir, "cover", left, threads=1)
        run = run_wrk(Target(app.port, script, pid=app.pid), single, COVER_SECONDS)
        if run.figures["requests"] == 0:
            raise BenchError("wrk made no requests while warming")
        # Responses come back in about the order of the list; those still in flight at the
        # end are taken again.
        done = run.figures["requests"] - single.connections
        if done >= len(left):
            return
        left = left[max(done, 0) :]


def app_env(database_url: str, l1_size: int, redis_url: str | None) -> dict[str, str]:
    env = redirect.app_env(database_url, l1_size, l1_ttl=None)  # the app's default TTLs
    env["SHORTENER_NOT_FOUND_PER_MINUTE"] = str(NOT_FOUND_PER_MINUTE)
    if redis_url is not None:
        env["SHORTENER_REDIS_URL"] = redis_url
    return env


def _case(name: str) -> Case:
    return next(case for case in CASES if case.name == name)


def _summed(deltas: Iterable[Mapping[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for delta in deltas:
        for key, value in delta.items():
            total[key] = total.get(key, 0.0) + value
    return total


def _describe(run: WrkRun) -> str:
    requests = max(run.figures["requests"], 1)
    text = f"{run.rps:8.0f} req/s  p50 {run.p50_ms:6.2f} ms  p99 {run.p99_ms:6.2f} ms"
    text += f"  {run.cpu_us:5.0f} us CPU/req (app)  404s {run.figures['unknown'] / requests:.1%}"
    if run.figures["unexpected"]:
        text += f"  {run.figures['unexpected']} unexpected (e.g. HTTP {run.wrong_status})"
    return text


# --- L1 memory ---------------------------------------------------------------------------


def l1_memory() -> L1Memory:
    """The app's L1 filled with realistic entries, each measurement in a fresh process."""
    figures = {}
    for mode in ("rss", "traced"):
        out = subprocess.run(
            [sys.executable, __file__, "--l1-memory-child", mode],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        figures[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    rss, traced = figures["rss"], figures["traced"]
    if rss["entries"] != L1_MEMORY_ENTRIES:
        raise BenchError(f"L1 kept {rss['entries']} of {L1_MEMORY_ENTRIES} entries")
    return L1Memory(rss["entries"], rss["bytes"], traced["bytes"], rss["mean_url"])


def fill_l1(mode: str) -> dict[str, float]:
    """Runs in a fresh process: what an L1 of L1_MEMORY_ENTRIES realistic entries takes.

    Codes, urls and Targets are made inside the measured span, as the app makes them from
    what Redis or PostgreSQL answers: the cache is what keeps them alive.
    """
    rng = random.Random(SEED)
    # Random bytes mapped onto the characters of a code or a url path: few allocations, so
    # the generator itself leaves little behind in what is measured.
    code_chars = bytes((ALPHABET * 5)[:256], "ascii")
    path_chars = bytes(((ALPHABET + "-/_") * 4)[:256], "ascii")
    cache = L1Cache(L1_MEMORY_ENTRIES, DEFAULTS.l1_ttl, DEFAULTS.l1_negative_ttl)
    url_chars = 0
    if mode == "traced":
        tracemalloc.start()
    gc.collect()
    before = tracemalloc.get_traced_memory()[0] if mode == "traced" else _rss_bytes()
    for _ in range(L1_MEMORY_ENTRIES):
        code = rng.randbytes(GENERATED_LENGTH).translate(code_chars).decode()
        # 40 to 80 characters in all, like the links people shorten.
        path = rng.randbytes(rng.randint(20, 60)).translate(path_chars).decode()
        url = f"https://example.com/{path}"
        url_chars += len(url)
        cache.put(code, LinkTarget(url, 302, None, None, False, 1), cache.epoch)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] if mode == "traced" else _rss_bytes()
    return {"bytes": after - before, "entries": len(cache), "mean_url": url_chars / len(cache)}


def _rss_bytes() -> int:
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


# --- the report --------------------------------------------------------------------------


def _ratio_of_hot(results: Mapping[str, Measured], name: str) -> list[float]:
    return redirect.paired_ratios(results[name].figure, results["d"].figure)


def _percent(value: float | None, off: str = "-") -> str:
    return off if value is None else f"{value:.1%}"


def table(results: Mapping[str, Measured]) -> str:
    lines = [
        "| configuration | req/s | p50 ms | p99 ms | of (d) | L1 hits | L2 hits "
        "| reached PostgreSQL: all (links, unknown codes) | CPU µs/req: app, all servers "
        "| req/s by round | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for case in CASES:
        result = results[case.name]
        figure = result.figure
        of_hot = statistics.median(_ratio_of_hot(results, case.name))
        l1 = _percent(result.lookups.hit_ratio("l1")) if case.app == "l1+l2" else "off"
        l2 = "none" if case.app == "store" else _percent(result.lookups.hit_ratio("l2"))
        store = (
            f"{result.lookups.store_share():.2%} ({result.lookups.store_share('hit'):.2%}, "
            f"{result.lookups.store_share('negative'):.2%})"
        )
        by_round = ", ".join(f"{run.rps:.0f}" for run in figure.runs)
        lines.append(
            f"| {case.label} | {figure.rps:.0f} | {figure.p50_ms:.2f} | {figure.p99_ms:.2f} "
            f"| {of_hot:.2f} | {l1} | {l2} | {store} "
            f"| {figure.cpu_us:.0f}, {result.servers_cpu_us:.0f} | {by_round} "
            f"| {_errors(result)} |"
        )
    return "\n".join(lines)


def _errors(result: Measured) -> str:
    parts = []
    if result.socket_errors:
        parts.append(f"{result.socket_errors} socket")
    if result.unexpected:
        wrong = max(run.wrong_status for run in result.figure.runs)
        parts.append(f"{result.unexpected} HTTP {wrong} or other")
    redis_errors = result.lookups.redis_errors
    if redis_errors:
        parts.append(f"{redis_errors:.0f} Redis calls failed")
    return ", ".join(parts) or "0"


def memory_line(memory: L1Memory) -> str:
    per = L1_MEMORY_ENTRIES
    return (
        f"L1 memory: {memory.mib_per(per, memory.rss_bytes):.1f} MiB of resident memory per "
        f"{per:,} entries ({memory.mib_per(per, memory.traced_bytes):.1f} MiB allocated, as "
        "tracemalloc counts it), measured in a fresh Python process that fills the app's "
        f"L1Cache with {memory.entries:,} Target entries, 7-character codes and urls of 40 to "
        f"80 characters (mean {memory.mean_url:.0f}): about "
        f"{memory.rss_bytes / memory.entries:.0f} bytes an entry. At the default "
        f"SHORTENER_L1_SIZE ({DEFAULTS.l1_size:,}) that is what each worker's L1 costs when full."
    )


def reading(results: Mapping[str, Measured], mix: Mix) -> str:
    a, links, b, c, d = (results[name] for name in ("a", "a'", "b", "c", "d"))
    by_round = _ratio_of_hot(results, "a")
    ratio = statistics.median(by_round)
    verdict = "meets" if ratio >= TARGET_OF_HOT else "misses"
    links_ratio = statistics.median(_ratio_of_hot(results, "a'"))
    throughput = (
        f"Reading: with L1 in front of Redis, the Zipf mix runs at {ratio:.2f} of the L1-only "
        f"hot-code rate, the median of the rounds "
        f"({', '.join(f'{value:.2f}' for value in by_round)}), which {verdict} the "
        f"{TARGET_OF_HOT:.2f} target; by the app's CPU per request, which other work on the "
        f"machine moves less, it is {d.figure.cpu_us / a.figure.cpu_us:.2f} "
        f"({a.figure.cpu_us:.0f} against {d.figure.cpu_us:.0f} µs). Without its unknown codes "
        f"the same mix on the same app (links only) runs at {links_ratio:.2f} of (d), "
        f"{d.figure.cpu_us / links.figure.cpu_us:.2f} by CPU ({links.figure.cpu_us:.0f} µs)"
    )
    if d.figure.cpu_us / links.figure.cpu_us >= 0.9:
        throughput += (
            f": L1 answers {mix.working_set:,} distinct links about as cheaply as "
            f"{HOT_CODES}, and what (a) pays on top is its unknown codes."
        )
    else:
        throughput += "."
    unknown = sum(run.figures["unknown"] for run in a.figure.runs) / sum(
        run.figures["requests"] for run in a.figure.runs
    )
    # The app's CPU that (a) spends on top of (a) links only, round by round, per unknown code.
    pairs = zip(a.figure.runs, links.figure.runs, strict=True)
    costs = [(with_.cpu_us - without.cpu_us) / unknown for with_, without in pairs]
    if unknown > 0 and statistics.median(costs) > 0:
        throughput += (
            f" Each request for an unknown code ({unknown:.1%} of them) costs the app about "
            f"{statistics.median(costs):,.0f} µs of CPU (rounds: "
            f"{', '.join(f'{cost:,.0f}' for cost in costs)}), against {d.figure.cpu_us:.0f} µs "
            f"for a redirect from L1: its negative entry in L1 ({DEFAULTS.l1_negative_ttl:g} s) "
            "has expired by the time the code comes back "
            f"({1 - (a.lookups.hit_ratio('l1') or 0.0):.1%} of (a)'s redirects missed L1), so it "
            "is a Redis GET, and a PostgreSQL query and a Redis write when Redis has forgotten "
            "it too, then a count against the 404 rate limit in Redis and a problem document, "
            "with Redis and PostgreSQL on the app's CPU."
        )
    b_of_a = statistics.median(redirect.paired_ratios(b.figure, a.figure))
    c_of_a = statistics.median(redirect.paired_ratios(c.figure, a.figure))
    tiers = (
        f"Without L1, every redirect is a Redis round trip: (b) runs at {b_of_a:.2f} of (a) "
        f"and costs {b.servers_cpu_us / a.servers_cpu_us:.1f}x its CPU per redirect, all "
        f"servers counted. With the store alone, (c) runs at {c_of_a:.2f} of (a) and costs "
        f"{c.servers_cpu_us / a.servers_cpu_us:.1f}x; only {c.lookups.store_share():.0%} of its "
        "redirects query PostgreSQL because concurrent requests for one code share a lookup, "
        "and the popular codes are requested by many connections at once."
    )
    share = a.lookups.store_share()
    verdict = "meets" if share < TARGET_STORE_SHARE else "misses"
    store = (
        f"PostgreSQL: {share:.2%} of (a)'s redirects reached it, which {verdict} the "
        f"{TARGET_STORE_SHARE:.0%} target: {a.lookups.store_share('hit'):.2%} for links and "
        f"{a.lookups.store_share('negative'):.2%} for unknown codes."
    )
    period = len(mix.requests) / a.figure.rps
    negative_ttl = DEFAULTS.l2_negative_ttl
    store += (
        f" Each unknown code of the mix comes back every {period:.1f} s at (a)'s median rate "
        f"(the {len(mix.requests):,} requests of the list), "
    )
    if period > negative_ttl * 1.1:
        store += (
            f"after L1 ({DEFAULTS.l1_negative_ttl:g} s) and Redis ({negative_ttl:g} s ±10%) "
            "have forgotten it, so nearly every one is a PostgreSQL query."
        )
    elif period > negative_ttl * 0.9:
        store += (
            f"about when Redis forgets it ({negative_ttl:g} s ±10%), so some of them are "
            "PostgreSQL queries."
        )
    else:
        store += (
            f"before Redis forgets it ({negative_ttl:g} s ±10%), so Redis answers nearly all "
            "of them."
        )
    store += (
        " A scanner's codes, which never come back, would each be a PostgreSQL query: "
        f"{UNKNOWN_SHARE:.0%} of redirects, more than the target on its own."
    )
    steady_l2 = mix.working_set / DEFAULTS.l1_ttl / a.figure.rps
    steady_store = mix.working_set / DEFAULTS.l2_ttl / a.figure.rps
    steady = steady_store + a.lookups.store_share("negative")
    store += (
        " Two reloads that continuous traffic makes are not in these figures: each measured "
        "(a) run follows a pass over every link of the mix, and the whole run is shorter than "
        f"Redis's TTL ({DEFAULTS.l2_ttl:g} s). Each of the {mix.working_set:,} links of the "
        f"mix is read again from Redis once per L1 TTL ({DEFAULTS.l1_ttl:g} s), about "
        f"{steady_l2:.1%} of redirects at (a)'s rate, and from PostgreSQL once per Redis TTL, "
        f"about {steady_store:.2%}: with them, about {steady:.2%} of redirects would reach "
        f"PostgreSQL, {'under' if steady < TARGET_STORE_SHARE else 'over'} the target."
    )
    spread = max(by_round) - min(by_round)
    noise = ""
    if spread > redirect.NOISY_SPREAD:
        noise = (
            f"\n\nThe per-round ratios disagree by {spread:.2f}: other work shared the machine "
            "(see the load average), so trust the CPU per request and the hit ratios more than "
            "req/s."
        )
    return f"{throughput}\n\n{tiers}\n\n{store}{noise}"


def section(
    results: Mapping[str, Measured], memory: L1Memory, mix: Mix, plan: Plan, command: str, load: str
) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    wrk = plan.wrk
    setup = (
        f"{len(mix.codes):,} links in PostgreSQL; a mix of {len(mix.requests):,} requests, "
        f"popularity 1/rank^{ZIPF_S:g} ({mix.working_set:,} distinct links) plus "
        f"{UNKNOWN_SHARE:.0%} unknown codes, rotated through by wrk; (d) rotates over the "
        f"{HOT_CODES} most popular codes. Each app one process; L1, where on, is the app's "
        f"default ({DEFAULTS.l1_size:,} entries, {DEFAULTS.l1_ttl:g} s TTL, "
        f"{DEFAULTS.l1_negative_ttl:g} s for unknown codes). Warm-up: every code of the mix, "
        "links and unknown codes, once through (b), which puts them into Redis, then "
        f"{plan.warmup} s of the mix "
        f"through (b) and (c); then {wrk.rounds} interleaved rounds ((a), (a) links only, "
        f"(b), (d), (c)) of {wrk.duration} s, (a) each time right after a pass over every link "
        "of the mix, once what its L1 held has expired, so that no entry expires while it "
        f"is measured; {wrk.connections} keep-alive connections, {wrk.threads} wrk "
        "thread(s). Figures are "
        "medians over the rounds, ratios to (d) the median of the per-round ratios; hit "
        "ratios from the app's /metrics over the measured runs: L1 hits = (hit + negative) / "
        "L1 lookups, L2 likewise, PostgreSQL = store lookups / redirects. CPU per request: "
        "the app's, then the app's, Redis's and PostgreSQL's together. Each round waits (up "
        f"to {wrk.quiet_wait:.0f} s) for the 1-minute load average to fall under "
        f"{redirect.QUIET_LOAD:.1f}; load average at each round's start: "
        f"{redirect.loads_text(results['a'].figure.runs)}; at start and end: {load}"
    )
    versions = (
        f"Python {sys.version.split()[0]}, aiohttp {version('aiohttp')}, "
        f"redis-py {version('redis')}, {_redis_version()}, "
        f"PostgreSQL {redirect.postgres_version()} (fsync off), {redirect._cpu_model()}"
    )
    return "\n\n".join(
        [
            SECTION,
            f"Command: `{command}`  \nDate: {when}  \nSetup: {setup}.  \nVersions: {versions}.",
            table(results),
            memory_line(memory),
            reading(results, mix),
        ]
    )


def _redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=True)
    found = re.search(r"v=(\S+)", out.stdout)
    return f"Redis {found[1] if found else '?'}"


# --- entry point -------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    positive = redirect._positive
    parser.add_argument("--duration", type=positive, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=positive, default=64)
    parser.add_argument("--threads", type=positive, default=1, help="wrk threads")
    parser.add_argument("--rounds", type=positive, default=3)
    parser.add_argument(
        "--warmup",
        type=positive,
        default=WARMUP_SECONDS,
        help="seconds of the mix through (b) and (c) after a first pass over every code of it",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=900.0,
        help="seconds to wait, before each round, for the load average to fall under 1.0",
    )
    parser.add_argument("--out", type=Path, default=redirect.ROOT / "docs" / "BENCHMARKS.md")
    parser.add_argument("--l1-memory-child", choices=("rss", "traced"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.connections < args.threads:
        parser.error("--connections must be at least --threads")
    return args


def check_machine() -> None:
    """The same tools and CPUs as the redirect benchmark."""
    redirect.check_machine()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.l1_memory_child is not None:
        print(json.dumps(fill_l1(args.l1_memory_child)))
        return 0
    options = Options(
        args.duration, args.connections, args.threads, args.rounds, args.out, args.quiet_wait
    )
    plan = Plan(options, args.warmup)
    command = shlex.join(["python", "bench/tiers.py", *(sys.argv[1:] if argv is None else argv)])
    signal.signal(signal.SIGTERM, redirect._raise_on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="shortener-tiers-"))
    workdir.chmod(0o755)  # the postgres user must reach its data folder inside
    processes = Processes(workdir)
    load_before = os.getloadavg()[0]
    mix = make_mix(LINKS, MIX_PATHS, random.Random(SEED))
    try:
        check_machine()
        results = measure(plan, processes, mix)
    except (BenchError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        print(f"tiered cache benchmark failed: {exc}", file=sys.stderr)
        redirect._print_stderr(exc)
        print(processes.log_tails(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tiered cache benchmark interrupted; stopping what it started", file=sys.stderr)
        return 130
    finally:
        processes.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    say("measuring L1 memory in fresh processes")
    memory = l1_memory()
    load = f"{load_before:.1f}, {os.getloadavg()[0]:.1f}"
    text = section(results, memory, mix, plan, command, load)
    redirect.write_section(options.out, text, SECTION)
    print(f"\n{text}\n\n(written to {options.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
