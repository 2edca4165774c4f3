"""High-availability set-ups of real servers: Redis under Sentinel, a PostgreSQL primary with a
synchronous streaming standby, and PgBouncer.

    SentinelGroup.start(directory)     a Redis primary, one replica, three Sentinels
    PostgresPair.start(scripts_dir)    a primary, a standby it replicates to synchronously
    PgBouncer(directory, port, ...)    pgbouncer in front of a PostgreSQL server

Each runs as it would in production, on free 127.0.0.1 ports; as root, PostgreSQL's tools and
pgbouncer (which both refuse root) run as the ``postgres`` OS user through runuser.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis
from mirakuru import TCPExecutor

from devservices.postgres import PostgresServer, postgres_owned_tempdir
from devservices.processes import (
    LOOPBACK,
    RUNUSER,
    STARTUP_TIMEOUT,
    Service,
    ServiceError,
    close_all,
    debian_binary,
    free_port,
)
from devservices.redis import REDIS_SERVER, RedisServer

REDIS_SENTINEL = "/usr/bin/redis-sentinel"
PGBOUNCER = "/usr/sbin/pgbouncer"
PRIMARY_NAME = "shortener"


class RedisSentinel(Service):
    """redis-sentinel on 127.0.0.1:``port``, watching the primary ``name`` at
    ``primary_port``: it calls it down after ``down_after_ms`` of silence, and a failover
    needs ``quorum`` Sentinels to agree."""

    def __init__(
        self,
        directory: Path,
        port: int,
        primary_port: int,
        *,
        name: str = PRIMARY_NAME,
        quorum: int = 2,
        down_after_ms: int = 1000,
    ) -> None:
        executable = debian_binary(REDIS_SENTINEL, "redis-sentinel")
        log_path = directory / f"redis-sentinel.{port}.log"
        config = directory / f"sentinel.{port}.conf"
        # Sentinel rewrites its config file as it learns the group, so it gets one of its own.
        config.write_text(
            f"port {port}\nbind {LOOPBACK}\ndaemonize no\ndir {directory}\n"
            f"logfile {log_path}\n"
            f"sentinel monitor {name} {LOOPBACK} {primary_port} {quorum}\n"
            f"sentinel down-after-milliseconds {name} {down_after_ms}\n"
            f"sentinel failover-timeout {name} 10000\n"
            f"sentinel parallel-syncs {name} 1\n"
        )
        executor = TCPExecutor(
            [executable, str(config)],
            host=LOOPBACK,
            port=port,
            timeout=STARTUP_TIMEOUT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # both log to log_path
            stderr=subprocess.DEVNULL,
        )
        super().__init__("redis-sentinel", executor, port, log_path)


@dataclass
class SentinelGroup:
    """A Redis primary, a replica of it and three Sentinels; ``url`` is the service's
    ``redis+sentinel://`` URL, ``servers`` the two Redis servers (either may be primary)."""

    servers: list[RedisServer]
    sentinels: list[RedisSentinel]
    name: str = PRIMARY_NAME

    @classmethod
    @contextlib.contextmanager
    def start(cls, directory: Path, *, down_after_ms: int = 1000) -> Iterator[SentinelGroup]:
        """Starts the group in ``directory`` and stops all of it on leaving the block; returns
        once the replica is in sync and every Sentinel knows the replica and the others."""
        executable = debian_binary(REDIS_SERVER, "redis-server")
        started: list[Service] = []
        try:
            primary = RedisServer(executable, directory, free_port())
            replica = RedisServer(executable, directory, free_port())
            for server in (primary, replica):
                started.append(server)
                server.start()
            with redis.Redis(host=LOOPBACK, port=replica.port) as client:
                client.replicaof(LOOPBACK, primary.port)
            sentinels = [
                RedisSentinel(directory, free_port(), primary.port, down_after_ms=down_after_ms)
                for _ in range(3)
            ]
            for sentinel in sentinels:
                started.append(sentinel)
                sentinel.start()
            group = cls([primary, replica], sentinels)
            group._wait_until_formed()
            yield group
        finally:
            close_all(list(reversed(started)))

    @property
    def url(self) -> str:
        hosts = ",".join(f"{LOOPBACK}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.name}/0"

    def primary_port(self) -> int | None:
        """The primary's port as a majority of the Sentinels that answer name it, or None."""
        named: dict[int, int] = {}
        for sentinel in self.sentinels:
            with (
                contextlib.suppress(redis.RedisError),
                redis.Redis(host=LOOPBACK, port=sentinel.port, socket_timeout=0.5) as client,
            ):
                address = client.sentinel_get_master_addr_by_name(self.name)
                if address:
                    port = int(address[1])
                    named[port] = named.get(port, 0) + 1
        agreed = [port for port, votes in named.items() if votes >= 2]
        return agreed[0] if agreed else None

    def server(self, port: int) -> RedisServer:
        return next(server for server in self.servers if server.port == port)

    def _wait_until_formed(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        primary, replica = self.servers
        while True:
            with redis.Redis(host=LOOPBACK, port=replica.port) as client:
                linked = client.info("replication").get("master_link_status") == "up"
            known = True
            for sentinel in self.sentinels:
                with redis.Redis(host=LOOPBACK, port=sentinel.port) as client:
                    state = client.sentinel_master(self.name)
                known &= int(state["num-slaves"]) == 1 and int(state["num-other-sentinels"]) == 2
            if linked and known:
                return
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"the Sentinel group of Redis {primary.port} did not form in "
                    f"{STARTUP_TIMEOUT} s (replica linked: {linked})"
                )
            time.sleep(0.1)


def _as_postgres(command: list[str]) -> list[str]:
    """The command as the postgres OS user when we are root (PostgreSQL's tools refuse root)."""
    if os.geteuid() != 0:
        return command
    return [debian_binary(RUNUSER, "util-linux"), "-u", "postgres", "--", *command]


def _run_as_postgres(command: list[str]) -> None:
    try:
        # cd /: postgres may not be allowed into the caller's working directory.
        subprocess.run(
            _as_postgres(command),
            cwd="/",
            check=True,
            capture_output=True,
            text=True,
            timeout=STARTUP_TIMEOUT,
        )
    except subprocess.CalledProcessError as exc:
        raise ServiceError(f"{shlex.join(command)} failed: {exc.stderr}") from exc


@dataclass
class PostgresPair:
    """A PostgreSQL primary and a hot standby streaming from it; commits wait until the
    standby has them (synchronous replication), so promoting it loses no acknowledged write.
    ``url(dbname)`` is the multi-host URL that finds whichever one is primary."""

    primary: PostgresServer
    standby: PostgresServer

    @classmethod
    @contextlib.contextmanager
    def start(cls, scripts_dir: Path) -> Iterator[PostgresPair]:
        primary = PostgresServer.create(scripts_dir)
        standby = PostgresServer.create(scripts_dir)
        try:
            primary.start()
            # Started once empty, so its executor counts the data directory as its own, then
            # filled with a base backup of the primary that starts as a standby of it.
            standby.start()
            standby.stop()
            shutil.rmtree(standby.datadir)
            _run_as_postgres(
                [
                    str(primary.bindir / "pg_basebackup"),
                    f"--dbname=host={LOOPBACK} port={primary.port} user={primary.user} "
                    "application_name=standby",
                    f"--pgdata={standby.datadir}",
                    "--write-recovery-conf",
                    "--wal-method=stream",
                    "--checkpoint=fast",
                ]
            )
            standby.start()
            primary.execute("ALTER SYSTEM SET synchronous_standby_names = 'standby'")
            primary.execute("SELECT pg_reload_conf()")
            pair = cls(primary, standby)
            pair._wait_until_synchronous()
            yield pair
        finally:
            try:
                close_all([standby, primary])
            finally:
                for server in (primary, standby):
                    shutil.rmtree(server.base_dir, ignore_errors=True)

    def url(self, dbname: str) -> str:
        hosts = ",".join(f"{LOOPBACK}:{s.port}" for s in (self.primary, self.standby))
        return f"postgresql://{self.primary.user}@{hosts}/{dbname}?target_session_attrs=read-write"

    def promote(self) -> None:
        """``pg_ctl promote`` the standby and wait until it accepts writes."""
        _run_as_postgres(
            [str(self.standby.bindir / "pg_ctl"), "promote", "-w", "-D", str(self.standby.datadir)]
        )

    def _wait_until_synchronous(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            with psycopg.connect(
                host=LOOPBACK, port=self.primary.port, user=self.primary.user, dbname="postgres"
            ) as conn:
                row = conn.execute(
                    "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby'"
                ).fetchone()
            if row is not None and row[0] == "sync":
                return
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"the standby on {self.standby.port} did not become synchronous in "
                    f"{STARTUP_TIMEOUT} s"
                )
            time.sleep(0.1)


class PgBouncer(Service):
    """pgbouncer on 127.0.0.1:``port`` in ``pool_mode`` (transaction by default) for every
    database of the PostgreSQL server at ``postgres_port``, trusting the user ``user``;
    at most ``pool_size`` server connections per database and user. Start-up parameters
    named in ``ignore_startup_parameters`` are accepted and dropped, not refused."""

    def __init__(
        self,
        port: int,
        postgres_port: int,
        *,
        user: str = "postgres",
        pool_mode: str = "transaction",
        pool_size: int = 20,
        ignore_startup_parameters: tuple[str, ...] = (),
    ) -> None:
        executable = debian_binary(PGBOUNCER, "pgbouncer")
        # pgbouncer refuses to run as root: its files go where the postgres user can read.
        self.directory = postgres_owned_tempdir()
        log_path = self.directory / "pgbouncer.log"
        users = self.directory / "users.txt"
        users.write_text(f'"{user}" ""\n')
        config = self.directory / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"* = host={LOOPBACK} port={postgres_port}\n"
            "[pgbouncer]\n"
            f"listen_addr = {LOOPBACK}\nlisten_port = {port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {users}\n"
            f"pool_mode = {pool_mode}\ndefault_pool_size = {pool_size}\n"
            "max_client_conn = 500\n"
            f"ignore_startup_parameters = {','.join(ignore_startup_parameters)}\n"
            f"logfile = {log_path}\npidfile = {self.directory / 'pgbouncer.pid'}\n"
        )
        if os.geteuid() == 0:
            for path in (users, config):
                shutil.chown(path, "postgres", "postgres")
        executor = TCPExecutor(
            _as_postgres([executable, str(config)]),
            host=LOOPBACK,
            port=port,
            timeout=STARTUP_TIMEOUT,
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        super().__init__("pgbouncer", executor, port, log_path)

    def url(self, dbname: str, user: str = "postgres") -> str:
        return f"postgresql://{user}@{LOOPBACK}:{self.port}/{dbname}"

    def close(self) -> None:
        try:
            super().close()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
