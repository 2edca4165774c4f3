"""Real backing services for tests: PostgreSQL, Redis, nginx and the app itself, as fixtures.

Load with ``pytest_plugins = ["tests.services"]``. The servers come from the devservices
package (see devservices/__init__.py); these fixtures start them on free 127.0.0.1 ports and
stop what they started, even when the test fails. The session servers can be stopped, killed
and started again on the same port by chaos tests; the function-scoped ``postgres_url`` and
``redis_url`` bring them back up for the next test.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from devservices.app import AppInstance, AppInstanceFactory, HttpProcess, keys_create
from devservices.ha import PGBOUNCER, PgBouncer
from devservices.nginx import NGINX, Nginx, NginxFactory
from devservices.postgres import PostgresServer
from devservices.processes import (
    LOOPBACK,
    PROJECT_ROOT,
    STARTUP_TIMEOUT,
    STOP_TIMEOUT,
    MissingBinary,
    Service,
    ServiceError,
    close_all,
    debian_binary,
    free_port,
    log_tail,
)
from devservices.redis import REDIS_SERVER, RedisServer

__all__ = [
    "LOOPBACK",
    "NGINX",
    "PROJECT_ROOT",
    "REDIS_SERVER",
    "STARTUP_TIMEOUT",
    "STOP_TIMEOUT",
    "AppInstance",
    "AppInstanceFactory",
    "HttpProcess",
    "Nginx",
    "NginxFactory",
    "PostgresServer",
    "RedisServer",
    "Service",
    "ServiceError",
    "close_all",
    "free_port",
    "fresh_database",
    "installed",
    "keys_create",
    "log_tail",
]


def installed(path: str, apt_package: str) -> str:
    """``path`` if it is an executable, else fail the test saying which package to install."""
    try:
        return debian_binary(path, apt_package)
    except MissingBinary as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session; see :class:`PostgresServer`."""
    scripts_dir = tmp_path_factory.mktemp("postgres")
    try:
        server = PostgresServer.create(scripts_dir)
    except MissingBinary as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        server.start()
        yield server
    finally:
        try:
            server.close()
        finally:
            # Keep the server log next to the other test logs; the cluster itself goes.
            if server.log_path.exists():
                shutil.copy(server.log_path, scripts_dir / server.log_path.name)
            shutil.rmtree(server.base_dir, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """URL of a fresh, empty database, dropped after the test."""
    with fresh_database(postgres_server) as url:
        yield url


@contextlib.contextmanager
def fresh_database(server: PostgresServer) -> Iterator[str]:
    """A new database on ``server``, dropped at the end even if the server was left down."""
    server.start()
    name = f"test_{uuid.uuid4().hex[:16]}"
    server.create_database(name)
    try:
        yield server.url(name)
    finally:
        server.start()
        server.drop_database(name)


@pytest.fixture(scope="session")
def pgbouncer(postgres_server: PostgresServer) -> Iterator[PgBouncer]:
    """PgBouncer in transaction pooling mode in front of the session's PostgreSQL."""
    installed(PGBOUNCER, "pgbouncer")
    bouncer = PgBouncer(free_port(), postgres_server.port)
    try:
        bouncer.start()
        yield bouncer
    finally:
        bouncer.close()


@pytest.fixture
def pgbouncer_url(pgbouncer: PgBouncer, postgres_url: str) -> str:
    """The fresh database of ``postgres_url``, reached through :func:`pgbouncer`."""
    pgbouncer.start()
    return pgbouncer.url(postgres_url.rsplit("/", 1)[1])


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server for the whole session; see :class:`RedisServer`."""
    executable = installed(REDIS_SERVER, "redis-server")
    server = RedisServer(executable, tmp_path_factory.mktemp("redis"), free_port())
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session's Redis, running and emptied for this test."""
    redis_server.start()
    with redis.Redis(host=redis_server.host, port=redis_server.port) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
def app_instance_factory(tmp_path: Path) -> Iterator[AppInstanceFactory]:
    """Starts app instances (see :class:`AppInstanceFactory`); all stopped at teardown."""
    factory = AppInstanceFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def nginx_factory(tmp_path: Path) -> Iterator[NginxFactory]:
    """Starts nginx processes (see :class:`NginxFactory`); all stopped at teardown."""
    factory = NginxFactory(installed(NGINX, "nginx"), tmp_path)
    try:
        yield factory
    finally:
        factory.close()
