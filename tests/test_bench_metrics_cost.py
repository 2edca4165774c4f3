"""bench/metrics_cost.py reads py-spy's frames by file and line, and refuses a verdict on none."""

from __future__ import annotations

import sys

import pytest

from devservices.processes import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "bench"))
import metrics_cost


def _frame(function: str, path: str, line: int) -> str:
    return f"{function} (/srv/app/{path}:{line})"


def test_every_part_of_the_per_request_metrics_is_counted() -> None:
    lines = metrics_cost.metric_lines()
    edge = min(lines["shortener/web/edge.py"])
    batch = min(lines["shortener/metrics.py"]) + 1
    root = 'process 7:"python -m shortener serve";_run (asyncio/events.py:80)'
    collapsed = "\n".join(
        [
            # py-spy 0.4.2 names a method without its class: "record", not "LatencyBatch.record".
            f"{root};{_frame('finish', 'shortener/web/edge.py', edge)};"
            f"{_frame('record', 'shortener/metrics.py', batch)} 3",
            # The label work runs in aiohttp's code, under the edge's metrics lines.
            f"{root};{_frame('finish', 'shortener/web/edge.py', edge)};"
            "canonical (aiohttp/web_urldispatcher.py:120) 2",
            f"{root};{_frame('follow', 'shortener/web/redirect.py', 1)} 95",
        ]
    )
    profile = metrics_cost.read_profile(collapsed)
    assert (profile.samples, profile.observe) == (100, 0.05)


def test_no_sample_in_the_metrics_code_is_no_verdict() -> None:
    nothing = metrics_cost.Profile(samples=1000, observe=0.0, client=0.01)
    some = metrics_cost.Profile(samples=1000, observe=0.01, client=0.01)
    profiles = {case.name: some for case in metrics_cost.CASES}
    metrics_cost.check_profiles(profiles)
    with pytest.raises(metrics_cost.BenchError, match="no sample in the metrics code of on"):
        metrics_cost.check_profiles({**profiles, "on": nothing})
