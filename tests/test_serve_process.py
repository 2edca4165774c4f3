"""`shortener serve` as an operator sees the process: its accept queue, every line it prints,
and no credential in them."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.services import AppInstance, AppInstanceFactory, free_port

pytestmark = pytest.mark.slow

SOMAXCONN = int(Path("/proc/sys/net/core/somaxconn").read_text())
KEY = "sk_NeverInTheLogs0123456789abcdefghijklmnopqr"


def _sqlite(tmp_path: Path) -> dict[str, str]:
    return {"SHORTENER_DATABASE_URL": f"sqlite:///{tmp_path / 'shortener.db'}"}


def accept_queue(port: int) -> int:
    """The listening socket's backlog: Send-Q of `ss -ltn` for a socket in LISTEN."""
    out = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    (line,) = out.splitlines()
    return int(line.split()[2])


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_listens_with_gunicorns_default_backlog(
    app_instance_factory: AppInstanceFactory, tmp_path: Path, workers: int
) -> None:
    instance = app_instance_factory(_sqlite(tmp_path), workers=workers)
    assert accept_queue(instance.port) == min(2048, SOMAXCONN) >= 1024


def test_the_backlog_is_a_setting(app_instance_factory: AppInstanceFactory, tmp_path: Path) -> None:
    instance = app_instance_factory({**_sqlite(tmp_path), "SHORTENER_BACKLOG": "1500"}, workers=2)
    assert accept_queue(instance.port) == min(1500, SOMAXCONN)


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return error.code


def _raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        return connection.recv(64)


def _log_entries(instance: AppInstance) -> list[dict[str, Any]]:
    """Every line the instance printed, from start to exit, each parsed as a JSON object."""
    entries = []
    for line in instance.log_path.read_text().splitlines():
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        entries.append(entry)
    return entries


def test_every_line_serve_with_two_workers_prints_is_json(
    app_instance_factory: AppInstanceFactory, tmp_path: Path
) -> None:
    unreachable_redis = f"redis://127.0.0.1:{free_port()}/0"
    env = {**_sqlite(tmp_path), "SHORTENER_REDIS_URL": unreachable_redis}
    instance = app_instance_factory(env, workers=2)
    # Unknown codes go to Redis first: the workers log that it is down.
    assert {_get(f"{instance.url}/nosuchcode{n}") for n in range(20)} == {404}
    instance.stop()
    entries = _log_entries(instance)
    for entry in entries:
        assert {"time", "level", "logger", "message", "request_id"} <= entry.keys(), entry
    loggers = {entry["logger"] for entry in entries}
    assert "gunicorn.error" in loggers  # the master and the workers' own lines
    assert "shortener.cache.redis" in loggers  # the app, in the workers
    assert any("Shutting down" in entry["message"] for entry in entries)


def test_no_log_line_carries_an_api_key(
    app_instance_factory: AppInstanceFactory, tmp_path: Path
) -> None:
    instance = app_instance_factory(_sqlite(tmp_path), workers=2)
    malformed = [
        f"Authorization: Bearer {KEY}\x01",  # a control byte: aiohttp quotes the raw line
        f"Authorization: Bearer {KEY}{'a' * 9000}",  # a header over 8 KB
        f"X-Api-Key: {KEY}\x01",
    ]
    for header in malformed:
        request = f"GET /abc HTTP/1.1\r\nHost: sho.rt\r\n{header}\r\n\r\n".encode()
        assert _raw_request(instance.port, request).startswith(b"HTTP/1.0 400")
    instance.stop()
    text = instance.log_path.read_text()
    errors = [entry for entry in _log_entries(instance) if entry["level"] == "error"]
    assert len(errors) == len(malformed)  # aiohttp logged each 400, with the header it read
    assert KEY not in text
    assert KEY[:12] not in text
