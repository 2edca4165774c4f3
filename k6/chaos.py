"""Chaos under a spike: kill an instance, then Redis, mid-spike; restore both; per phase report.

    python k6/chaos.py [--base-rate 100] [--peak-rate 1000] [--phase 15] [--no-docs]

Starts the topology of devservices/topology.py on 127.0.0.1 (its own PostgreSQL, a redis-server
this script holds so it can kill it, nginx, 3 instances of 2 gunicorn workers, with the
per-key create and per-address not-found limits raised) and runs k6/spike.js against nginx.
k6 tags every request with the phase it starts in; this script does what each phase says at
the second it begins, counted from the end of k6's setup (the K6_STARTED_AT_MS line of its
log, on this machine's clock):

    warm, ramp-up, peak    the spike on a healthy topology
    instance-down          SIGKILL instance 1 (its master and workers)
    redis-down             SIGKILL redis-server as well
    restoring              restart instance 1, then start redis-server again (empty)
    recovered, ramp-down, cool

It prints the error rate and p99 per phase as a markdown table and writes it, with the
command, the timings and the targets, as the section "## Chaos" of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import (
    BENCHMARKS,
    K6_MARGIN_S,
    LOAD_LIMITS,
    ROOT,
    K6Run,
    env_pairs,
    ms,
    percent,
    run_k6,
    stop_on_sigterm,
    summary_path,
    write_section,
)

from devservices.processes import free_port
from devservices.redis import REDIS_SERVER, RedisServer
from devservices.topology import Topology

SECTION = "## Chaos"
INTRO = """\
Written by `python k6/chaos.py` (see [k6/README.md](../k6/README.md)). k6/spike.js runs through
nginx against the topology of devservices/topology.py (3 instances x 2 gunicorn workers, PostgreSQL,
Redis, all on this 2-core machine with k6 itself), with the per-key create and per-address
not-found limits raised (`SHORTENER_CREATES_PER_KEY_PER_MINUTE` and
`SHORTENER_NOT_FOUND_PER_MINUTE` = 1000000: k6 is one key on 127.0.0.1). Mid-spike, instance 1
is killed (`kill -9` of its master and workers), then Redis too; then instance 1 is restarted
and Redis started again (empty). Every request is tagged with the phase it started in; a
failure is any answer other than the one expected (30x for a redirect, 404 for an unknown
code, 201 for a create, 200 for an update), so a 502 or a 429 counts. "Accept-queue
overflows" are the machine's TcpExt ListenOverflows in the phase: connections dropped because
a listening socket's queue was full (any process's, but nothing else ran a server then)."""
VICTIM = 1  # the instance that is killed
WARM, RAMP, COOL = 10, 5, 10
STARTED = re.compile(r"K6_STARTED_AT_MS=(\d+)")
# Targets from the issue: the redirect failure rate while an instance is down, and while
# Redis is down.
INSTANCE_DOWN_MAX = 0.001
REDIS_DOWN_MAX = 0.0


@dataclass
class Plan:
    base_rate: int
    peak_rate: int
    phase_s: int
    restore_s: int

    @property
    def phases(self) -> list[tuple[str, int]]:
        """(name, start in seconds after setup) of every phase, in order."""
        peak = WARM + RAMP
        chaos = peak + self.phase_s
        recovered = chaos + 2 * self.phase_s + self.restore_s
        ramp_down = recovered + self.phase_s
        return [
            ("warm", 0),
            ("ramp-up", WARM),
            ("peak", peak),
            ("instance-down", chaos),
            ("redis-down", chaos + self.phase_s),
            ("restoring", chaos + 2 * self.phase_s),
            ("recovered", recovered),
            ("ramp-down", ramp_down),
            ("cool", ramp_down + RAMP),
        ]

    @property
    def hold_s(self) -> int:
        return 4 * self.phase_s + self.restore_s

    @property
    def active_s(self) -> int:
        return WARM + 2 * RAMP + self.hold_s + COOL

    def k6_env(self) -> dict[str, str]:
        return {
            "BASE_RATE": str(self.base_rate),
            "PEAK_RATE": str(self.peak_rate),
            "WARM": str(WARM),
            "RAMP": str(RAMP),
            "HOLD": str(self.hold_s),
            "COOL": str(COOL),
            "PHASES": ",".join(f"{name}@{start}" for name, start in self.phases),
        }


@dataclass
class Action:
    phase: str
    what: str
    do: Callable[[], None]
    planned_s: float = 0.0
    started_s: float | None = None
    done_s: float | None = None
    error: str | None = None


@dataclass
class Chaos:
    """Runs the actions at their phases' starts, in a thread, once k6 says it has started, and
    counts the machine's accept-queue overflows in each phase."""

    plan: Plan
    actions: list[Action]
    started_at: float | None = None
    overflows: dict[str, int] = field(default_factory=dict)
    _started: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)

    def on_log(self, line: str) -> None:
        match = STARTED.search(line)
        if match is not None and not self._started.is_set():
            self.started_at = int(match.group(1)) / 1000
            self._started.set()

    def run(self) -> None:
        if not self._started.wait(timeout=K6_MARGIN_S):
            return
        assert self.started_at is not None
        counted_from = listen_overflows()
        for (phase, start), (_, end) in zip(
            self.plan.phases, [*self.plan.phases[1:], ("end", None)], strict=True
        ):
            for action in (a for a in self.actions if a.phase == phase):
                action.planned_s = start
                if self._stop.wait(max(0.0, self.started_at + start - time.time())):
                    return
                self._do(action)
            # The last phase ends when k6 does, which stop() says.
            until = float("inf") if end is None else self.started_at + end
            stopped = self._stop.wait(min(until - time.time(), K6_MARGIN_S + self.plan.active_s))
            now = listen_overflows()
            self.overflows[phase] = now - counted_from
            counted_from = now
            if stopped:
                return

    def _do(self, action: Action) -> None:
        assert self.started_at is not None
        action.started_s = time.time() - self.started_at
        print(f"chaos: {action.started_s:6.2f} s  {action.what}", file=sys.stderr)
        try:
            action.do()
        except Exception as exc:
            action.error = f"{type(exc).__name__}: {exc}"
            print(f"chaos: {action.what} failed: {action.error}", file=sys.stderr)
        action.done_s = time.time() - self.started_at

    def stop(self) -> None:
        self._stop.set()


def listen_overflows() -> int:
    """TcpExt ListenOverflows: connections this machine dropped because a listening socket's
    accept queue was full (every process's, since boot)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table.get("ListenOverflows", "0"))
    return 0


@dataclass
class Outcome:
    run: K6Run
    actions: list[Action]
    # Redirects the restarted instance served after its restart, from its /metrics.
    served_after_restart: int
    # Accept-queue overflows on this machine in each phase (TcpExt ListenOverflows).
    overflows: dict[str, int]
    # From nginx's access log: connects to an instance that timed out, and tries that found
    # no instance left to try (all resting after max_fails).
    connect_timeouts: int
    no_live_upstreams: int


def run_chaos(plan: Plan, workdir: Path, app_env: Mapping[str, str]) -> Outcome:
    """Starts everything, runs spike.js with the faults, stops everything."""
    (workdir / "redis").mkdir(parents=True, exist_ok=True)
    redis = RedisServer(REDIS_SERVER, workdir / "redis", free_port())
    redis.start()
    try:
        env = {**LOAD_LIMITS, **app_env}
        with Topology.start(workdir / "topology", redis_url=redis.url, env=env) as topo:
            actions = [
                Action("instance-down", f"kill -9 instance {VICTIM}", lambda: topo.kill(VICTIM)),
                Action("redis-down", "kill -9 redis-server", redis.kill),
                Action("restoring", f"restart instance {VICTIM}", lambda: topo.restart(VICTIM)),
                Action("restoring", "start redis-server", redis.start),
            ]
            chaos = Chaos(plan, actions)
            thread = threading.Thread(target=chaos.run, daemon=True)
            thread.start()
            try:
                print(f"nginx at {topo.url}; running k6/spike.js", file=sys.stderr)
                run = run_k6(
                    "spike",
                    base_url=topo.url,
                    api_key=topo.admin_key,
                    env=plan.k6_env(),
                    summary_path=summary_path("chaos"),
                    timeout_s=plan.active_s + K6_MARGIN_S,
                    on_log=chaos.on_log,
                )
            finally:
                chaos.stop()
                thread.join(timeout=60)
                # Whatever happened, leave both up, so that teardown is a clean stop.
                redis.start()
                topo.restart(VICTIM)
            failures = topo.upstream_failures()
            return Outcome(
                run=run,
                actions=actions,
                served_after_restart=topo.served(VICTIM),
                overflows=chaos.overflows,
                connect_timeouts=failures["connect timeout"],
                no_live_upstreams=failures["no live upstreams"],
            )
    finally:
        redis.close()


def phase_table(outcome: Outcome) -> str:
    report = outcome.run.report
    lines = [
        "| phase | seconds | requests | req/s | redirects | redirect failures | redirect p99 ms "
        "| all failures | all p99 ms | accept-queue overflows |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    active = report["active_s"]
    for phase in report["phases"]:
        end = active if phase["end_s"] is None else phase["end_s"]
        redirect = phase["types"]["redirect"]
        seconds = max(end - phase["start_s"], 1)
        overflows = outcome.overflows.get(phase["name"], "-")
        lines.append(
            f"| {phase['name']} | {phase['start_s']}-{end} | {phase['requests']} "
            f"| {phase['requests'] / seconds:.0f} | {redirect['requests']} "
            f"| {redirect['failed']} ({percent(redirect['failed_rate'])}) "
            f"| {ms(redirect['p99_ms'])} | {phase['failed']} ({percent(phase['failed_rate'])}) "
            f"| {ms(phase['p99_ms'])} | {overflows} |"
        )
    redirect = report["types"]["redirect"]
    every = report["all"]
    lines.append(
        f"| **whole run** | 0-{active} | {every['requests']} "
        f"| {every['requests'] / active:.0f} | {redirect['requests']} "
        f"| {redirect['failed']} ({percent(redirect['failed_rate'])}) | {ms(redirect['p99_ms'])} "
        f"| {every['failed']} ({percent(every['failed_rate'])}) | {ms(every['p99_ms'])} "
        f"| {sum(outcome.overflows.values())} |"
    )
    return "\n".join(lines)


def verdicts(report: Mapping[str, Any]) -> list[str]:
    phases = {phase["name"]: phase["types"]["redirect"] for phase in report["phases"]}
    lines = []
    for name, limit, target in (
        ("instance-down", INSTANCE_DOWN_MAX, "below 0.1%"),
        ("redis-down", REDIS_DOWN_MAX, "0%"),
    ):
        rate = phases[name]["failed_rate"]
        met = rate < limit if limit > 0 else rate == 0
        lines.append(
            f"- {name}: redirect failure rate {percent(rate)} "
            f"({phases[name]['failed']} of {phases[name]['requests']}); target {target}: "
            f"{'met' if met else '**missed**'}."
        )
    return lines


def section(plan: Plan, outcome: Outcome, command: str, loads: tuple[float, float]) -> str:
    run = outcome.run
    report = run.report
    timings = "; ".join(
        f"{a.what} at {a.started_s:.2f} s (planned {a.planned_s:.0f} s), done at {a.done_s:.2f} s"
        + (f", FAILED: {a.error}" if a.error else "")
        if a.started_s is not None and a.done_s is not None
        else f"{a.what}: not run"
        for a in outcome.actions
    )
    crossed = [f"`{t['metric']}: {t['threshold']}`" for t in report["thresholds"] if not t["ok"]]
    verdict = f"thresholds crossed: {', '.join(crossed)}" if crossed else "all thresholds held"
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            f"Command: `{command}`  ",
            f"Date: {when}; k6 exit code {run.exit_code} ({verdict}); summary "
            f"`{run.summary_path.relative_to(ROOT)}` (git-ignored).  ",
            f"Load: k6/spike.js through nginx to 3 instances x 2 workers, {plan.base_rate} "
            f"requests/s rising to {plan.peak_rate}/s in {RAMP} s, held {plan.hold_s} s; "
            f"{report['vus_peak']} VUs busy at most, {report['dropped_iterations']} "
            "iterations dropped. Load average (1 min) "
            f"{loads[0]:.1f} at start, {loads[1]:.1f} at end.  ",
            f"Faults (seconds after setup): {timings}. Instance {VICTIM} served "
            f"{outcome.served_after_restart} redirects after its restart. nginx logged "
            f"{outcome.connect_timeouts} connect timeouts and {outcome.no_live_upstreams} "
            "requests with no instance left to try.",
            "",
            phase_table(outcome),
            "",
            *verdicts(report),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-rate", type=int, default=100, help="requests/s before the spike")
    parser.add_argument("--peak-rate", type=int, default=1000, help="requests/s of the spike")
    parser.add_argument("--phase", type=int, default=15, help="seconds of each chaos phase")
    parser.add_argument(
        "--restore",
        type=int,
        default=20,
        help="seconds of the restoring phase (restart, then nginx's fail_timeout of 10 s)",
    )
    parser.add_argument("--out", type=Path, default=BENCHMARKS, help="markdown file to update")
    parser.add_argument("--no-docs", action="store_true", help="print only, write no section")
    parser.add_argument("--workdir", type=Path, help="keep the logs here (default: a temp dir)")
    parser.add_argument(
        "--app-env", action="append", default=[], metavar="NAME=VALUE", help="instance setting"
    )
    args = parser.parse_args(argv)
    command = shlex.join(["python", "k6/chaos.py", *(sys.argv[1:] if argv is None else argv)])
    plan = Plan(args.base_rate, args.peak_rate, args.phase, args.restore)
    stop_on_sigterm()

    start_load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="k6-chaos-") as temp:
        outcome = run_chaos(plan, args.workdir or Path(temp), env_pairs(args.app_env))
    text = section(plan, outcome, command, (start_load, os.getloadavg()[0]))
    print("\n" + text)
    if not args.no_docs:
        write_section(args.out, SECTION, f"{SECTION}\n\n{INTRO}\n\n{text}")
        print(f"\nwritten to {args.out}", file=sys.stderr)
    return 0 if all(a.error is None for a in outcome.actions) else 1


if __name__ == "__main__":
    sys.exit(main())
