"""The monitoring stack end to end, on real processes: every dashboard query has data, and an
instance that dies is announced on Discord, then announced back.

Two app instances (gunicorn, two workers each) on the session's PostgreSQL and Redis, nginx in
front of them (nginx/nginx.conf, rendered), the redis, postgres and nginx exporters, and
Prometheus on prometheus/prometheus.yml rendered for loopback with one-second scrapes and
rule evaluation; for the alert, Alertmanager on prometheus/alertmanager.yml rendered with
one-second group timings and Discord pointed at a local stand-in (tests/monitoring.py).
"""

from __future__ import annotations

import http.client
import json
import math
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.monitoring import (
    AlertmanagerFactory,
    DiscordStub,
    ExporterFactory,
    Prometheus,
    PrometheusFactory,
    Sample,
    discord_text,
)
from tests.services import (
    PROJECT_ROOT,
    AppInstance,
    AppInstanceFactory,
    NginxFactory,
    RedisServer,
    keys_create,
)

pytestmark = pytest.mark.slow

DASHBOARDS = sorted((PROJECT_ROOT / "grafana" / "dashboards").glob("*.json"))
# What Grafana puts in for $__rate_interval at a 1 s scrape is 4 s; a wider window keeps a
# rate from falling to nothing between two rounds of the test's traffic.
RATE_INTERVAL = "15s"
HOT_LINKS = 6
# Every load loop is bounded in rounds and in time.
TRAFFIC_MAX_ROUNDS = 400
TRAFFIC_MAX_SECONDS = 90.0
TRAFFIC_PAUSE = 0.2
DASHBOARD_DATA_TIMEOUT = 40.0
# One code's clicks buffered per worker between flushes (1 s apart): the traffic's other
# codes are dropped, so ClicksDropped fires, and the ALERTS table, empty while all is
# well, has a real alert to show.
CLICK_BUFFER_MAX_CODES = "1"
FIRING_WITHIN = 60.0
RESOLVED_WITHIN = 90.0
ALERT = "ShortenerInstanceDown"

Json = dict[str, Any]


# dashboards --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref_id: str
    expr: str

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel} / {self.ref_id}"


def _panels(board: Json) -> Iterator[Json]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries() -> list[PanelQuery]:
    queries = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in _panels(board):
            for target in panel.get("targets", []):
                queries.append(
                    PanelQuery(path.name, panel["title"], target["refId"], target["expr"])
                )
    return queries


def grafana_regex(values: list[str]) -> str:
    """A multi-value variable set to All, as Grafana writes it into a PromQL string."""
    escaped = [re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\\\1", value) for value in values]
    return "(" + "|".join(escaped) + ")"


def substitute(expr: str, instances: list[str]) -> str:
    """What Grafana sends for `expr` with $instance on All and a 1 s scrape interval."""
    variables = {
        "__rate_interval": RATE_INTERVAL,
        "__interval_ms": "1000",
        "__interval": "1s",
        "__range_s": "300",
        "__range": "5m",
        "instance": grafana_regex(instances),
    }
    for name, value in variables.items():
        expr = expr.replace(f"${{{name}}}", value).replace(f"[[{name}]]", value)
        # A backslash in a replacement would start an escape: the regex has them doubled.
        expr = re.sub(rf"\${re.escape(name)}\b", value.replace("\\", "\\\\"), expr)
    leftover = re.findall(r"\$\{?\w+", expr)
    assert not leftover, f"variables the test does not know: {leftover} in {expr}"
    return expr


def test_substitute_writes_what_grafana_sends() -> None:
    expr = 'rate(x{instance=~"$instance"}[$__rate_interval]) / ${__interval}'
    assert substitute(expr, ["127.0.0.1:1", "127.0.0.1:2"]) == (
        r'rate(x{instance=~"(127\\.0\\.0\\.1:1|127\\.0\\.0\\.1:2)"}[15s]) / 1s'
    )


def _problem(samples: list[Sample]) -> str | None:
    """Why a panel would show nothing: no series, or only NaN (a ratio of no traffic)."""
    if not samples:
        return "no series"
    if all(math.isnan(sample.value) for sample in samples):
        return f"only NaN in {len(samples)} series"
    return None


# traffic -----------------------------------------------------------------------------------


class Client:
    """Plain HTTP/1.1 to one address, a connection per request, checking each status."""

    def __init__(self, base_url: str, key: str) -> None:
        parts = urlsplit(base_url)
        assert parts.hostname is not None and parts.port is not None
        self._host, self._port = parts.hostname, parts.port
        self._key = key
        self.unexpected: list[str] = []

    def call(
        self, method: str, path: str, expect: int, body: Json | None = None, auth: bool = True
    ) -> Json | None:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if auth:
            headers["Authorization"] = f"Bearer {self._key}"
        connection = http.client.HTTPConnection(self._host, self._port, timeout=10)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            answer = response.read()
        finally:
            connection.close()
        if response.status != expect:
            self.unexpected.append(f"{method} {path}: {response.status}, not {expect}")
            return None
        if answer and response.getheader("Content-Type", "").endswith("json"):
            parsed: Json = json.loads(answer)
            return parsed
        return None

    def create(self, n: int) -> str:
        link = self.call("POST", "/api/v1/links", 201, {"url": f"https://example.com/e2e/{n}"})
        assert link is not None, self.unexpected
        code: str = link["code"]
        return code


@dataclass
class Traffic:
    """A bounded mix of what the service answers: creates, hot redirects, unknown codes,
    updates (which invalidate every worker's L1), and API errors."""

    client: Client
    hot: list[str] = field(default_factory=list)
    rounds: int = 0

    def round(self) -> None:
        self.rounds += 1
        client = self.client
        for code in self.hot:
            client.call("GET", f"/{code}", 302, auth=False)
        client.call("GET", f"/nx{secrets.token_hex(6)}", 404, auth=False)
        client.call("GET", "/-not-a-code", 404, auth=False)
        client.call("GET", f"/api/v1/links/nx{secrets.token_hex(6)}", 404)
        client.call("POST", "/api/v1/links", 401, {"url": "https://example.com/"}, auth=False)
        client.call("POST", "/api/v1/links", 400, {"url": "not a url"})
        if self.rounds % 3 == 1:
            client.create(10_000 + self.rounds)
            url = f"https://example.com/e2e/updated/{self.rounds}"
            client.call("PATCH", f"/api/v1/links/{self.hot[0]}", 200, {"url": url})


class Background:
    """Runs traffic rounds in a thread until stopped, or its round or time bound."""

    def __init__(self, traffic: Traffic) -> None:
        self._traffic = traffic
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> Background:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        deadline = time.monotonic() + TRAFFIC_MAX_SECONDS
        try:
            for _ in range(TRAFFIC_MAX_ROUNDS):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                self._traffic.round()
                self._stop.wait(TRAFFIC_PAUSE)
        except BaseException as exc:
            self.error = exc


def address(instance: AppInstance) -> str:
    return instance.url.removeprefix("http://")


# the tests ---------------------------------------------------------------------------------


def test_every_dashboard_query_has_data(
    postgres_url: str,
    redis_url: str,
    redis_server: RedisServer,
    app_instance_factory: AppInstanceFactory,
    nginx_factory: NginxFactory,
    exporter_factory: ExporterFactory,
    prometheus_factory: PrometheusFactory,
) -> None:
    env = {
        "SHORTENER_DATABASE_URL": postgres_url,
        "SHORTENER_REDIS_URL": redis_url,
        "SHORTENER_CLICK_BUFFER_MAX_CODES": CLICK_BUFFER_MAX_CODES,
        "SHORTENER_LOG_LEVEL": "warning",
    }
    instances = [app_instance_factory(env, workers=2) for _ in range(2)]
    targets = [address(instance) for instance in instances]
    nginx = nginx_factory.production(targets)
    assert nginx.status_url is not None
    exporters = {
        "redis": exporter_factory.redis(redis_url),
        "postgres": exporter_factory.postgres(postgres_url),
        "nginx": exporter_factory.nginx(nginx.status_url),
    }
    prometheus = prometheus_factory(
        {"shortener": targets, **{job: [e.address] for job, e in exporters.items()}}
    )
    prometheus.wait_for_targets_up(len(targets) + len(exporters))

    client = Client(nginx.url, keys_create(env, "e2e"))
    traffic = Traffic(client, hot=[client.create(n) for n in range(HOT_LINKS)])
    traffic.round()
    # Redis away for a moment: lookups fail (shortener_redis_errors_total gets its series),
    # and the reconnect flushes every L1.
    redis_server.stop()
    for _ in range(3):
        traffic.round()
    redis_server.start()

    queries = dashboard_queries()
    assert len(queries) >= 30
    with Background(traffic) as background:
        problems = _wait_for_data(prometheus, queries, targets)
        state = _alert_state(prometheus)
    assert background.error is None, background.error
    assert client.unexpected == [], client.unexpected
    assert problems == {}, f"panels without data (alerts: {state}):\n" + "\n".join(
        f"{query}: {problem}\n    {query.expr}" for query, problem in problems.items()
    )
    # The $instance list is every instance; the ALERTS panel showed a real alert.
    assert prometheus.label_values("instance", "shortener_build_info") == sorted(targets)
    assert ("ClicksDropped", "firing") in state, state
    assert prometheus.rule_errors() == []


def _wait_for_data(
    prometheus: Prometheus, queries: list[PanelQuery], instances: list[str]
) -> dict[PanelQuery, str]:
    """Evaluates every query until each has data, or the time is up; what still has none."""
    deadline = time.monotonic() + DASHBOARD_DATA_TIMEOUT
    pending = list(queries)
    problems: dict[PanelQuery, str] = {}
    while True:
        problems = {}
        for query in pending:
            problem = _problem(prometheus.query(substitute(query.expr, instances)))
            if problem is not None:
                problems[query] = problem
        pending = list(problems)
        if not pending or time.monotonic() > deadline:
            return problems
        time.sleep(1)


def _alert_state(prometheus: Prometheus) -> set[tuple[str, str]]:
    return {
        (sample.labels["alertname"], sample.labels["alertstate"])
        for sample in prometheus.query("ALERTS")
    }


def test_dead_instance_is_announced_on_discord_and_then_resolved(
    postgres_url: str,
    app_instance_factory: AppInstanceFactory,
    prometheus_factory: PrometheusFactory,
    alertmanager_factory: AlertmanagerFactory,
    discord_stub: DiscordStub,
) -> None:
    env = {"SHORTENER_DATABASE_URL": postgres_url, "SHORTENER_LOG_LEVEL": "warning"}
    victim, survivor = (app_instance_factory(env, workers=2) for _ in range(2))
    alertmanager = alertmanager_factory(discord_stub.url)
    prometheus = prometheus_factory(
        {"shortener": [address(victim), address(survivor)]},
        alertmanagers=[alertmanager.address],
    )
    prometheus.wait_for_targets_up(2)

    def about(status: str) -> Any:
        def accept(message: Json) -> bool:
            text = discord_text(message)
            return status in text and ALERT in text and address(victim) in text

        return accept

    victim.kill()
    killed_at = time.monotonic()
    firing = discord_stub.wait_for(
        about("FIRING"), FIRING_WITHIN, f"FIRING {ALERT} on {address(victim)}"
    )
    fired_after = time.monotonic() - killed_at
    text = discord_text(firing)
    assert f"Shortener instance {address(victim)} is down" in text
    assert "[critical]" in text

    victim.start()
    discord_stub.wait_for(
        about("RESOLVED"), RESOLVED_WITHIN, f"RESOLVED {ALERT} on {address(victim)}"
    )
    messages = [discord_text(message) for message in discord_stub.messages]
    assert not [m for m in messages if address(survivor) in m], messages
    assert discord_stub.refused == []
    # The rule's `for: 30s` plus a scrape, an evaluation and group_wait.
    assert fired_after >= 30, f"fired {fired_after:.1f} s after the kill, before the rule's for"
