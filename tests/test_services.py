"""The service fixtures start real servers, survive chaos and clean up after themselves."""

from __future__ import annotations

import asyncio
import os
import socket
import urllib.error
import urllib.request

import asyncpg
import psutil
import psycopg
import pytest
import redis

from tests.services import (
    NginxFactory,
    PostgresServer,
    RedisServer,
    free_port,
    fresh_database,
)


def _select_one(url: str) -> int:
    async def query() -> int:
        connection = await asyncpg.connect(url, timeout=5)
        try:
            value: int = await connection.fetchval("SELECT 1")
        finally:
            await connection.close()
        return value

    return asyncio.run(query())


def test_free_port_is_bindable_on_loopback_and_not_repeated() -> None:
    ports = {free_port() for _ in range(20)}
    assert len(ports) == 20
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports.pop()))


def test_postgres_url_is_a_fresh_empty_database(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    assert postgres_url.startswith(f"postgresql://postgres@127.0.0.1:{postgres_server.port}/")
    with psycopg.connect(postgres_url) as connection:
        name, tables = connection.execute(
            "SELECT current_database(), "
            "(SELECT count(*) FROM pg_tables WHERE schemaname = 'public')"
        ).fetchone() or (None, None)
    assert postgres_url.endswith(f"/{name}")
    assert tables == 0


def test_postgres_runs_as_the_postgres_user_when_root(postgres_server: PostgresServer) -> None:
    pid = int((postgres_server.datadir / "postmaster.pid").read_text().split()[0])
    expected = "postgres" if os.geteuid() == 0 else psutil.Process().username()
    assert psutil.Process(pid).username() == expected


def test_postgres_comes_back_after_kill(postgres_server: PostgresServer, postgres_url: str) -> None:
    assert _select_one(postgres_url) == 1
    with psycopg.connect(postgres_url) as connection:
        connection.execute("CREATE TABLE kept (id int)")

    postgres_server.kill()

    assert not postgres_server.running
    assert not (postgres_server.datadir / "postmaster.pid").exists()
    with pytest.raises(OSError):
        _select_one(postgres_url)

    postgres_server.start()

    assert postgres_server.running
    assert _select_one(postgres_url) == 1
    with psycopg.connect(postgres_url) as connection:
        assert connection.execute("SELECT count(*) FROM kept").fetchone() == (0,)


def test_postgres_stop_then_start_on_the_same_port(postgres_server: PostgresServer) -> None:
    port = postgres_server.port

    postgres_server.stop()

    assert not postgres_server.running
    postgres_server.start()
    assert postgres_server.port == port
    assert _select_one(postgres_server.url("postgres")) == 1


def test_a_fresh_database_is_dropped_though_the_test_left_the_server_down(
    postgres_server: PostgresServer,
) -> None:
    with fresh_database(postgres_server) as url:
        name = url.rsplit("/", 1)[1]
        assert _select_one(url) == 1
        postgres_server.kill()  # as a chaos test may leave it

    assert postgres_server.running
    with psycopg.connect(postgres_server.url("postgres")) as connection:
        left = connection.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,))
        assert left.fetchone() == (0,)


def test_drop_database_closes_open_connections(postgres_server: PostgresServer) -> None:
    postgres_server.create_database("doomed")
    with psycopg.connect(postgres_server.url("doomed")) as connection:
        postgres_server.drop_database("doomed")
        with pytest.raises(psycopg.OperationalError):
            connection.execute("SELECT 1")


def test_redis_url_is_flushed_and_usable(redis_server: RedisServer, redis_url: str) -> None:
    assert redis_url == f"redis://127.0.0.1:{redis_server.port}/0"
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0
        client.set("greeting", "hello")
        assert client.get("greeting") == b"hello"
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}


def test_redis_comes_back_empty_after_kill(redis_server: RedisServer, redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        client.set("greeting", "hello")

    redis_server.kill()

    assert not redis_server.running
    with redis.Redis.from_url(redis_url) as client, pytest.raises(redis.ConnectionError):
        client.ping()

    redis_server.start()

    assert redis_server.running
    with redis.Redis.from_url(redis_url) as client:
        assert client.get("greeting") is None
        client.set("greeting", "again")
        assert client.get("greeting") == b"again"


def test_nginx_serves_a_static_location(nginx_factory: NginxFactory) -> None:
    port = nginx_factory.port
    nginx = nginx_factory(
        f"""
        events {{}}
        http {{
            server {{
                listen 127.0.0.1:{port};
                location / {{ return 200 "ok"; }}
            }}
        }}
        """
    )

    assert nginx.url == f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(f"{nginx.url}/anything", timeout=5) as response:
        assert response.status == 200
        assert response.read() == b"ok"

    nginx.stop()

    assert not nginx.running
    assert (nginx.prefix / "access.log").read_text().count("GET /anything") == 1
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(nginx.url, timeout=5)


def test_nginx_factory_rejects_a_config_without_its_port(nginx_factory: NginxFactory) -> None:
    with pytest.raises(ValueError, match="must listen on"):
        nginx_factory("events {} http { server { listen 127.0.0.1:1; } }", port=free_port())
