"""Renders loopback variants of prometheus.yml and alertmanager.yml, for tests and local runs.

The files next to this one are the only source: rendering loads them, changes the few
values that name compose hosts, container paths and production timings, and writes
the rest back unchanged. A job or key that is asked for but missing fails loudly, so a
test can never run against something other than the stack's configuration.

    python prometheus/render.py prometheus --target shortener=127.0.0.1:18001 \
        --target shortener=127.0.0.1:18002 --alertmanager 127.0.0.1:19093 \
        --scrape-interval 1s > /tmp/p/prometheus.yml
    python prometheus/render.py alertmanager --webhook-url-file /tmp/p/hook \
        --group-wait 1s --group-interval 1s > /tmp/p/alertmanager.yml

From Python (prometheus/ is not a package, so load this file by path):

    spec = importlib.util.spec_from_file_location("prometheus_render", "prometheus/render.py")
"""

from __future__ import annotations

import argparse
import glob
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
PROMETHEUS_SOURCE = HERE / "prometheus.yml"
ALERTMANAGER_SOURCE = HERE / "alertmanager.yml"

_VERSION = re.compile(r"version (\d+)\.(\d+)\.(\d+)")


class RenderError(ValueError):
    """The configuration no longer has the shape this renderer rewrites."""


def render_prometheus(
    source: str,
    *,
    targets: Mapping[str, Sequence[str]],
    alertmanagers: Sequence[str] = (),
    base_dir: Path = HERE,
    scrape_interval: str | None = None,
    evaluation_interval: str | None = None,
) -> str:
    """prometheus.yml scraping `targets` (job name -> host:port list) instead of compose hosts.

    Jobs left out of `targets` are left out of the result, so a test scrapes only what it
    runs; a name in `targets` that is no job of the file is an error. rule_files become
    absolute (resolved against `base_dir`, the source's folder), so the result may live
    anywhere. Without `alertmanagers`, the result sends alerts nowhere.
    """
    config = _load(source)
    jobs = {job["job_name"]: job for job in config.get("scrape_configs") or []}
    unknown = sorted(set(targets) - set(jobs))
    if unknown:
        raise RenderError(f"no scrape job named {', '.join(unknown)} (jobs: {', '.join(jobs)})")
    for name, addresses in targets.items():
        if not addresses:
            raise RenderError(f"job {name}: at least one target is needed")
        job = jobs[name]
        for key in [key for key in job if key.endswith("_sd_configs")]:
            del job[key]
        job["static_configs"] = [{"targets": list(addresses)}]
    config["scrape_configs"] = [job for name, job in jobs.items() if name in targets]

    rule_files = config.get("rule_files") or []
    if not rule_files:
        raise RenderError("prometheus.yml has no rule_files")
    resolved = []
    for pattern in rule_files:
        absolute = pattern if Path(pattern).is_absolute() else str(base_dir / pattern)
        if not glob.glob(absolute):
            raise RenderError(f"rule_files entry {pattern!r} matches no file under {base_dir}")
        resolved.append(absolute)
    config["rule_files"] = resolved

    if alertmanagers:
        config["alerting"] = {
            "alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]
        }
    else:
        config.pop("alerting", None)

    interval_overrides = {
        "scrape_interval": scrape_interval,
        "evaluation_interval": evaluation_interval,
    }
    for key, value in interval_overrides.items():
        if value is not None:
            config.setdefault("global", {})[key] = value
    if scrape_interval is not None:
        # A scrape may not outlast its interval, and a short one is what a test wants.
        config["global"]["scrape_timeout"] = scrape_interval
    return _dump(config)


def render_alertmanager(
    source: str,
    *,
    webhook_url_file: Path,
    inline_webhook_url: bool = False,
    group_wait: str | None = None,
    group_interval: str | None = None,
    repeat_interval: str | None = None,
    resolve_timeout: str | None = None,
) -> str:
    """alertmanager.yml reading the Discord webhook from `webhook_url_file`.

    `inline_webhook_url` writes the file's URL into the result instead (webhook_url), for
    Alertmanager before 0.26, which has no webhook_url_file for Discord; the result then
    holds the secret, so keep it in a private temporary folder. The intervals shorten the
    root route's timings, and `resolve_timeout` the global one, for a test that waits on a
    notification.
    """
    config = _load(source)
    discord = [
        entry
        for receiver in config.get("receivers") or []
        for entry in receiver.get("discord_configs") or []
    ]
    if not discord:
        raise RenderError("alertmanager.yml has no discord_configs")
    for entry in discord:
        if "webhook_url_file" not in entry:
            raise RenderError("a discord_configs entry has no webhook_url_file")
        if inline_webhook_url:
            del entry["webhook_url_file"]
            entry["webhook_url"] = webhook_url_file.read_text().strip()
        else:
            entry["webhook_url_file"] = str(webhook_url_file)

    route = config.get("route")
    if not isinstance(route, dict):
        raise RenderError("alertmanager.yml has no route")
    timings = {
        "group_wait": group_wait,
        "group_interval": group_interval,
        "repeat_interval": repeat_interval,
    }
    for key, value in timings.items():
        if value is not None:
            if key not in route:
                raise RenderError(f"route has no {key} to override")
            route[key] = value
    if resolve_timeout is not None:
        settings = config.get("global")
        if not isinstance(settings, dict) or "resolve_timeout" not in settings:
            raise RenderError("alertmanager.yml has no global resolve_timeout to override")
        settings["resolve_timeout"] = resolve_timeout
    return _dump(config)


def alertmanager_reads_webhook_file(version_output: str) -> bool:
    """Whether the Alertmanager (or amtool) printing this --version has Discord webhook_url_file."""
    match = _VERSION.search(version_output)
    if match is None:
        raise RenderError(f"no version in {version_output!r}")
    major, minor, _patch = (int(part) for part in match.groups())
    return (major, minor) >= (0, 26)


def _load(source: str) -> dict[str, Any]:
    config = yaml.safe_load(source)
    if not isinstance(config, dict):
        raise RenderError("the configuration is not a YAML mapping")
    return config


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings (the Discord templates) as literal blocks, as in the source."""


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _represent_str)


def _dump(config: Mapping[str, Any]) -> str:
    return yaml.dump(
        dict(config), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000
    )


def _target(text: str) -> tuple[str, str]:
    job, sep, address = text.partition("=")
    if not sep or not job or not address:
        raise argparse.ArgumentTypeError(f"{text!r} is not job=host:port")
    return job, address


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    which = parser.add_subparsers(dest="which", required=True)
    prometheus = which.add_parser("prometheus", help="render prometheus.yml")
    prometheus.add_argument("--target", type=_target, action="append", required=True)
    prometheus.add_argument("--alertmanager", action="append", default=[])
    prometheus.add_argument("--scrape-interval")
    prometheus.add_argument("--evaluation-interval")
    alertmanager = which.add_parser("alertmanager", help="render alertmanager.yml")
    alertmanager.add_argument("--webhook-url-file", type=Path, required=True)
    alertmanager.add_argument("--inline-webhook-url", action="store_true")
    alertmanager.add_argument("--group-wait")
    alertmanager.add_argument("--group-interval")
    alertmanager.add_argument("--repeat-interval")
    alertmanager.add_argument("--resolve-timeout")
    args = parser.parse_args(argv)

    try:
        if args.which == "prometheus":
            targets: dict[str, list[str]] = {}
            for job, address in args.target:
                targets.setdefault(job, []).append(address)
            text = render_prometheus(
                PROMETHEUS_SOURCE.read_text(),
                targets=targets,
                alertmanagers=args.alertmanager,
                scrape_interval=args.scrape_interval,
                evaluation_interval=args.evaluation_interval,
            )
        else:
            text = render_alertmanager(
                ALERTMANAGER_SOURCE.read_text(),
                webhook_url_file=args.webhook_url_file,
                inline_webhook_url=args.inline_webhook_url,
                group_wait=args.group_wait,
                group_interval=args.group_interval,
                repeat_interval=args.repeat_interval,
                resolve_timeout=args.resolve_timeout,
            )
    except RenderError as exc:
        print(f"render.py: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
