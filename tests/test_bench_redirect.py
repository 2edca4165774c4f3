"""bench/redirect.py waits for a quiet machine only as long as it is told, says what load each
round saw, judges every target from its figures, finds what it moved off its CPU, and counts
the CPU of processes that start or end during a run."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import psutil

from devservices.processes import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "bench"))
import redirect


def _figure(
    rps: float, p99_ms: float, cpu_us: float, load: float, backing: Mapping[str, float] = {}
) -> redirect.Figure:
    run = redirect.WrkRun(rps, 1.0, p99_ms, 0, 0, cpu_us, load=load, backing_cpu_us=backing)
    return redirect.Figure((run, run))


def test_no_wait_when_told_not_to() -> None:
    load = redirect.wait_for_quiet(0)
    assert load >= 0


def test_the_reading_judges_each_target_and_names_a_loud_machine() -> None:
    results = redirect.Results(
        hit=_figure(9_000, 4.0, 50, 0.4),
        bare=_figure(10_000, 3.0, 45, 0.4),
        miss=_figure(2_000, 20.0, 200, 0.4),
        create=_figure(800, 30.0, 450, 0.5, {"PostgreSQL": 125, "Redis": 38}),
        full_hit=_figure(9_000, 4.0, 50, 0.4),
        unknown=_figure(3_000, 10.0, 150, 2.5),
        hit_p99=_figure(9_000, 4.0, 50, 0.4),
        bare_p99=_figure(10_000, 3.0, 45, 0.4),
        create_apart=_figure(1_200, 20.0, 440, 0.5, {"PostgreSQL": 120, "Redis": 35}),
    )
    options = redirect.parse_options(["--rounds", "2", "--quiet-wait", "0"])
    table = redirect.table(results, options)
    assert "0.90 of bare" in table
    assert "on its core (16 connections) | 800 |" in table and "0.089 of its L1 req/s" in table
    assert "on wrk's core (16 connections) | 1200 |" in table and "0.133 of its L1 req/s" in table
    assert "| 450 (+ PostgreSQL 125, Redis 38) |" in table
    assert "p99 1.33x bare" in table and "CPU 3.0x an L1 redirect's" in table
    assert "2.50, 2.50 (0 of 2 rounds under 1.0)" in table
    reading = redirect.reading(results)
    assert "which meets the 0.90 target" in reading
    assert "(0.089, 0.089; misses 0.10), the core paying 613 µs a create" in reading
    assert "(0.133, 0.133; meets 0.10), the app's core paying its 440 µs" in reading
    assert "wrk's core PostgreSQL's 120 µs and Redis's 35 µs" in reading
    assert "(meets 1.5x)" in reading
    assert "2 runs started with the load average at or over 1.0" in reading


def test_what_is_not_on_exactly_the_cpus_asked_for_is_named() -> None:
    found = {"postgres (pid 7)": {0}, "postgres (pid 8)": {0, 1}, "redis-server (pid 9)": {1}}
    assert redirect.misplaced(found, {0}) == [
        "postgres (pid 8) on CPUs [0, 1]",
        "redis-server (pid 9) on CPUs [1]",
    ]
    assert redirect.misplaced(found, {0, 1}) == [
        "postgres (pid 7) on CPUs [0]",
        "redis-server (pid 9) on CPUs [1]",
    ]


def test_cpu_spent_counts_a_new_process_whole_and_a_reused_pid_as_new() -> None:
    before = {(7, 100.0): 2.0, (8, 100.0): 1.0, (9, 100.0): 5.0}
    after = {(7, 100.0): 2.5, (8, 200.0): 0.25, (10, 300.0): 0.5}
    assert redirect.cpu_spent(before, after) == 1.25


# A process with a second thread and a child, each sleeping: what a postmaster looks like.
# It reaps its child and ends once the child is killed.
FORKER = """
import subprocess, sys, threading, time
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print("ready", flush=True)
child.wait()
"""


def test_every_process_and_thread_moves_and_moves_back(tmp_path: Path) -> None:
    processes = redirect.Processes(tmp_path)
    started = [
        subprocess.Popen([sys.executable, "-c", FORKER], stdout=subprocess.PIPE, text=True)
        for _ in redirect.BACKING
    ]
    try:
        for forker in started:
            assert forker.stdout is not None and forker.stdout.readline() == "ready\n"
        processes.pids.update(
            zip(redirect.BACKING, (forker.pid for forker in started), strict=True)
        )
        with redirect.backing_on(processes, redirect.CLIENT_CPU):
            for forker in started:
                found = redirect.affinities(forker.pid)
                assert len(found) == 3  # the process, its thread, its child
                assert redirect.misplaced(found, {int(redirect.CLIENT_CPU)}) == []
        for forker in started:
            assert (
                redirect.misplaced(redirect.affinities(forker.pid), {int(redirect.SERVER_CPU)})
                == []
            )
    finally:
        for forker in started:
            for child in psutil.Process(forker.pid).children():
                child.kill()
            forker.wait(10)
