"""The monitoring stack for end-to-end tests: Prometheus, Alertmanager, the exporters and a
stand-in for Discord's webhook endpoint.

Load with ``pytest_plugins = ["tests.services", "tests.monitoring"]``. Like tests/services.py,
every fixture runs a Debian binary on a free 127.0.0.1 port and stops what it started, even
when the test fails. Prometheus and Alertmanager run on configurations rendered from
prometheus/prometheus.yml and prometheus/alertmanager.yml by prometheus/render.py, never on
configurations of their own, so what the tests exercise is what compose runs.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from aiohttp import web
from mirakuru import HTTPExecutor

from tests.services import (
    LOOPBACK,
    PROJECT_ROOT,
    STARTUP_TIMEOUT,
    Service,
    ServiceError,
    close_all,
    free_port,
    installed,
)

PROMETHEUS = "/usr/bin/prometheus"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
REDIS_EXPORTER = "/usr/bin/prometheus-redis-exporter"
POSTGRES_EXPORTER = "/usr/bin/prometheus-postgres-exporter"
NGINX_EXPORTER = "/usr/bin/prometheus-nginx-exporter"

RENDER = PROJECT_ROOT / "prometheus" / "render.py"
PROMETHEUS_YML = PROJECT_ROOT / "prometheus" / "prometheus.yml"
ALERTMANAGER_YML = PROJECT_ROOT / "prometheus" / "alertmanager.yml"
# Short enough that a test sees a change within seconds; the rules keep their `for`.
INTERVAL = "1s"
DISCORD_WEBHOOK_PATH = "/api/webhooks/1/e2e-token"
HTTP_TIMEOUT = 5.0

Json = dict[str, Any]


class PrometheusError(RuntimeError):
    """Prometheus refused a query; the message has its error."""


@cache
def render_module() -> ModuleType:
    """prometheus/render.py, loaded by path: prometheus/ is not a package."""
    spec = importlib.util.spec_from_file_location("prometheus_render", RENDER)
    if spec is None or spec.loader is None:
        raise ServiceError(f"cannot load {RENDER}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def get_json(url: str, timeout: float = HTTP_TIMEOUT) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def _executor(
    command: Sequence[str],
    ready_url: str,
    log_path: Path,
    envvars: Mapping[str, str] | None = None,
    stopped_code: int | None = None,
) -> tuple[HTTPExecutor, Any]:
    """A mirakuru executor that waits for `ready_url` to answer 200, logging to `log_path`;
    `stopped_code` is the exit code SIGTERM gives, when the process does not die of it."""
    log_file = log_path.open("a")
    executor = HTTPExecutor(
        list(command),
        url=ready_url,
        status=200,
        method="GET",
        request_timeout=2,
        timeout=STARTUP_TIMEOUT,
        expected_returncode=stopped_code,
        envvars=dict(envvars or {}),
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    return executor, log_file


# Prometheus --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One element of an instant query's result."""

    labels: dict[str, str]
    value: float


class Prometheus(Service):
    """Prometheus on 127.0.0.1:``port`` with ``config_text``, its data in ``directory``."""

    def __init__(self, executable: str, directory: Path, config_text: str, port: int) -> None:
        directory.mkdir(parents=True)
        self.config_path = directory / "prometheus.yml"
        self.config_path.write_text(config_text)
        self.url = f"http://{LOOPBACK}:{port}"
        command = [
            executable,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address={LOOPBACK}:{port}",
            "--log.level=info",
        ]
        log_path = directory / "prometheus.log"
        executor, log_file = _executor(command, f"{self.url}/-/ready", log_path)
        super().__init__("prometheus", executor, port, log_path, log_file)

    def query(self, expr: str, at: float | None = None) -> list[Sample]:
        """The result of an instant query at `at` (default: now); Prometheus' errors raise."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._api("query", params)
        if data["resultType"] == "scalar":
            return [Sample({}, float(data["result"][1]))]
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr!r} gave a {data['resultType']}, not an instant vector")
        return [Sample(item["metric"], float(item["value"][1])) for item in data["result"]]

    def label_values(self, label: str, match: str) -> list[str]:
        values: list[str] = self._api(f"label/{label}/values", {"match[]": match})
        return sorted(values)

    def targets(self) -> list[Json]:
        targets: list[Json] = self._api("targets", {"state": "active"})["activeTargets"]
        return targets

    def wait_for_targets_up(self, count: int, timeout: float = STARTUP_TIMEOUT) -> None:
        """Until `count` targets are scraped and every one of them is up."""
        deadline = time.monotonic() + timeout
        while True:
            targets = self.targets()
            if len(targets) == count and all(t["health"] == "up" for t in targets):
                return
            if time.monotonic() > deadline:
                states = {t["scrapeUrl"]: (t["health"], t["lastError"]) for t in targets}
                raise ServiceError(f"targets not all up after {timeout} s: {states}")
            time.sleep(0.25)

    def rule_errors(self) -> list[str]:
        """The rules whose last evaluation failed."""
        groups = self._api("rules", {})["groups"]
        return [
            f"{rule['name']}: {rule['lastError']}"
            for group in groups
            for rule in group["rules"]
            if rule.get("health") not in ("ok", "unknown")
        ]

    def _api(self, path: str, params: Mapping[str, str]) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            answer = get_json(url)
        except urllib.error.HTTPError as exc:
            answer = json.loads(exc.read() or b"{}")
        if answer.get("status") != "success":
            raise PrometheusError(f"{path} {dict(params)}: {answer.get('error', answer)}")
        return answer["data"]


class PrometheusFactory:
    """``prometheus_factory(targets, alertmanagers=())`` starts Prometheus on prometheus.yml
    rendered for loopback: ``targets`` maps job names of that file to "127.0.0.1:PORT" lists
    (other jobs are left out), scrape and rule evaluation every second, the rules of
    prometheus/rules/ as they are. It returns once Prometheus is ready."""

    def __init__(self, executable: str, directory: Path) -> None:
        self._executable = executable
        self._directory = directory
        self._instances: list[Prometheus] = []

    def __call__(
        self, targets: Mapping[str, Sequence[str]], alertmanagers: Sequence[str] = ()
    ) -> Prometheus:
        config_text: str = render_module().render_prometheus(
            PROMETHEUS_YML.read_text(),
            targets=targets,
            alertmanagers=alertmanagers,
            scrape_interval=INTERVAL,
            evaluation_interval=INTERVAL,
        )
        port = free_port()
        directory = self._directory / f"prometheus-{len(self._instances)}-{port}"
        prometheus = Prometheus(self._executable, directory, config_text, port)
        self._instances.append(prometheus)
        prometheus.start()
        return prometheus

    def close(self) -> None:
        close_all(self._instances)


# Alertmanager ------------------------------------------------------------------------------


class Alertmanager(Service):
    """Alertmanager on 127.0.0.1:``port``, alone (no cluster), with ``config_text``."""

    def __init__(self, executable: str, directory: Path, config_text: str, port: int) -> None:
        # The rendered file may hold the webhook URL itself: keep it private.
        directory.mkdir(mode=0o700, parents=True)
        self.config_path = directory / "alertmanager.yml"
        self.config_path.write_text(config_text)
        self.url = f"http://{LOOPBACK}:{port}"
        self.address = f"{LOOPBACK}:{port}"
        command = [
            executable,
            f"--config.file={self.config_path}",
            f"--storage.path={directory / 'data'}",
            f"--web.listen-address={self.address}",
            # An empty address turns the gossip cluster off, which would take port 9094.
            "--cluster.listen-address=",
        ]
        log_path = directory / "alertmanager.log"
        executor, log_file = _executor(command, f"{self.url}/-/ready", log_path)
        super().__init__("alertmanager", executor, port, log_path, log_file)


class AlertmanagerFactory:
    """``alertmanager_factory(webhook_url)`` starts Alertmanager on alertmanager.yml rendered
    with Discord's webhook pointing at ``webhook_url`` and one-second group timings (a
    notification goes out about a second after Prometheus sends an alert or its
    resolution). The URL goes through a secret file, as in compose; the Debian 0.25 binary,
    which cannot read that file for Discord, gets it inlined into the private rendered copy.
    """

    def __init__(self, executable: str, directory: Path) -> None:
        self._executable = executable
        self._directory = directory
        self._instances: list[Alertmanager] = []
        version = subprocess.run(
            [executable, "--version"], capture_output=True, text=True, timeout=30, check=True
        )
        self._reads_file: bool = render_module().alertmanager_reads_webhook_file(
            version.stdout + version.stderr
        )

    def __call__(self, webhook_url: str) -> Alertmanager:
        port = free_port()
        directory = self._directory / f"alertmanager-{len(self._instances)}-{port}"
        secrets = self._directory / f"secrets-{port}"
        secrets.mkdir(mode=0o700)
        webhook_file = secrets / "discord_webhook_url"
        webhook_file.write_text(webhook_url + "\n")
        config_text: str = render_module().render_alertmanager(
            ALERTMANAGER_YML.read_text(),
            webhook_url_file=webhook_file,
            inline_webhook_url=not self._reads_file,
            group_wait=INTERVAL,
            group_interval=INTERVAL,
            resolve_timeout="10s",
        )
        alertmanager = Alertmanager(self._executable, directory, config_text, port)
        self._instances.append(alertmanager)
        alertmanager.start()
        return alertmanager

    def close(self) -> None:
        close_all(self._instances)


# exporters ---------------------------------------------------------------------------------


class Exporter(Service):
    """An exporter listening on 127.0.0.1:``port``; ``address`` is its scrape target."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        port: int,
        log_path: Path,
        envvars: Mapping[str, str] | None = None,
        stopped_code: int | None = None,
    ) -> None:
        self.address = f"{LOOPBACK}:{port}"
        executor, log_file = _executor(
            command, f"http://{self.address}/metrics", log_path, envvars, stopped_code
        )
        super().__init__(name, executor, port, log_path, log_file)


class ExporterFactory:
    """Starts the exporters of compose on loopback: ``redis(url)``, ``postgres(url)`` and
    ``nginx(status_url)``, each waiting until its /metrics answers."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._instances: list[Exporter] = []

    def redis(self, redis_url: str) -> Exporter:
        executable = installed(REDIS_EXPORTER, "prometheus-redis-exporter")
        port = free_port()
        command = [executable, f"-redis.addr={redis_url}", f"-web.listen-address={LOOPBACK}:{port}"]
        return self._start("redis-exporter", command, port)

    def postgres(self, postgres_url: str) -> Exporter:
        executable = installed(POSTGRES_EXPORTER, "prometheus-postgres-exporter")
        port = free_port()
        command = [executable, f"--web.listen-address={LOOPBACK}:{port}"]
        separator = "&" if "?" in postgres_url else "?"
        dsn = f"{postgres_url}{separator}sslmode=disable"
        return self._start("postgres-exporter", command, port, {"DATA_SOURCE_NAME": dsn})

    def nginx(self, status_url: str) -> Exporter:
        executable = installed(NGINX_EXPORTER, "prometheus-nginx-exporter")
        port = free_port()
        command = [
            executable,
            f"-nginx.scrape-uri={status_url}",
            f"-web.listen-address={LOOPBACK}:{port}",
        ]
        # It handles SIGTERM itself and then exits with 1.
        return self._start("nginx-exporter", command, port, stopped_code=1)

    def _start(
        self,
        name: str,
        command: Sequence[str],
        port: int,
        envvars: Mapping[str, str] | None = None,
        stopped_code: int | None = None,
    ) -> Exporter:
        log_path = self._directory / f"{name}-{port}.log"
        exporter = Exporter(name, command, port, log_path, envvars, stopped_code)
        self._instances.append(exporter)
        exporter.start()
        return exporter

    def close(self) -> None:
        close_all(self._instances)


# Discord -----------------------------------------------------------------------------------


def discord_text(message: Json) -> str:
    """Everything a Discord webhook message shows: its content and its embeds' text."""
    parts = [str(message.get("content") or "")]
    for embed in message.get("embeds") or []:
        parts += [str(embed.get("title") or ""), str(embed.get("description") or "")]
    return "\n".join(part for part in parts if part)


def _discord_problems(body: Any) -> list[str]:
    """What Discord would refuse in a webhook body (it needs content or embeds)."""
    if not isinstance(body, dict):
        return ["the body is not a JSON object"]
    embeds = body.get("embeds") or []
    if not body.get("content") and not embeds:
        return ["neither content nor embeds"]
    problems = []
    if len(embeds) > 10:
        problems.append("more than 10 embeds")
    for embed in embeds:
        if len(str(embed.get("title") or "")) > 256:
            problems.append("an embed title over 256 characters")
        if len(str(embed.get("description") or "")) > 4096:
            problems.append("an embed description over 4096 characters")
    return problems


class DiscordStub:
    """An aiohttp server on 127.0.0.1 answering like Discord's webhook endpoint (204), in a
    thread of its own. ``url`` is the webhook URL; ``messages`` the JSON bodies received
    that Discord would accept, ``refused`` what it would not."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}{DISCORD_WEBHOOK_PATH}"
        self.refused: list[tuple[Any, list[str]]] = []
        self._messages: list[Json] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="discord-stub", daemon=True
        )
        self._runner: web.AppRunner | None = None

    @property
    def messages(self) -> list[Json]:
        with self._lock:
            return list(self._messages)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(STARTUP_TIMEOUT)

    def wait_for(self, accept: Callable[[Json], bool], timeout: float, what: str) -> Json:
        """The first message `accept` takes, waiting up to `timeout` seconds for it."""
        deadline = time.monotonic() + timeout
        while True:
            for message in self.messages:
                if accept(message):
                    return message
            if time.monotonic() > deadline:
                received = "\n---\n".join(discord_text(m) for m in self.messages) or "nothing"
                raise AssertionError(
                    f"no Discord message {what} in {timeout:.0f} s; got:\n{received}"
                )
            time.sleep(0.2)

    def close(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_post(DISCORD_WEBHOOK_PATH, self._receive)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, LOOPBACK, self.port).start()
        self._runner = runner

    async def _receive(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = await request.text()
        problems = _discord_problems(body)
        with self._lock:
            if problems:
                self.refused.append((body, problems))
            else:
                self._messages.append(body)
        if problems:
            return web.json_response({"message": "; ".join(problems), "code": 50006}, status=400)
        return web.Response(status=204)


# fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[PrometheusFactory]:
    """Starts Prometheus processes (see :class:`PrometheusFactory`); stopped at teardown."""
    factory = PrometheusFactory(installed(PROMETHEUS, "prometheus"), tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def alertmanager_factory(tmp_path: Path) -> Iterator[AlertmanagerFactory]:
    """Starts Alertmanager processes (see :class:`AlertmanagerFactory`); stopped at teardown."""
    executable = installed(ALERTMANAGER, "prometheus-alertmanager")
    factory = AlertmanagerFactory(executable, tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def exporter_factory(tmp_path: Path) -> Iterator[ExporterFactory]:
    """Starts redis, postgres and nginx exporters (see :class:`ExporterFactory`)."""
    factory = ExporterFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def discord_stub() -> Iterator[DiscordStub]:
    """A running :class:`DiscordStub`, stopped at teardown."""
    stub = DiscordStub()
    try:
        stub.start()
        yield stub
    finally:
        stub.close()
