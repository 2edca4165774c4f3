"""What visit analytics cost a redirect: CPU per request with them on and off, side by side.

On 127.0.0.1 only, in a private temporary folder, it starts two `python -m shortener serve
--workers 1` processes, each on a private SQLite file with a one-hour L1 (every measured
redirect is answered from L1, the hot path), differing only in `SHORTENER_ANALYTICS`:

- on (the default): each redirect appends its raw facts to the worker's buffer, and the
  background task classifies them (User-Agent, Referer host, country) and writes the counts
  and clicks once a second;
- off: each redirect counts its click, nothing more.

wrk sends a desktop Chrome User-Agent and a Referer with a path and query on every request,
so every visit is a human one and takes the full classification (six counts each). The apps
are pinned to CPU 1 and wrk to CPU 0; seeding, warming and wrk come from bench/redirect.py,
rounds are interleaved (on, off, on, off, ...) and each figure is the median over the rounds.
The cost is the median over the rounds of (CPU per request on) / (CPU per request off) - 1,
the two runs of a round seconds apart; the budget is 5%. Afterwards it checks on the "on"
app that visits + bots == clicks over every link, through the API.

With py-spy on the PATH (`pip install py-spy`), one more wrk run against each app is sampled
with it: the share of the app's CPU samples in shortener/visits/ (the hook, the grouping and
classification, the flush's Python side) and in SQLite at work in aiosqlite's threads (in
this bench, the flushes of the counts and clicks). A share of the app's own CPU moves less
with the machine's other load than CPU per request does; both are reported.
The table is printed and written as the section "## Analytics cost" of docs/BENCHMARKS.md.

    python bench/analytics_cost.py [--duration S] [--connections C] [--threads T] [--rounds N]
                                   [--out docs/BENCHMARKS.md]
"""

from __future__ import annotations

import inspect
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite.core
import redirect
from redirect import BenchError, Figure, Options, Processes, Target, say

SECTION = "## Analytics cost"
PROFILE_RATE = 250  # samples a second


def _sqlite_at_work() -> str:
    """The frame of aiosqlite's thread running a statement (not waiting for one)."""
    lines, first = inspect.getsourcelines(aiosqlite.core._connection_worker_thread)
    line = next(first + i for i, text in enumerate(lines) if "= function()" in text)
    return f"_connection_worker_thread (aiosqlite/core.py:{line})"


# The analytics' frames: the recorder and classifier, and SQLite at work in aiosqlite's
# threads (in this bench they run nothing but the flushes, and a ping every 5 s).
SQLITE_AT_WORK = _sqlite_at_work()
ANALYTICS_FRAMES = ("shortener/visits/", SQLITE_AT_WORK)
TARGET_COST = 0.05
CASES = {"on": "analytics on", "off": "analytics off"}
USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
REFERER = "https://news.example.com/articles/2026/12/some-story?utm_source=feed"


def measure(
    options: Options, processes: Processes
) -> tuple[dict[str, Figure], str, dict[str, float]]:
    say(f"starting 2 apps on SQLite, pinned to CPU {redirect.SERVER_CPU}")
    workdir = processes.workdir
    links = max(redirect.MIN_LINKS, 4 * options.connections)
    targets, keys = {}, {}
    for name in CASES:
        env = redirect.app_env(f"sqlite:///{workdir / name}.db", l1_size=100_000)
        env["SHORTENER_ANALYTICS"] = "true" if name == "on" else "false"
        server = redirect.start_app(processes, f"app-{name}", env)
        keys[name] = redirect.create_key(env)
        say(f"seeding {links} links into {name} through the API, checking each redirect")
        codes = redirect.seed_links(server.port, keys[name], links)
        redirect.check_redirects(server.port, codes)
        (workdir / name).mkdir()
        script = redirect.redirect_script(workdir / name, codes, options.threads)
        # wrk.format() puts wrk.headers into every prepared request.
        headers = f"wrk.headers['User-Agent'] = {json.dumps(USER_AGENT)}\n"
        headers += f"wrk.headers['Referer'] = {json.dumps(REFERER)}\n"
        script.write_text(headers + script.read_text())
        targets[name] = (Target(server.port, script, pid=server.pid), codes)
    runs = redirect.run_rounds({name: target for name, (target, _) in targets.items()}, options)
    shares = {}
    if shutil.which("py-spy") is not None:
        for name, (target, _) in targets.items():
            shares[name] = profile(name, target, options, workdir)
            say(f"profile {name}: {shares[name]:.1%} of the app's CPU samples in analytics code")
    else:
        say("py-spy is not installed (pip install py-spy): no profile")
    time.sleep(2.5)  # the last counts reach the store with the next flush
    target, codes = targets["on"]
    check = balance(target.port, keys["on"], codes)
    return {name: Figure(tuple(case_runs)) for name, case_runs in runs.items()}, check, shares


def profile(name: str, target: Target, options: Options, workdir: Path) -> float:
    """The share of the app's CPU samples in analytics code, through one more wrk run."""
    assert target.pid is not None
    output = workdir / f"profile-{name}.txt"
    command = ["py-spy", "record", "--pid", str(target.pid), "--rate", str(PROFILE_RATE)]
    command += ["--duration", str(options.duration), "--format", "raw", "--output", str(output)]
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        redirect.run_wrk(target, options, options.duration)
        _, errors = spy.communicate(timeout=options.duration + 30)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    if spy.returncode != 0 or not output.exists():
        raise BenchError(f"py-spy failed on {name}: {errors.decode(errors='replace')[-500:]}")
    total = inside = 0
    for line in output.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        if "_connection_worker_thread" in stack and SQLITE_AT_WORK not in stack:
            continue  # aiosqlite's thread waiting for a statement: idle, whatever py-spy says
        total += int(count)
        if any(frame in stack for frame in ANALYTICS_FRAMES):
            inside += int(count)
    if total == 0:
        raise BenchError("py-spy took no samples")
    return inside / total


def balance(port: int, key: str, codes: Sequence[str]) -> str:
    """visits + bots against clicks over every link of the app with analytics on."""
    clicks = counted = 0
    for code in codes:
        _, _, link = redirect.request(port, "GET", f"/api/v1/links/{code}", key=key)
        _, _, stats = redirect.request(port, "GET", f"/api/v1/links/{code}/stats", key=key)
        clicks += json.loads(link)["clicks"]
        report = json.loads(stats)
        counted += report["visits"] + report["bots"]
    if clicks != counted:
        raise BenchError(f"visits + bots {counted} != clicks {clicks} over {len(codes)} links")
    return f"visits + bots == clicks == {clicks} over the {len(codes)} links with analytics on"


def cost_by_round(on: Figure, off: Figure) -> list[float]:
    return [a.cpu_us / b.cpu_us - 1 for a, b in zip(on.runs, off.runs, strict=True)]


def section(
    results: Mapping[str, Figure],
    check: str,
    shares: Mapping[str, float],
    options: Options,
    command: str,
    load: str,
) -> str:
    on, off = results["on"], results["off"]
    lines = [
        "| case | req/s | p50 ms | p99 ms | CPU µs/request | CPU µs/request by round | errors |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for name, label in CASES.items():
        figure = results[name]
        rounds = ", ".join(f"{run.cpu_us:.1f}" for run in figure.runs)
        lines.append(
            f"| {label} | {figure.rps:.0f} | {figure.p50_ms:.2f} | {figure.p99_ms:.2f} "
            f"| {figure.cpu_us:.1f} | {rounds} | {figure.errors_text} |"
        )
    by_round = cost_by_round(on, off)
    cost = statistics.median(by_round)
    verdict = "within" if cost <= TARGET_COST else "over"
    profiled = ""
    if shares:
        # The analytics' own share of the CPU, less what counting the click alone takes.
        added = (shares["on"] - shares["off"]) / (1 - shares["on"])
        profiled = (
            f" py-spy ({PROFILE_RATE} samples/s, one more wrk run of each app) finds "
            f"{shares['on']:.1%} of the app's CPU samples in analytics code with them on and "
            f"{shares['off']:.1%} (the click counting and its flush) with them off: by that "
            f"count the analytics add {added:.1%} to a redirect's CPU, "
            f"{'within' if added <= TARGET_COST else 'over'} the budget; what the samples "
            "miss (more garbage collection, caches) is in the CPU per request."
        )
    failed = on.errors + off.errors
    reading = (
        f"Reading: with analytics on, a redirect from L1 costs {cost:+.1%} CPU per request "
        f"(median of the rounds: {', '.join(f'{value:+.1%}' for value in by_round)}), "
        f"{verdict} the {TARGET_COST:.0%} budget; req/s {on.rps / off.rps - 1:+.1%}."
        f"{profiled} Check: {check}."
        + (f" {failed} requests failed (see the errors column)." if failed else "")
        + " On a machine other work shares, each figure moves by several percent between "
        "rounds: compare the rounds, and rerun when the load average is low."
    )
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    setup = (
        f"{options.rounds} interleaved rounds (on, off) of {options.duration} s, "
        f"{options.connections} keep-alive connections, {options.threads} wrk thread(s), "
        "every request with a desktop Chrome User-Agent and a Referer; each app one process "
        "on a private SQLite file, every redirect answered from L1; CPU is the app process's "
        "user and system time per request. Each round waits for the 1-minute load average "
        f"to fall under 1.0, and started at {redirect.loads_text(on.runs)}; load average "
        f"(1 min) at start and end: {load}"
    )
    return "\n\n".join(
        [
            SECTION,
            f"Command: `{command}`  \nDate: {when}  \nSetup: {setup}.  \n"
            f"Versions: Python {sys.version.split()[0]}, {redirect._cpu_model()}.",
            "\n".join(lines),
            reading,
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = redirect.parse_options(argv)
    args = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "bench/analytics_cost.py", *args])
    signal.signal(signal.SIGTERM, redirect._raise_on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="shortener-analytics-cost-"))
    processes = Processes(workdir)
    load_before = os.getloadavg()[0]
    try:
        missing = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
        if missing:
            raise BenchError(f"missing tools: {missing}")
        results, check, shares = measure(options, processes)
    except (BenchError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        print(f"analytics cost benchmark failed: {exc}", file=sys.stderr)
        redirect._print_stderr(exc)
        print(processes.log_tails(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("analytics cost benchmark interrupted; stopping what it started", file=sys.stderr)
        return 130
    finally:
        processes.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    load = f"{load_before:.1f}, {os.getloadavg()[0]:.1f}"
    text = section(results, check, shares, options, command, load)
    redirect.write_section(options.out, text, SECTION)
    print(f"\n{text}\n\n(written to {options.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
