"""The production topology as real processes on 127.0.0.1, for chaos tests and chaos runs.

PostgreSQL and Redis, three app instances of two gunicorn workers each, and nginx in front of
them on nginx/nginx.conf itself (rendered for loopback by nginx/render.py, so the retries,
passive health checks and keep-alive under test are production's)::

    client -> nginx (127.0.0.1:N, JSON access log) -> instance 0, 1, 2 (gunicorn, 2 workers)
                                                        -> PostgreSQL, Redis

In pytest, ask for the ``topology`` fixture (tests/topology.py): it runs on the session's
PostgreSQL (a fresh database) and Redis (emptied) and stops everything it started at teardown.

Outside pytest, e.g. from a chaos runner::

    from devservices.topology import Topology

    with Topology.start(Path("/tmp/chaos")) as topology:   # its own PostgreSQL and Redis
        run_load(topology.url, topology.admin_key)
        topology.kill(1)
        topology.restart(1)

``Topology.start(workdir, database_url=..., redis_url=...)`` uses servers that already run
instead. Everything stays in ``workdir``: ``apps/app-*.log`` (one log per instance),
``metrics-N/`` (instance N's prometheus multiprocess files, emptied at each of its starts),
and nginx's ``nginx.conf``, ``error.log`` and ``access.log`` (one JSON object per request)
under ``nginx/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from devservices.app import AppInstance, AppInstanceFactory, keys_create
from devservices.nginx import NGINX, Nginx, NginxFactory
from devservices.postgres import PostgresServer
from devservices.processes import free_port
from devservices.redis import REDIS_SERVER, RedisServer

INSTANCES = 3
WORKERS = 2
REDIRECT_ROUTE = "/{code}"
# nginx.conf's upstream: what upstream_addr names when no instance was left to try.
UPSTREAM = "shortener"
_REQUEST_COUNT = "shortener_http_request_duration_seconds_count"


@dataclass
class Topology:
    """A running topology; make one with :meth:`Topology.start` or the ``topology`` fixture.

    ``url`` is nginx's public address, the only one clients should use; ``env`` is what every
    instance runs with (database, Redis, trusted proxy, base URL); ``admin_key`` is an admin API
    key. ``instances[i]`` is a :class:`devservices.app.AppInstance` (``url``, ``pid`` of the
    gunicorn master, ``worker_pids()``, ``kill()``, ``start()``, ``stop()``, and ``env``, which
    adds its own ``PROMETHEUS_MULTIPROC_DIR``), and ``addresses[i]`` its "127.0.0.1:PORT" as
    nginx names it in ``upstream_addr``. ``nginx`` is a :class:`devservices.nginx.Nginx`
    (``prefix``, ``access_log_path``, ``stop()``).
    """

    url: str
    nginx: Nginx
    instances: list[AppInstance]
    admin_key: str
    env: dict[str, str]
    database_url: str
    redis_url: str

    @classmethod
    @contextlib.contextmanager
    def start(
        cls,
        workdir: Path,
        *,
        database_url: str | None = None,
        redis_url: str | None = None,
        instances: int = INSTANCES,
        workers: int = WORKERS,
        env: Mapping[str, str] | None = None,
    ) -> Iterator[Topology]:
        """Starts the topology in ``workdir`` and stops all of it on leaving the block.

        Without ``database_url`` (a ``postgresql://`` URL whose database exists) or
        ``redis_url``, starts a PostgreSQL cluster or a redis-server of its own on a free port
        and removes it afterwards. ``env`` adds to or overrides the instances' settings.
        Instances start one after another, each waited for until ``/healthz`` answers and all
        its workers exist; nginx starts last, then the admin key is made.
        """
        workdir.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            if database_url is None:
                database_url = stack.enter_context(_own_postgres(workdir / "postgres"))
            if redis_url is None:
                redis_url = stack.enter_context(_own_redis(workdir / "redis"))
            (workdir / "apps").mkdir(exist_ok=True)
            app_factory = AppInstanceFactory(workdir / "apps")
            stack.callback(app_factory.close)
            nginx_factory = NginxFactory(NGINX, workdir / "nginx")
            # Registered last, so closed first: no request reaches an instance that is stopping.
            stack.callback(nginx_factory.close)
            port = nginx_factory.port
            instance_env = {
                "SHORTENER_DATABASE_URL": database_url,
                "SHORTENER_REDIS_URL": redis_url,
                "SHORTENER_TRUSTED_PROXIES": "127.0.0.1/32",
                "SHORTENER_BASE_URL": f"http://127.0.0.1:{port}",
                **(env or {}),
            }
            # Each instance's metric files in workdir: left to itself, `serve` makes a new
            # /tmp/shortener-metrics-* folder at every start and never removes it.
            metrics_dirs = [workdir / f"metrics-{n}" for n in range(instances)]
            for directory in metrics_dirs:
                directory.mkdir(exist_ok=True)  # prometheus_client writes there on import
            started = [
                app_factory({**instance_env, "PROMETHEUS_MULTIPROC_DIR": str(d)}, workers)
                for d in metrics_dirs
            ]
            nginx = nginx_factory.production([_address(i) for i in started], port=port)
            admin_key = keys_create(instance_env, "topology-admin", admin=True)
            yield cls(
                url=nginx.url,
                nginx=nginx,
                instances=started,
                admin_key=admin_key,
                env=instance_env,
                database_url=database_url,
                redis_url=redis_url,
            )

    @property
    def addresses(self) -> list[str]:
        """Each instance's "127.0.0.1:PORT", as nginx's access log names it."""
        return [_address(instance) for instance in self.instances]

    def kill(self, index: int) -> None:
        """SIGKILL instance ``index``: its gunicorn master and workers at once, a crash."""
        self.instances[index].kill()

    def restart(self, index: int) -> None:
        """Starts instance ``index`` again, on the same port and settings; returns once
        ``/healthz`` answers and all its workers exist. A no-op while it runs."""
        self.instances[index].start()

    def kill_worker(self, index: int) -> int:
        """SIGKILLs the gunicorn worker of instance ``index`` that holds the most connections
        (nginx's keep-alive ones: the worker carrying traffic) and returns its pid; the master
        is left to notice and fork a replacement."""
        instance = self.instances[index]

        def connections(pid: int) -> int:
            try:
                held = psutil.Process(pid).net_connections(kind="tcp")
            except psutil.NoSuchProcess:
                return -1
            return sum(
                c.status == psutil.CONN_ESTABLISHED and c.laddr.port == instance.port for c in held
            )

        pid = max(instance.worker_pids(), key=connections)
        os.kill(pid, signal.SIGKILL)
        return pid

    def served(self, index: int, route: str = REDIRECT_ROUTE) -> int:
        """Requests for ``route`` that instance ``index`` answered since it last started, from
        its ``/metrics`` (all workers, all methods and statuses)."""
        with urllib.request.urlopen(f"{self.instances[index].url}/metrics", timeout=5) as reply:
            text: str = reply.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(f"{_REQUEST_COUNT}{{") and f'route="{route}"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    def access_log(self) -> list[dict[str, Any]]:
        """nginx's access log so far, one dict per request (nginx.conf's ``json`` format:
        ``request_id``, ``status``, ``upstream_addr`` with every address tried, ", "-separated,
        ``upstream_status`` likewise, ...)."""
        return access_log(self.nginx.access_log_path)

    def upstream_failures(self) -> Counter[str]:
        """nginx's failed tries of an instance so far: see :func:`upstream_failures`."""
        return upstream_failures(self.access_log())


def access_log(path: Path) -> list[dict[str, Any]]:
    """An access log in nginx.conf's ``json`` format, one dict per request."""
    entries = []
    with path.open(encoding="utf-8") as log:
        for line in log:
            if line.endswith("\n"):  # a line still being written is left for next time
                entries.append(json.loads(line))
    return entries


def upstream_failures(entries: list[dict[str, Any]]) -> Counter[str]:
    """The failed tries of an upstream in these access log entries (nginx's error log, at crit,
    has none): "connect error" (refused or reset before connecting: 502), "connect timeout"
    (504 before connecting) and "no live upstreams" (every instance resting after
    max_fails)."""
    failures: Counter[str] = Counter()
    for entry in entries:
        tries = zip(
            _tries(entry["upstream_addr"]),
            _tries(entry["upstream_status"]),
            _tries(entry["upstream_connect_time"]),
            strict=True,
        )
        for address, status, connect_time in tries:
            if address == UPSTREAM:
                failures["no live upstreams"] += 1
            elif connect_time == "-" and status in ("502", "504"):
                failures["connect timeout" if status == "504" else "connect error"] += 1
    return failures


def _tries(field: str) -> list[str]:
    """One value per upstream tried: nginx separates them by ", " (and by " : " across an
    internal redirect)."""
    return re.split(r", | : ", field) if field else []


def _address(instance: AppInstance) -> str:
    return f"{instance.host}:{instance.port}"


@contextlib.contextmanager
def _own_postgres(scripts_dir: Path) -> Iterator[str]:
    """A PostgreSQL cluster of its own with an empty database; the URL of that database."""
    scripts_dir.mkdir(parents=True, exist_ok=True)
    server = PostgresServer.create(scripts_dir)
    try:
        server.start()
        server.create_database("shortener")
        yield server.url("shortener")
    finally:
        try:
            server.close()
        finally:
            shutil.rmtree(server.base_dir, ignore_errors=True)


@contextlib.contextmanager
def _own_redis(directory: Path) -> Iterator[str]:
    directory.mkdir(parents=True, exist_ok=True)
    server = RedisServer(REDIS_SERVER, directory, free_port())
    try:
        server.start()
        yield server.url
    finally:
        server.close()
