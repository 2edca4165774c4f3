"""Runs one k6 script against the local production topology and reports its summary.

    python k6/run.py spike [-e PEAK_RATE=1500 -e HOLD=20 ...] [--instances 3] [--workers 2]

Starts the topology of devservices/topology.py on 127.0.0.1 with a PostgreSQL and a redis-server of
its own (nginx in front of 3 instances of 2 gunicorn workers), with the per-key create and
per-address not-found limits raised (k6 is one key on one address), runs ``k6/<script>.js``
against nginx with the admin key, prints k6's summary and a markdown table per request type,
and stops everything. The JSON summary lands in results/k6/<script>-<timestamp>.json. Exits
with k6's code: 0, or 99 when a threshold failed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import (
    K6_MARGIN_S,
    LOAD_LIMITS,
    env_pairs,
    run_k6,
    stop_on_sigterm,
    summary_path,
    type_table,
)

from devservices.topology import Topology

SCRIPTS = ("smoke", "load", "spike", "stress", "soak")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("script", choices=SCRIPTS)
    parser.add_argument(
        "-e", dest="env", action="append", default=[], metavar="NAME=VALUE", help="k6 __ENV"
    )
    parser.add_argument(
        "--app-env", action="append", default=[], metavar="NAME=VALUE", help="instance setting"
    )
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per instance")
    parser.add_argument(
        "--timeout", type=float, default=3600, help="seconds before k6 is stopped (default 3600)"
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep the topology's logs here (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    env = env_pairs(args.env)
    stop_on_sigterm()

    with tempfile.TemporaryDirectory(prefix="k6-run-") as temp:
        workdir = args.workdir or Path(temp)
        print(f"starting the topology in {workdir} ...", file=sys.stderr)
        with Topology.start(
            workdir,
            instances=args.instances,
            workers=args.workers,
            env={**LOAD_LIMITS, **env_pairs(args.app_env)},
        ) as topology:
            print(f"nginx at {topology.url}; running k6/{args.script}.js", file=sys.stderr)
            run = run_k6(
                args.script,
                base_url=topology.url,
                api_key=topology.admin_key,
                env=env,
                summary_path=summary_path(args.script),
                timeout_s=args.timeout + K6_MARGIN_S,
            )
        print(
            f"\nk6 exit code {run.exit_code} after {run.seconds:.0f} s, using {run.cpu_s:.0f} "
            f"CPU-seconds ({run.cpu_s / run.seconds:.2f} of a core); {run.summary_path}"
        )
        report = run.report
        print(
            f"\n{report['requests']} requests in {report['active_s']} s "
            f"({report['requests_per_s']:.1f}/s), {report['dropped_iterations']} dropped "
            f"iterations, {report['vus_peak']} VUs busy at most\n"
        )
        print(type_table(report))
        if "knee" in report:
            knee = report["knee"]
            print(
                f"\nknee: holds at {knee['holds_at_per_s']}/s, breaks at "
                f"{knee['breaks_at_per_s']}/s ({knee['why']})"
            )
    return run.exit_code


if __name__ == "__main__":
    sys.exit(main())
