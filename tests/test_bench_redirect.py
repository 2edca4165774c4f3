"""bench/redirect.py waits for a quiet machine only as long as it is told, says what load each
round saw, and judges every target from its figures."""

from __future__ import annotations

import sys

from devservices.processes import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "bench"))
import redirect


def _figure(rps: float, p99_ms: float, cpu_us: float, load: float) -> redirect.Figure:
    run = redirect.WrkRun(rps, 1.0, p99_ms, 0, 0, cpu_us, load=load)
    return redirect.Figure((run, run))


def test_no_wait_when_told_not_to() -> None:
    load = redirect.wait_for_quiet(0)
    assert load >= 0


def test_the_reading_judges_each_target_and_names_a_loud_machine() -> None:
    results = redirect.Results(
        hit=_figure(9_000, 4.0, 50, 0.4),
        bare=_figure(10_000, 3.0, 45, 0.4),
        miss=_figure(2_000, 20.0, 200, 0.4),
        create=_figure(1_000, 30.0, 700, 0.5),
        full_hit=_figure(9_000, 4.0, 50, 0.4),
        unknown=_figure(3_000, 10.0, 150, 2.5),
        hit_p99=_figure(9_000, 4.0, 50, 0.4),
        bare_p99=_figure(10_000, 3.0, 45, 0.4),
    )
    options = redirect.parse_options(["--rounds", "2", "--quiet-wait", "0"])
    table = redirect.table(results, options)
    assert "0.90 of bare" in table and "0.111 of its L1 req/s" in table
    assert "p99 1.33x bare" in table and "CPU 3.0x an L1 redirect's" in table
    assert "2.50, 2.50 (0 of 2 rounds under 1.0)" in table
    reading = redirect.reading(results)
    assert "which meets the 0.90 target" in reading
    assert "; meets 0.10)" in reading and "(meets 1.5x)" in reading
    assert "2 runs started with the load average at or over 1.0" in reading
