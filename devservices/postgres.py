"""PostgreSQL: a cluster of its own from Debian's binaries, run through pg_ctl."""

from __future__ import annotations

import os
import pwd
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Self

import psutil
import psycopg
from mirakuru import ExecutorError
from psycopg import sql
from pytest_postgresql.executors import PostgreSQLExecutor

from devservices.processes import (
    LOOPBACK,
    RUNUSER,
    STARTUP_TIMEOUT,
    MissingBinary,
    ServiceError,
    debian_binary,
    free_port,
    gone,
    log_tail,
    wait_until_gone,
)

POSTGRES_ROOT = Path("/usr/lib/postgresql")

# No fsync: these clusters need not survive a power cut, only a killed postmaster. So
# synchronous_commit stays on: with it off, kill() loses commits the client was told of.
POSTGRES_SETTINGS = {
    "listen_addresses": LOOPBACK,
    "max_connections": "200",
    "fsync": "off",
    "full_page_writes": "off",
}


class _PgCtlExecutor(PostgreSQLExecutor):
    """pytest-postgresql's pg_ctl executor, minus its handle on the exited pg_ctl.

    ``pg_ctl start`` detaches the postmaster and exits; mirakuru would otherwise keep that
    pid and later killpg() it, by which time a busy machine (pid_max 32768) may reuse it.
    """

    def start(self) -> Self:
        super().start()
        if self.process is not None:
            self.process.wait(timeout=STARTUP_TIMEOUT)
        self._clear_process()
        return self


class PostgresServer:
    """A PostgreSQL cluster of its own, from Debian's binaries, on 127.0.0.1:``port``.

    ``user`` is a superuser reachable without a password (trust auth). As root, every
    server binary runs as the ``postgres`` OS user through runuser, since PostgreSQL
    refuses to run as root, and the data directory lives in a temp dir that user owns.
    ``settings`` are added to (or override) :data:`POSTGRES_SETTINGS`.
    """

    host = LOOPBACK
    user = "postgres"

    def __init__(
        self,
        bindir: Path,
        base_dir: Path,
        scripts_dir: Path,
        port: int,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.bindir = bindir
        self.port = port
        self.base_dir = base_dir
        self.datadir = base_dir / "data"
        self.log_path = base_dir / "postgresql.log"
        settings = {**POSTGRES_SETTINGS, **(settings or {})}
        options = " ".join(f"-c {name}={value}" for name, value in settings.items())
        self._executor = _PgCtlExecutor(
            executable=str(_pg_ctl_command(bindir, scripts_dir)),
            host=LOOPBACK,
            port=port,
            datadir=str(self.datadir),
            unixsocketdir=str(base_dir),
            logfile=str(self.log_path),
            startparams=f"-w -t {STARTUP_TIMEOUT}",
            dbname="postgres",
            user=self.user,
            timeout=STARTUP_TIMEOUT,
            postgres_options=options,
        )

    @classmethod
    def create(cls, scripts_dir: Path, port: int | None = None) -> PostgresServer:
        """A server on the newest installed PostgreSQL, its data in a fresh temp dir that the
        server may write to (remove ``base_dir`` when done), on ``port`` or a free one."""
        return cls(postgres_bindir(), postgres_owned_tempdir(), scripts_dir, port or free_port())

    def url(self, dbname: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    @property
    def running(self) -> bool:
        return self._postmaster() is not None

    @property
    def pid(self) -> int:
        """The postmaster's pid."""
        postmaster = self._postmaster()
        if postmaster is None:
            raise ServiceError(f"PostgreSQL on port {self.port} is not running")
        return postmaster.pid

    def start(self) -> None:
        """Start on the same port and data directory (initdb the first time); no-op if up."""
        if self.running:
            return
        self._remove_lock_files()
        try:
            self._executor.start()
        except (ExecutorError, subprocess.CalledProcessError) as exc:
            raise ServiceError(
                f"PostgreSQL on port {self.port} did not start: {exc}\n{log_tail(self.log_path)}"
            ) from exc

    def stop(self) -> None:
        """Shut down in fast mode: roll back open transactions, close every connection."""
        if self.running:
            try:
                self._executor.stop()
            except (ExecutorError, subprocess.CalledProcessError) as exc:
                raise ServiceError(
                    f"PostgreSQL on port {self.port} did not stop: {exc}\n{log_tail(self.log_path)}"
                ) from exc
        self._remove_lock_files()

    def kill(self) -> None:
        """Crash the server: SIGKILL the postmaster, then every backend it leaves behind."""
        postmaster = self._postmaster()
        if postmaster is not None:
            doomed = [postmaster, *postmaster.children(recursive=True)]
            postmaster.kill()
            self._executor.kill()
            wait_until_gone(doomed)
        self._remove_lock_files()

    def create_database(self, name: str) -> None:
        self.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))

    def drop_database(self, name: str) -> None:
        """Drop the database, terminating any connections still open to it."""
        self.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )

    def close(self) -> None:
        try:
            self.stop()
        except BaseException:
            self.kill()
            raise

    def execute(self, statement: sql.Composable | str) -> None:
        """Run one statement as the superuser in the ``postgres`` database, autocommit."""
        with psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname="postgres", autocommit=True
        ) as connection:
            connection.execute(statement)  # type: ignore[arg-type]

    def _postmaster(self) -> psutil.Process | None:
        try:
            pid = int((self.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
            postmaster = psutil.Process(pid)
        except (FileNotFoundError, ValueError, psutil.NoSuchProcess):
            return None
        return None if gone(postmaster) else postmaster

    def _remove_lock_files(self) -> None:
        """Drop the lock files a crash leaves: a zombie or recycled pid in them blocks start."""
        if self._postmaster() is not None:
            return
        for stale in (
            self.datadir / "postmaster.pid",
            self.base_dir / f".s.PGSQL.{self.port}.lock",
            self.base_dir / f".s.PGSQL.{self.port}",
        ):
            stale.unlink(missing_ok=True)


def postgres_bindir() -> Path:
    """The bin directory of the newest PostgreSQL under /usr/lib/postgresql."""
    servers = [p.parent for p in POSTGRES_ROOT.glob("*/bin/postgres") if p.parts[-3].isdigit()]
    if not servers:
        raise MissingBinary(
            f"no PostgreSQL server under {POSTGRES_ROOT}/*/bin; "
            "install it with `apt-get install postgresql`"
        )
    return max(servers, key=lambda bindir: int(bindir.parent.name))


def _pg_ctl_command(bindir: Path, scripts_dir: Path) -> Path:
    """pg_ctl itself, or as root a wrapper that runs it as the postgres OS user."""
    pg_ctl = bindir / "pg_ctl"
    if os.geteuid() != 0:
        return pg_ctl
    runuser = debian_binary(RUNUSER, "util-linux")
    wrapper = scripts_dir / "pg_ctl"
    # cd /: postgres may not be allowed into the caller's working directory.
    wrapper.write_text(
        "#!/bin/sh\n"
        f'cd / && exec {shlex.quote(runuser)} -u postgres -- {shlex.quote(str(pg_ctl))} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def postgres_owned_tempdir() -> Path:
    """A temp dir the server may write to; pytest's own tmp dirs are root-only (0700)."""
    base_dir = Path(tempfile.mkdtemp(prefix="tests-postgres-"))
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            base_dir.rmdir()
            raise MissingBinary(
                "there is no postgres OS user to run PostgreSQL as; "
                "`apt-get install postgresql` creates it"
            ) from None
        os.chown(base_dir, owner.pw_uid, owner.pw_gid)
    return base_dir
