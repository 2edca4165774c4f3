"""The observability configuration: prometheus/ (scrape config, rules, their unit tests,
Alertmanager) and grafana/ (provisioning, dashboards).

Each file is checked by the real tool where one exists (promtool, amtool) and parsed as
YAML or JSON for the rest. Every metric a rule or a dashboard reads must be exported by
shortener/metrics.py, be a recording rule, or be one of the few exporter and Prometheus
series listed below, with label names the metric has; so a renamed metric or a typo fails
here rather than leaving an empty panel or an alert that can never fire.

Needs promtool (Debian's prometheus package) and amtool (prometheus-alertmanager); a
missing one fails the test with the package to install.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from shortener import metrics

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "prometheus"
PROMETHEUS_YML = PROMETHEUS / "prometheus.yml"
ALERTMANAGER_YML = PROMETHEUS / "alertmanager.yml"
RULES = sorted((PROMETHEUS / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
GRAFANA = ROOT / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
COMPOSE = ROOT / "compose.yml"

JOBS = {"shortener", "nginx", "redis", "postgres"}
DATASOURCE_UID = "prometheus"
DISCORD_SECRET = "discord_webhook_url"
SEVERITIES = {"critical", "warning"}
# A target's own labels, which Prometheus attaches to every series it scrapes.
TARGET_LABELS = frozenset({"job", "instance"})
# Series that come from Prometheus itself or from the exporters, with the labels we select
# on (None: any). Kept short on purpose: each name here is one nothing else checks.
OTHER_SERIES: dict[str, frozenset[str] | None] = {
    "up": TARGET_LABELS,
    "ALERTS": None,
    "redis_up": TARGET_LABELS,
    "pg_up": TARGET_LABELS,
    "nginx_up": TARGET_LABELS,
    "nginx_connections_active": TARGET_LABELS,
    "nginx_http_requests_total": TARGET_LABELS,
    # High availability: the Sentinels, the replicas and the standbys, as the Redis and
    # PostgreSQL exporters report them.
    "redis_sentinel_master_ok_slaves": TARGET_LABELS | {"master_name", "master_address"},
    "redis_connected_slave_lag_seconds": TARGET_LABELS | {"slave_ip", "slave_port", "slave_state"},
    "redis_master_link_up": TARGET_LABELS | {"master_host", "master_port"},
    "redis_instance_info": TARGET_LABELS | {"role", "redis_mode", "redis_version"},
    "pg_stat_replication_pg_wal_lsn_diff": TARGET_LABELS
    | {"application_name", "client_addr", "server", "slot_name", "state"},
    "pg_stat_replication_reply_time": TARGET_LABELS
    | {"application_name", "client_addr", "server", "slot_name", "state"},
    "pg_replication_is_replica": TARGET_LABELS | {"server"},
}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
}

Json = dict[str, Any]


# tools ------------------------------------------------------------------------------------


def _tool(name: str, apt_package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing; install it with `apt-get install {apt_package}`")
    return path


def _promtool() -> str:
    return _tool("promtool", "prometheus")


def _amtool() -> str:
    return _tool("amtool", "prometheus-alertmanager")


def _run(*args: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=120, check=False
    )
    if ok:
        assert done.returncode == 0, f"{args[0]} failed:\n{done.stdout}\n{done.stderr}"
    return done


@cache
def _render() -> ModuleType:
    spec = importlib.util.spec_from_file_location("prometheus_render", PROMETHEUS / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# what exists: metrics.py, recording rules, scrape jobs ------------------------------------


@cache
def _exported_series() -> dict[str, frozenset[str]]:
    """Every series name metrics.py makes Prometheus see, with its label names."""
    series: dict[str, frozenset[str]] = {}
    for collector in vars(metrics).values():
        if not isinstance(collector, MetricWrapperBase):
            continue
        labels = frozenset(collector._labelnames) | TARGET_LABELS
        for family in collector.describe():
            for suffix in SUFFIXES[family.type]:
                extra = {"le"} if suffix == "_bucket" else set()
                series[family.name + suffix] = labels | extra
    return series


def _rules() -> Iterator[Json]:
    for path in RULES:
        for group in _yaml(path)["groups"]:
            yield from group["rules"]


def _alerts() -> dict[str, Json]:
    return {rule["alert"]: rule for rule in _rules() if "alert" in rule}


def _recorded() -> set[str]:
    return {rule["record"] for rule in _rules() if "record" in rule}


def _scrape_jobs(config: Json | None = None) -> dict[str, Json]:
    config = config if config is not None else _yaml(PROMETHEUS_YML)
    return {job["job_name"]: job for job in config["scrape_configs"]}


# PromQL, just enough to find the series an expression reads -------------------------------

_STRING = r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\''
_TOKEN = re.compile(
    rf"(?P<space>\s+)|(?P<string>{_STRING})"
    rf"|(?P<matchers>\{{(?:{_STRING}|[^{{}}\"'])*\}})"
    r"|(?P<range>\[[^\]]*\])|(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)"
    r"|(?P<number>[0-9][A-Za-z0-9_.]*)|(?P<other>.)"
)
_MATCHER = re.compile(rf"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*({_STRING})\s*,?")
_AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile",
}  # fmt: skip
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}


def _unquote(literal: str) -> str:
    if literal.startswith("'"):
        literal = '"' + literal[1:-1].replace('"', '\\"') + '"'
    value: str = json.loads(literal)
    return value


@dataclass(frozen=True)
class Selector:
    name: str
    matchers: tuple[tuple[str, str, str], ...]
    range: str | None


def selectors(expr: str) -> list[Selector]:
    """The series selectors of a PromQL expression: metric name, matchers, range."""
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr) if m.lastgroup != "space"]
    found: list[Selector] = []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else (None, "")
        if kind == "matchers":
            raise ValueError(f"selector without a metric name in {expr!r}")
        if kind != "ident" or text in _KEYWORDS or text in _AGGREGATIONS:
            i += 1
            continue
        if text in _LABEL_LISTS:
            # Skip the label list: by (a, b).
            if following[1] == "(":
                i = next(j for j in range(i, len(tokens)) if tokens[j][1] == ")")
            i += 1
            continue
        if following[1] == "(":
            i += 1  # a function
            continue
        matchers: list[tuple[str, str, str]] = []
        i += 1
        if i < len(tokens) and tokens[i][0] == "matchers":
            body = tokens[i][1][1:-1]
            position = 0
            while position < len(body):
                match = _MATCHER.match(body, position)
                if match is None:
                    raise ValueError(f"cannot read matchers {body!r} in {expr!r}")
                matchers.append((match[1], match[2], _unquote(match[3])))
                position = match.end()
            i += 1
        window = None
        if i < len(tokens) and tokens[i][0] == "range":
            window = tokens[i][1][1:-1]
            i += 1
        found.append(Selector(text, tuple(matchers), window))
    return found


def _unknown_series(expr: str, *, recorded: set[str]) -> list[str]:
    """What in `expr` reads a series nothing defines, or a label its metric lacks."""
    exported = _exported_series()
    jobs = set(_scrape_jobs())
    problems = []
    for selector in selectors(expr):
        if selector.name in exported:
            allowed: frozenset[str] | None = exported[selector.name]
        elif selector.name in OTHER_SERIES:
            allowed = OTHER_SERIES[selector.name]
        elif selector.name in recorded:
            allowed = None
        else:
            problems.append(f"unknown series {selector.name}")
            continue
        for label, operator, value in selector.matchers:
            if allowed is not None and label not in allowed:
                problems.append(f"{selector.name} has no label {label}")
            if label == "job" and operator in ("=", "=~"):
                named = set(value.split("|")) if operator == "=~" else {value}
                if not named <= jobs:
                    problems.append(f"no scrape job {sorted(named - jobs)}")
    return problems


def test_selectors_reads_names_labels_and_ranges() -> None:
    expr = (
        'sum by (instance, le) (rate(shortener_http_request_duration_seconds_bucket{job="x",'
        ' route="/{code}"}[5m] offset 1h)) / ignoring (le) group_left (a) up == bool 0'
        ' or vector(1e3) and count(ALERTS{alertstate=~"firing|pending"}) > 0.5'
    )
    assert selectors(expr) == [
        Selector(
            "shortener_http_request_duration_seconds_bucket",
            (("job", "=", "x"), ("route", "=", "/{code}")),
            "5m",
        ),
        Selector("up", (), None),
        Selector("ALERTS", (("alertstate", "=~", "firing|pending"),), None),
    ]


def test_unknown_names_and_labels_are_reported() -> None:
    # The counter without its _total, a label the metric lacks, and a job that is not scraped.
    problems = _unknown_series(
        'rate(shortener_cache_lookups{job="shortener"}[5m])'
        ' + rate(shortener_cache_lookups_total{status="5xx"}[5m])'
        ' + up{job="nope"} + shortener_http_request_duration_seconds',
        recorded=set(),
    )
    assert problems == [
        "unknown series shortener_cache_lookups",
        "shortener_cache_lookups_total has no label status",
        "no scrape job ['nope']",
        "unknown series shortener_http_request_duration_seconds",
    ]


# prometheus.yml ---------------------------------------------------------------------------


def test_prometheus_config_is_valid_where_it_lies() -> None:
    # rule_files are relative to the file, so the checkout checks as the container loads it.
    done = _run(_promtool(), "check", "config", PROMETHEUS_YML)
    assert f"{len(RULES)} rule files found" in done.stdout


def test_prometheus_scrapes_every_component_every_15s() -> None:
    config = _yaml(PROMETHEUS_YML)
    assert config["global"]["scrape_interval"] == "15s"
    jobs = _scrape_jobs(config)
    assert set(jobs) >= JOBS
    targets = {
        name: [t for static in job.get("static_configs", []) for t in static["targets"]]
        for name, job in jobs.items()
    }
    assert targets["nginx"] == ["nginx-exporter:9113"]
    assert targets["redis"] == ["redis-exporter:9121"]
    assert targets["postgres"] == ["postgres-exporter:9187"]
    assert targets["shortener"], "the app instances are listed"
    assert all(t.endswith(":8080") for t in targets["shortener"])
    alertmanagers = config["alerting"]["alertmanagers"]
    assert [t for a in alertmanagers for s in a["static_configs"] for t in s["targets"]] == [
        "alertmanager:9093"
    ]


def test_prometheus_lists_every_app_replica_compose_starts() -> None:
    compose = _yaml(COMPOSE)
    replicas = compose["services"]["app"]["deploy"]["replicas"]
    project = compose["name"]
    listed = [t for s in _scrape_jobs()["shortener"]["static_configs"] for t in s["targets"]]
    assert listed == [f"{project}-app-{n}:8080" for n in range(1, replicas + 1)]


def test_prometheus_renders_for_loopback_targets(tmp_path: Path) -> None:
    render = _render()
    text = render.render_prometheus(
        PROMETHEUS_YML.read_text(),
        targets={
            "shortener": ["127.0.0.1:18001", "127.0.0.1:18002"],
            "nginx": ["127.0.0.1:19113"],
            "redis": ["127.0.0.1:19121"],
            "postgres": ["127.0.0.1:19187"],
        },
        alertmanagers=["127.0.0.1:19093"],
        scrape_interval="1s",
        evaluation_interval="1s",
    )
    rendered = tmp_path / "prometheus.yml"
    rendered.write_text(text)
    _run(_promtool(), "check", "config", rendered)

    config = yaml.safe_load(text)
    jobs = _scrape_jobs(config)
    assert set(jobs) == JOBS
    assert jobs["shortener"]["static_configs"] == [
        {"targets": ["127.0.0.1:18001", "127.0.0.1:18002"]}
    ]
    assert all(Path(pattern).is_absolute() for pattern in config["rule_files"])
    assert config["global"]["evaluation_interval"] == "1s"
    source_jobs = _scrape_jobs()
    for name, job in jobs.items():
        # Only the targets change.
        assert {k: v for k, v in job.items() if k != "static_configs"} == {
            k: v for k, v in source_jobs[name].items() if k != "static_configs"
        }


def test_prometheus_render_refuses_a_job_the_file_lacks() -> None:
    render = _render()
    with pytest.raises(render.RenderError, match="no scrape job named app"):
        render.render_prometheus(PROMETHEUS_YML.read_text(), targets={"app": ["127.0.0.1:1"]})


# rules and their unit tests ---------------------------------------------------------------


def test_rules_are_valid() -> None:
    assert RULES, "prometheus/rules/*.yml"
    _run(_promtool(), "check", "rules", *RULES)


def test_rule_unit_tests_pass() -> None:
    assert RULE_TESTS, "prometheus/tests/*.yml"
    done = _run(_promtool(), "test", "rules", *RULE_TESTS)
    assert done.stdout.count("SUCCESS") == len(RULE_TESTS), done.stdout


def test_every_alert_has_tests_where_it_fires_and_where_it_must_not() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in _yaml(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = set(_alerts())
    assert alerts - fires == set(), "alerts never tested firing"
    assert alerts - quiet == set(), "alerts never tested staying quiet"
    assert (fires | quiet) - alerts == set(), "tests of alerts that do not exist"


def test_rule_unit_tests_load_every_rule_file_and_order_the_groups() -> None:
    groups = [group["name"] for path in RULES for group in _yaml(path)["groups"]]
    for path in RULE_TESTS:
        test = _yaml(path)
        loaded = {(path.parent / name).resolve() for name in test["rule_files"]}
        assert loaded == {rule.resolve() for rule in RULES}, path.name
        # Without a fixed order promtool evaluates groups randomly, and an alert may read
        # the previous step's recorded ratio: a flaky test.
        order = test["group_eval_order"]
        assert sorted(order) == sorted(groups), path.name
        assert order[-1] == "shortener-alerts", path.name


def test_rule_unit_tests_feed_series_the_app_exports() -> None:
    # A "must not fire" test on a misspelled series would pass for the wrong reason.
    exported = _exported_series()
    for path in RULE_TESTS:
        for case in _yaml(path)["tests"]:
            for series in case.get("input_series", []):
                (selector,) = selectors(series["series"])
                allowed = exported.get(selector.name) or OTHER_SERIES.get(selector.name)
                assert allowed is not None, f"{path.name}: {selector.name}"
                labels = {label for label, _, _ in selector.matchers}
                assert labels <= allowed, f"{path.name}: {selector.name} {labels - allowed}"


def test_every_alert_has_a_severity_and_names_the_instance() -> None:
    for name, rule in _alerts().items():
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip() and annotations["description"].strip(), name
        # Alertmanager groups by instance; every message says which one.
        assert "$labels.instance" in annotations["summary"] + annotations["description"], name
    assert "$labels.instance" in _alerts()["ShortenerInstanceDown"]["annotations"]["summary"]


def test_rules_read_only_series_that_exist() -> None:
    recorded = _recorded()
    problems = {
        rule.get("record") or rule["alert"]: found
        for rule in _rules()
        if (found := _unknown_series(rule["expr"], recorded=recorded))
    }
    assert problems == {}


# alertmanager.yml -------------------------------------------------------------------------


def _webhook_file(tmp_path: Path) -> Path:
    hook = tmp_path / DISCORD_SECRET
    hook.write_text("https://discord.invalid/api/webhooks/0/test-only\n")
    return hook


def test_alertmanager_config_is_valid(tmp_path: Path) -> None:
    amtool = _amtool()
    render = _render()
    hook = _webhook_file(tmp_path)
    version = _run(amtool, "--version")
    reads_file = render.alertmanager_reads_webhook_file(version.stdout + version.stderr)
    source = ALERTMANAGER_YML.read_text()
    rendered = tmp_path / "alertmanager.yml"
    if not reads_file:
        # Debian 12's 0.25 has Discord but not its webhook_url_file (0.26 added it; compose
        # runs 0.27). Prove that this field is the only thing it objects to.
        rendered.write_text(render.render_alertmanager(source, webhook_url_file=hook))
        refused = _run(amtool, "check-config", rendered, ok=False)
        assert refused.returncode != 0
        assert "webhook_url_file" in refused.stdout + refused.stderr
    rendered.write_text(
        render.render_alertmanager(source, webhook_url_file=hook, inline_webhook_url=not reads_file)
    )
    done = _run(amtool, "check-config", rendered)
    assert "1 receivers" in done.stdout


def test_alertmanager_reads_the_discord_webhook_from_the_compose_secret() -> None:
    config = _yaml(ALERTMANAGER_YML)
    discord = [c for r in config["receivers"] for c in r.get("discord_configs", [])]
    assert discord
    for entry in discord:
        assert entry["webhook_url_file"] == f"/run/secrets/{DISCORD_SECRET}"
        assert "webhook_url" not in entry
        assert entry["send_resolved"] is True
    secrets = _yaml(COMPOSE)["services"]["alertmanager"]["secrets"]
    assert DISCORD_SECRET in [s if isinstance(s, str) else s["source"] for s in secrets]
    for path in [*PROMETHEUS.rglob("*"), *GRAFANA.rglob("*")]:
        if path.is_file():
            assert b"discord.com/api/webhooks" not in path.read_bytes(), path


def test_alertmanager_groups_by_alert_and_instance() -> None:
    route = _yaml(ALERTMANAGER_YML)["route"]
    assert route["group_by"] == ["alertname", "instance"]
    assert route["receiver"] == "discord"
    for key in ("group_wait", "group_interval", "repeat_interval"):
        assert key in route


_ALERTMANAGER_MATCHER = re.compile(r'(\w+)(=~|!~|!=|=)"(.*)"')


def test_inhibit_rules_name_alerts_that_exist() -> None:
    alerts = set(_alerts())
    rules = _yaml(ALERTMANAGER_YML)["inhibit_rules"]
    assert rules
    named = set()
    for rule in rules:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            match = _ALERTMANAGER_MATCHER.fullmatch(matcher)
            assert match is not None, matcher
            if match[1] == "alertname":
                named |= set(match[3].split("|"))
    assert named and named <= alerts, sorted(named - alerts)
    assert any(
        'alertname="PostgresDown"' in rule["source_matchers"]
        and any("HighErrorRatio" in m for m in rule["target_matchers"])
        for rule in rules
    )


def test_alertmanager_renders_with_short_timings(tmp_path: Path) -> None:
    render = _render()
    hook = _webhook_file(tmp_path)
    text = render.render_alertmanager(
        ALERTMANAGER_YML.read_text(),
        webhook_url_file=hook,
        group_wait="1s",
        group_interval="2s",
        repeat_interval="1m",
    )
    rendered = yaml.safe_load(text)
    source = _yaml(ALERTMANAGER_YML)
    assert rendered["route"] == {
        **source["route"],
        "group_wait": "1s",
        "group_interval": "2s",
        "repeat_interval": "1m",
    }
    (entry,) = rendered["receivers"][0]["discord_configs"]
    assert entry["webhook_url_file"] == str(hook)
    # Everything else is the source, templates and inhibitions included.
    source["route"] = rendered["route"]
    source["receivers"][0]["discord_configs"][0]["webhook_url_file"] = str(hook)
    assert rendered == source


def test_discord_message_names_the_alert_and_instance(tmp_path: Path) -> None:
    amtool = _amtool()
    (entry,) = _yaml(ALERTMANAGER_YML)["receivers"][0]["discord_configs"]
    rule = _alerts()["ShortenerInstanceDown"]
    instance = "shortener-app-2:8080"
    labels = {"alertname": "ShortenerInstanceDown", "instance": instance, "job": "shortener"}
    labels |= rule["labels"]
    annotations = {
        key: value.replace("{{ $labels.instance }}", instance)
        for key, value in rule["annotations"].items()
    }
    alert = {
        "status": "firing",
        "labels": labels,
        "annotations": annotations,
        "startsAt": "2025-01-01T00:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": "0000000000000001",
    }
    data = {
        "receiver": "discord",
        "status": "firing",
        "alerts": [alert],
        "groupLabels": {"alertname": "ShortenerInstanceDown", "instance": instance},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "http://alertmanager:9093",
    }
    (tmp_path / "data.json").write_text(json.dumps(data))
    (tmp_path / "none.tmpl").write_text("")

    def render(template: str) -> str:
        return _run(
            amtool,
            "template",
            "render",
            f"--template.glob={tmp_path / 'none.tmpl'}",
            f"--template.data={tmp_path / 'data.json'}",
            f"--template.text={template}",
        ).stdout

    assert render(entry["title"]).strip() == f"FIRING (1): ShortenerInstanceDown on {instance}"
    message = render(entry["message"])
    assert f"**FIRING** [critical] Shortener instance {instance} is down" in message
    assert annotations["description"] in message


# grafana ----------------------------------------------------------------------------------


def _grafana_mounts() -> dict[str, str]:
    """Container path -> repository path of the grafana service's bind mounts."""
    mounts = {}
    for volume in _yaml(COMPOSE)["services"]["grafana"]["volumes"]:
        source, _, rest = volume.partition(":")
        if source.startswith("./"):
            mounts[rest.split(":")[0]] = source.removeprefix("./")
    return mounts


def test_datasource_has_the_uid_the_dashboards_use() -> None:
    config = _yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    (source,) = config["datasources"]
    assert source["uid"] == DATASOURCE_UID
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert source["jsonData"]["timeInterval"] == _yaml(PROMETHEUS_YML)["global"]["scrape_interval"]


def test_dashboard_provider_reads_where_compose_mounts_the_dashboards() -> None:
    mounts = _grafana_mounts()
    assert mounts["/etc/grafana/provisioning"] == "grafana/provisioning"
    config = _yaml(GRAFANA / "provisioning" / "dashboards" / "dashboards.yml")
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert mounts[provider["options"]["path"]] == "grafana/dashboards"


def _panels(board: Json) -> Iterator[Json]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _exprs(board: Json) -> Iterator[tuple[str, str]]:
    for panel in _panels(board):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def test_dashboard_is_valid(path: Path) -> None:
    board = json.loads(path.read_text())
    assert board["schemaVersion"] == 39
    assert board["uid"] and board["title"]
    (variable,) = [v for v in board["templating"]["list"] if v["name"] == "instance"]
    assert variable["definition"] == "label_values(shortener_build_info, instance)"
    assert variable["datasource"]["uid"] == DATASOURCE_UID

    ids = [panel["id"] for panel in _panels(board)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    cells: dict[tuple[int, int], str] = {}
    for panel in _panels(board):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] >= 1 and grid["x"] + grid["w"] <= 24, panel["title"]
        assert grid["h"] >= 1 and grid["y"] >= 0, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == DATASOURCE_UID, panel["title"]


def test_dashboard_uids_are_unique() -> None:
    uids = [json.loads(path.read_text())["uid"] for path in DASHBOARDS]
    assert len(DASHBOARDS) >= 2 and len(uids) == len(set(uids))


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def test_dashboard_reads_only_series_that_exist(path: Path) -> None:
    recorded = _recorded()
    board = json.loads(path.read_text())
    problems = {
        title: found
        for title, expr in _exprs(board)
        if (found := _unknown_series(expr, recorded=recorded))
    }
    assert problems == {}


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def test_dashboard_follows_the_instance_variable_and_rate_interval(path: Path) -> None:
    exported = _exported_series()
    for title, expr in _exprs(json.loads(path.read_text())):
        for selector in selectors(expr):
            if selector.range is not None:
                assert selector.range == "$__rate_interval", f"{title}: {expr}"
            if selector.name in exported:
                assert ("instance", "=~", "$instance") in selector.matchers, f"{title}: {expr}"


def test_dashboard_exprs_parse_as_promql(tmp_path: Path) -> None:
    # promtool has no PromQL checker of its own in 2.42; a recording rule per expression is one.
    rules = [
        {
            "record": f"dashboard:expr:{n}",
            "expr": expr.replace("$__rate_interval", "1m").replace("$instance", ".*"),
        }
        for n, (_, expr) in enumerate(
            pair for path in DASHBOARDS for pair in _exprs(json.loads(path.read_text()))
        )
    ]
    assert rules
    checked = tmp_path / "dashboards.yml"
    checked.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    done = _run(_promtool(), "check", "rules", checked)
    assert f"{len(rules)} rules found" in done.stdout


def test_observability_doc_lists_every_exported_metric() -> None:
    doc = (ROOT / "docs" / "OBSERVABILITY.md").read_text()
    listed = set(re.findall(r"^\| `(\w+)`", doc, flags=re.MULTILINE))
    exported = {
        family.name + ("_total" if family.type == "counter" else "")
        for collector in vars(metrics).values()
        if isinstance(collector, MetricWrapperBase)
        for family in collector.describe()
    }
    assert exported - listed == set(), "metrics missing from docs/OBSERVABILITY.md"
    alerts = set(re.findall(r"^\| `([A-Z]\w+)`", doc, flags=re.MULTILINE))
    assert alerts == set(_alerts()), "the alerts table of docs/OBSERVABILITY.md"
