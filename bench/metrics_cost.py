"""What the per-request metrics cost a redirect, measured side by side in one run.

On 127.0.0.1 only, in a private temporary folder, it starts four `python -m shortener serve
--workers 1` processes, each on a private SQLite file with a one-hour L1, so every measured
redirect is answered from L1 (the hot path), differing only in:

- `SHORTENER_METRICS` true or false: whether each request's latency goes into
  shortener_http_request_duration_seconds (the only per-request metric; the cache and click
  counters are plain integers that a background task publishes once a second either way);
- `PROMETHEUS_MULTIPROC_DIR` set or not: prometheus_client's multiprocess mode, which
  gunicorn instances always run in (values in memory-mapped files), or its in-memory
  single-process mode (what `serve` uses with one worker).

The apps are pinned to CPU 1 and wrk to CPU 0. Seeding, warming and wrk come from
bench/redirect.py: links created through the API, each followed once, then wrk with the same
connections, threads and duration against each app through a Lua script rotating over the
codes. Rounds are interleaved (on, off, on+mp, off+mp, on, ...) and each figure is the
median over the rounds. Besides req/s, redirect.py reads the app's own CPU time around each
run (/proc/PID/stat). The cost is 1 - (median with metrics) / (median without) for req/s,
and (median with) / (median without) - 1 for CPU per request. On a machine that other work
shares, both move by tens of percent between rounds.

With py-spy on the PATH (`pip install py-spy`), one more wrk run against each app is sampled
with it: the share of the app's CPU samples spent in the per-request metrics code (all of it:
the timing and label work at the edge and in the redirect, LatencyBatch.record on every request, its
publish once a second, found by file and line, whatever name py-spy gives the frame) and in
prometheus_client. A share of the app's own CPU does not depend on how much CPU the machine's
other work leaves it, so the verdict on the 5% budget is taken on it (on CPU per request
without py-spy). A metrics-on profile with no sample in that code stops the run: py-spy must
have named its frames in a way this script does not read.
The table is printed and written as the section "## Metrics cost" of docs/BENCHMARKS.md.

    python bench/metrics_cost.py [--duration S] [--connections C] [--threads T] [--rounds N]
                                 [--out docs/BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import redirect
from redirect import (
    CLIENT_CPU,
    SERVER_CPU,
    BenchError,
    Figure,
    Options,
    Processes,
    Target,
    run_rounds,
    run_wrk,
    say,
    seeded_script,
    start_app,
)

SECTION = "## Metrics cost"
TARGET_COST = 0.05
PROFILE_RATE = 250  # samples a second


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    label: str
    metrics: bool
    multiprocess: bool


CASES = (
    Case("on", "metrics on", metrics=True, multiprocess=False),
    Case("off", "metrics off", metrics=False, multiprocess=False),
    Case("on+mp", "metrics on, multiprocess", metrics=True, multiprocess=True),
    Case("off+mp", "metrics off, multiprocess", metrics=False, multiprocess=True),
)
# Each case with metrics on, and the case it is compared with.
PAIRS = {"on": "off", "on+mp": "off+mp"}


@dataclass(frozen=True, slots=True)
class Profile:
    """Where one app's CPU went during a wrk run, from py-spy's samples (idle excluded)."""

    samples: int
    observe: float  # share in the per-request metrics code (see metric_lines)
    client: float  # share in prometheus_client, wherever called from (also the 1/s sync)


# --- the run -----------------------------------------------------------------------------


def case_env(case: Case, workdir: Path) -> dict[str, str]:
    env = redirect.app_env(f"sqlite:///{workdir / case.name}.db", l1_size=100_000)
    env["SHORTENER_METRICS"] = "true" if case.metrics else "false"
    if case.multiprocess:
        directory = workdir / f"metrics-{case.name}"
        directory.mkdir()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    return env


def measure(options: Options, processes: Processes) -> tuple[dict[str, Figure], dict[str, Profile]]:
    say(f"starting {len(CASES)} apps on SQLite, pinned to CPU {SERVER_CPU} (wrk: CPU {CLIENT_CPU})")
    workdir = processes.workdir
    envs = {case.name: case_env(case, workdir) for case in CASES}
    servers = {name: start_app(processes, f"app-{name}", env) for name, env in envs.items()}
    links = max(redirect.MIN_LINKS, 4 * options.connections)
    say(f"seeding {links} links into each app through the API, checking each redirect")
    targets = {}
    for name, server in servers.items():
        script = seeded_script(workdir / name, server.port, envs[name], links, options)
        check_case(name, server.port, envs[name])
        targets[name] = Target(server.port, script, pid=server.pid)
    runs = run_rounds(targets, options)
    figures = {name: Figure(tuple(case_runs)) for name, case_runs in runs.items()}
    profiles = {}
    if shutil.which("py-spy") is not None:
        for case in CASES:
            profiles[case.name] = profile(case.name, targets[case.name], options, workdir)
            say(f"profile {case.name:<6} {describe(profiles[case.name])}")
        check_profiles(profiles)
    else:
        say("py-spy is not installed (pip install py-spy): no profile")
    return figures, profiles


def profile(name: str, target: Target, options: Options, workdir: Path) -> Profile:
    """Samples the app with py-spy through one more wrk run against it."""
    assert target.pid is not None
    output = workdir / f"profile-{name}.txt"
    command = ["py-spy", "record", "--pid", str(target.pid), "--rate", str(PROFILE_RATE)]
    command += ["--duration", str(options.duration), "--format", "raw", "--output", str(output)]
    # Not --nonblocking: reading a running process tears stacks, and a frame of the metric
    # code then shows up under aiohttp's; pausing the app for each sample keeps them whole.
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        run_wrk(target, options, options.duration)
        _, errors = spy.communicate(timeout=options.duration + 30)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    if spy.returncode != 0 or not output.exists():
        raise BenchError(f"py-spy failed on {name}: {errors.decode(errors='replace')[-500:]}")
    return read_profile(output.read_text())


# A py-spy frame: "function (path/to/file.py:line)"; the function may or may not carry its
# class ("record" with py-spy 0.4.2, "LatencyBatch.record" with others).
_FRAME = re.compile(r"(?P<function>.*) \((?P<path>[^()]*):(?P<line>\d+)\)")
ROOT = Path(__file__).resolve().parents[1]


def metric_lines(root: Path = ROOT) -> dict[str, frozenset[int]]:
    """The lines of the per-request metrics code, by file: in shortener/web/ each request's
    start time (`started = time.monotonic()`) and every `if ...observe:` block that labels
    and records it, and in metrics.py the LatencyBatch."""
    found: dict[str, frozenset[int]] = {}
    for path in sorted((root / "shortener/web").glob("*.py")):
        lines: set[int] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            timing = (
                isinstance(node, ast.Assign)
                and ast.unparse(node.targets[0]) == "started"
                and isinstance(node.value, ast.Call)
                and ast.unparse(node.value.func) in {"time.monotonic", "time.perf_counter"}
            )
            observing = isinstance(node, ast.If) and ast.unparse(node.test).endswith("observe")
            if timing or observing:
                lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
        if lines:
            found[f"shortener/web/{path.name}"] = frozenset(lines)
    if not found:
        raise BenchError("no request timing or `if observe:` block found in shortener/web/")
    metrics = ast.parse((root / "shortener/metrics.py").read_text())
    batch = next(
        node
        for node in metrics.body
        if isinstance(node, ast.ClassDef) and node.name == "LatencyBatch"
    )
    found["shortener/metrics.py"] = frozenset(range(batch.lineno, (batch.end_lineno or 0) + 1))
    return found


def in_metrics(frame: str, lines: Mapping[str, frozenset[int]]) -> bool:
    found = _FRAME.fullmatch(frame)
    if found is None:
        return False
    path, line = found["path"].replace("\\", "/"), int(found["line"])
    return any(path.endswith(name) and line in wanted for name, wanted in lines.items())


def read_profile(collapsed: str, lines: Mapping[str, frozenset[int]] | None = None) -> Profile:
    """Shares of py-spy's collapsed stacks ("frame;frame;... count" a line)."""
    lines = metric_lines() if lines is None else lines
    total = observe = client = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        if any(in_metrics(frame, lines) for frame in stack.split(";")):
            observe += samples
        if "prometheus_client/" in stack:
            client += samples
    if total == 0:
        raise BenchError("py-spy took no samples")
    return Profile(total, observe / total, client / total)


def check_profiles(profiles: Mapping[str, Profile]) -> None:
    """A metrics-on app that py-spy never caught in the metrics code was misread, not free."""
    for case in CASES:
        if case.metrics and profiles[case.name].observe == 0:
            raise BenchError(
                f"py-spy saw no sample in the metrics code of {case.name}: its frames are "
                "named in a way read_profile does not match, so there is no verdict"
            )


def describe(result: Profile) -> str:
    return (
        f"{result.samples} samples: {result.observe:.1%} in the metrics code, "
        f"{result.client:.1%} in prometheus_client"
    )


def check_case(name: str, port: int, env: Mapping[str, str]) -> None:
    """Each app runs as its case says: redirects observed or not, in the mode it names."""
    time.sleep(1.5)  # latencies reach the histogram with the once-a-second publish
    status, _, body = redirect.request(port, "GET", "/metrics")
    if status != 200:
        raise BenchError(f"{name}: GET /metrics answered {status}")
    observed = any(
        line.startswith(b"shortener_http_request_duration_seconds_count{")
        and b'route="/{code}"' in line
        for line in body.splitlines()
    )
    if observed != (env["SHORTENER_METRICS"] == "true"):
        raise BenchError(f"{name}: SHORTENER_METRICS={env['SHORTENER_METRICS']}, {observed=}")
    directory = env.get("PROMETHEUS_MULTIPROC_DIR")
    if directory is not None and not any(Path(directory).glob("*.db")):
        raise BenchError(f"{name}: no metric files in {directory}: not in multiprocess mode")


# --- the report --------------------------------------------------------------------------


def moved(cost: float, more: str, less: str) -> str:
    """A relative cost in words: "1.2% higher", or "0.7% lower" when it came out negative."""
    return f"{abs(cost):.1%} {more if cost >= 0 else less}"


def throughput_cost(with_metrics: Figure, without: Figure) -> float:
    return 1 - with_metrics.rps / without.rps


def cpu_cost(with_metrics: Figure, without: Figure) -> float:
    return with_metrics.cpu_us / without.cpu_us - 1


def by_round(with_metrics: Figure, without: Figure) -> str:
    """The throughput cost within each round, where both ran within seconds of each other."""
    runs = zip(with_metrics.runs, without.runs, strict=True)
    return ", ".join(f"{1 - a.rps / b.rps:+.1%}" for a, b in runs)


def table(results: Mapping[str, Figure]) -> str:
    lines = [
        "| case | req/s | p50 ms | p99 ms | CPU us/request | cost: req/s | cost: CPU "
        "| req/s by round | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for case in CASES:
        figure = results[case.name]
        if case.name in PAIRS:
            other = results[PAIRS[case.name]]
            costs = f"{throughput_cost(figure, other):.1%} | {cpu_cost(figure, other):.1%}"
        else:
            costs = "- | -"
        rounds = ", ".join(f"{run.rps:.0f}" for run in figure.runs)
        lines.append(
            f"| {case.label} | {figure.rps:.0f} | {figure.p50_ms:.2f} | {figure.p99_ms:.2f} "
            f"| {figure.cpu_us:.1f} | {costs} | {rounds} | {figure.errors_text} |"
        )
    return "\n".join(lines)


def reading(results: Mapping[str, Figure], profiles: Mapping[str, Profile]) -> str:
    on, off, on_mp, off_mp = (results[case.name] for case in CASES)
    failed = sum(figure.errors for figure in results.values())
    warning = f" {failed} requests failed (see the errors column)." if failed else ""
    measured = (
        "Reading: with the per-request latency histogram, redirect throughput is "
        f"{moved(throughput_cost(on, off), 'lower', 'higher')} and CPU per request "
        f"{moved(cpu_cost(on, off), 'higher', 'lower')} in single-process mode (req/s by "
        f"round: {by_round(on, off)}), and "
        f"{moved(throughput_cost(on_mp, off_mp), 'lower', 'higher')} and "
        f"{moved(cpu_cost(on_mp, off_mp), 'higher', 'lower')} in multiprocess mode, as "
        f"under gunicorn (by round: {by_round(on_mp, off_mp)}). "
        "Both move by tens of percent from round to round on a shared machine, with what "
        "else runs on its two CPUs, so these medians are indicative only."
    )
    if profiles:
        single, multi = profiles["on"].observe, profiles["on+mp"].observe
        basis = (
            f"py-spy (at {PROFILE_RATE} samples/s, through one more wrk run of each app) finds "
            f"the per-request metrics code (timing and labels at the edge, "
            f"LatencyBatch record and publish) in {single:.1%} of "
            f"the app's CPU samples in single-process mode and {multi:.1%} in multiprocess "
            "mode. A share of the app's own CPU does not move with the machine's other load, "
            "so this is the figure the budget is judged on"
        )
    else:
        single, multi = cpu_cost(on, off), cpu_cost(on_mp, off_mp)
        basis = "Without py-spy, the budget is judged on CPU per request"
    if max(single, multi) < TARGET_COST:
        verdict = f"within the {TARGET_COST:.0%} budget."
    else:
        verdict = (
            f"over the {TARGET_COST:.0%} budget. The fix is to keep the histogram's "
            "prometheus_client calls (labels(), a lock, and in multiprocess mode a write to a "
            "memory-mapped file) off the request path: count latencies per bucket in plain "
            "lists and add them to the histogram once a second, as the cache and click "
            "counters already are."
        )
    return f"{measured}\n\n{basis}: {verdict}{warning}"


def profile_table(profiles: Mapping[str, Profile]) -> str:
    lines = [
        "| case | py-spy samples | CPU in the metrics code (timing, labels, record, publish) "
        "| CPU in prometheus_client |",
        "| --- | ---: | ---: | ---: |",
    ]
    for case in CASES:
        result = profiles[case.name]
        lines.append(
            f"| {case.label} | {result.samples} | {result.observe:.1%} | {result.client:.1%} |"
        )
    return "\n".join(lines)


def section(
    results: Mapping[str, Figure],
    profiles: Mapping[str, Profile],
    options: Options,
    command: str,
) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    setup = (
        f"{options.rounds} interleaved rounds ({', '.join(c.name for c in CASES)}) of "
        f"{options.duration} s, {options.connections} keep-alive connections, "
        f"{options.threads} wrk thread(s); each app one process on a private SQLite file, "
        "every redirect answered from L1; figures are medians over the rounds; each round "
        "waits for the 1-minute load average to fall under 1.0, and started at "
        f"{redirect.loads_text(results[CASES[0].name].runs)}"
    )
    versions = (
        f"Python {sys.version.split()[0]}, aiohttp {version('aiohttp')}, "
        f"uvloop {version('uvloop')}, prometheus_client {version('prometheus-client')}, "
        f"{redirect._cpu_model()}"
    )
    return "\n\n".join(
        [
            SECTION,
            f"Command: `{command}`  \nDate: {when}  \nSetup: {setup}.  \nVersions: {versions}.",
            table(results),
            *([profile_table(profiles)] if profiles else []),
            reading(results, profiles),
        ]
    )


def write_section(path: Path, text: str, title: str = SECTION) -> None:
    """Replaces this section in the file, or appends it; every other section is kept as is.

    The file is read right before writing: other benchmarks write their own sections.
    """
    existing = path.read_text() if path.exists() else redirect.INTRO
    lines = existing.rstrip("\n").splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == title), None)
    if start is None:
        before, after = lines, []
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        before, after = lines[:start], lines[end:]
    parts = ["\n".join(before).rstrip("\n"), text.rstrip("\n"), "\n".join(after)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(part for part in parts if part) + "\n")


# --- entry point -------------------------------------------------------------------------


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    positive = redirect._positive
    parser.add_argument("--duration", type=positive, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=positive, default=64)
    parser.add_argument("--threads", type=positive, default=1, help="wrk threads")
    parser.add_argument("--rounds", type=positive, default=3)
    parser.add_argument("--out", type=Path, default=redirect.ROOT / "docs" / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    if args.connections < args.threads:
        parser.error("--connections must be at least --threads")
    return Options(args.duration, args.connections, args.threads, args.rounds, args.out)


def check_machine() -> None:
    missing = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
    if missing:
        raise BenchError(f"missing tools: {missing}")
    if not {int(CLIENT_CPU), int(SERVER_CPU)} <= os.sched_getaffinity(0):
        raise BenchError(f"needs CPUs {CLIENT_CPU} and {SERVER_CPU} to pin wrk and the apps")


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    args = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "bench/metrics_cost.py", *args])
    signal.signal(signal.SIGTERM, redirect._raise_on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="shortener-metrics-cost-"))
    processes = Processes(workdir)
    try:
        check_machine()
        results, profiles = measure(options, processes)
    except (BenchError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        print(f"metrics cost benchmark failed: {exc}", file=sys.stderr)
        redirect._print_stderr(exc)
        print(processes.log_tails(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("metrics cost benchmark interrupted; stopping what it started", file=sys.stderr)
        return 130
    finally:
        processes.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    text = section(results, profiles, options, command)
    write_section(options.out, text)
    print(f"\n{text}\n\n(written to {options.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
