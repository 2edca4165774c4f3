"""Real backing services for tests: PostgreSQL, Redis, nginx and the app itself.

Load with ``pytest_plugins = ["tests.services"]``. Every fixture runs a Debian binary on a
free 127.0.0.1 port and stops what it started, even when the test fails. The session
servers can be stopped, killed and started again on the same port by chaos tests; the
function-scoped ``postgres_url`` and ``redis_url`` bring them back up for the next test.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import IO, Any, Self

import port_for
import psutil
import psycopg
import pytest
import redis
from mirakuru import ExecutorError, HTTPExecutor, SimpleExecutor, TCPExecutor
from psycopg import sql
from pytest_postgresql.executors import PostgreSQLExecutor
from pytest_redis.executor import RedisExecutor

LOOPBACK = "127.0.0.1"
STARTUP_TIMEOUT = 30
STOP_TIMEOUT = 30
PROJECT_ROOT = Path(__file__).resolve().parents[1]

POSTGRES_ROOT = Path("/usr/lib/postgresql")
REDIS_SERVER = "/usr/bin/redis-server"
NGINX = "/usr/sbin/nginx"
RUNUSER = "/usr/sbin/runuser"

# No fsync: these clusters need not survive a power cut, only a killed postmaster. So
# synchronous_commit stays on: with it off, kill() loses commits the client was told of.
POSTGRES_SETTINGS = {
    "listen_addresses": LOOPBACK,
    "max_connections": "200",
    "fsync": "off",
    "full_page_writes": "off",
}


class ServiceError(RuntimeError):
    """A service process failed to start or stop; the message ends with its log tail."""


_handed_out_ports: set[int] = set()


def free_port() -> int:
    """Return a free TCP port on 127.0.0.1, never the same one twice in a session.

    port-for picks outside the kernel's ephemeral range, so while a chaos test has a
    server down, no outgoing connection can take its port before it starts again.
    """
    port = port_for.select_random(exclude_ports=_handed_out_ports)
    _handed_out_ports.add(port)
    return port


def keys_create(
    env: Mapping[str, str], name: str = "test", *, admin: bool = False, cwd: Path | None = None
) -> str:
    """Runs ``python -m shortener keys create`` with ``env`` and returns the key it printed
    alone on its last line."""
    result = subprocess.run(
        [sys.executable, "-m", "shortener", "keys", "create", "--name", name]
        + (["--admin"] if admin else []),
        env={**os.environ, **env},
        cwd=cwd or PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip().splitlines()[-1]


def _debian_binary(path: str, apt_package: str) -> str:
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"{path} is missing; install it with `apt-get install {apt_package}`", pytrace=False
        )
    return path


def _postgres_bindir() -> Path:
    servers = [p.parent for p in POSTGRES_ROOT.glob("*/bin/postgres") if p.parts[-3].isdigit()]
    if not servers:
        pytest.fail(
            f"no PostgreSQL server under {POSTGRES_ROOT}/*/bin; "
            "install it with `apt-get install postgresql`",
            pytrace=False,
        )
    return max(servers, key=lambda bindir: int(bindir.parent.name))


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    tail = "\n".join(text.splitlines()[-lines:])
    return f"--- last {lines} lines of {path} ---\n{tail}"


def _gone(process: psutil.Process) -> bool:
    """Dead or a zombie: PID 1 in a container may never reap what we orphaned."""
    try:
        return bool(process.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def _wait_until_gone(processes: list[psutil.Process], timeout: float = STOP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not all(_gone(p) for p in processes):
        if time.monotonic() > deadline:
            raise ServiceError(f"processes {[p.pid for p in processes]} outlived SIGKILL")
        time.sleep(0.01)


class _Service:
    """A server process under a mirakuru executor, restartable on the same port."""

    host = LOOPBACK

    def __init__(
        self,
        name: str,
        executor: SimpleExecutor,
        port: int,
        log_path: Path,
        log_file: IO[Any] | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.log_path = log_path
        self._executor = executor
        self._log_file = log_file

    @property
    def running(self) -> bool:
        return self._executor.running()

    def start(self) -> None:
        """Start again on the same port; a no-op while running."""
        if self.running:
            return
        try:
            self._executor.start()
        except ExecutorError as exc:
            raise ServiceError(
                f"{self.name} on port {self.port} did not start: {exc}\n{_log_tail(self.log_path)}"
            ) from exc

    def stop(self) -> None:
        """SIGTERM the process group and wait for it to exit; no-op if not running."""
        process = self._executor.process
        if process is None:
            return
        if process.poll() is not None:
            self._forget(process, clean_exit_codes=(0,))
            return
        try:
            self._executor.stop()
        except ExecutorError as exc:
            raise ServiceError(
                f"{self.name} on port {self.port} stopped badly: {exc}\n{_log_tail(self.log_path)}"
            ) from exc

    def _forget(self, process: subprocess.Popen[Any], clean_exit_codes: tuple[int, ...]) -> None:
        """Sweep up after a process that has exited, and say if it exited badly."""
        self.kill()
        if process.returncode not in clean_exit_codes:
            raise ServiceError(
                f"{self.name} on port {self.port} exited with code {process.returncode}\n"
                f"{_log_tail(self.log_path)}"
            )

    def kill(self) -> None:
        """SIGKILL the whole process group and wait until all of it is gone."""
        group = self._process_group()
        for member in group:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.kill()
        self._executor.kill()
        _wait_until_gone(group)

    def _process_group(self) -> list[psutil.Process]:
        """The processes in the group mirakuru started (it calls setsid: pgid = leader's pid).

        Workers of a dead leader linger in its group, holding the port. Linux keeps that pid
        from reuse while the group has members, so a live process with it means the group is
        empty and the pid now belongs to someone else (pid_max is 32768 here).
        """
        leader = self._executor.process
        if leader is None or (leader.poll() is not None and psutil.pid_exists(leader.pid)):
            return []
        group = []
        for candidate in psutil.process_iter():
            with contextlib.suppress(ProcessLookupError):
                if os.getpgid(candidate.pid) == leader.pid:
                    group.append(candidate)
        return group

    def close(self) -> None:
        """Stop (or, failing that, kill) the process and release its log file."""
        try:
            self.stop()
        except BaseException:
            self.kill()
            raise
        finally:
            if self._log_file is not None:
                self._log_file.close()


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
    """

    host = LOOPBACK
    user = "postgres"

    def __init__(self, bindir: Path, base_dir: Path, scripts_dir: Path, port: int) -> None:
        self.port = port
        self.base_dir = base_dir
        self.datadir = base_dir / "data"
        self.log_path = base_dir / "postgresql.log"
        options = " ".join(f"-c {name}={value}" for name, value in POSTGRES_SETTINGS.items())
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

    def url(self, dbname: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    @property
    def running(self) -> bool:
        return self._postmaster() is not None

    def start(self) -> None:
        """Start on the same port and data directory (initdb the first time); no-op if up."""
        if self.running:
            return
        self._remove_lock_files()
        try:
            self._executor.start()
        except (ExecutorError, subprocess.CalledProcessError) as exc:
            raise ServiceError(
                f"PostgreSQL on port {self.port} did not start: {exc}\n{_log_tail(self.log_path)}"
            ) from exc

    def stop(self) -> None:
        """Shut down in fast mode: roll back open transactions, close every connection."""
        if self.running:
            try:
                self._executor.stop()
            except (ExecutorError, subprocess.CalledProcessError) as exc:
                raise ServiceError(
                    f"PostgreSQL on port {self.port} did not stop: {exc}\n"
                    f"{_log_tail(self.log_path)}"
                ) from exc
        self._remove_lock_files()

    def kill(self) -> None:
        """Crash the server: SIGKILL the postmaster, then every backend it leaves behind."""
        postmaster = self._postmaster()
        if postmaster is not None:
            doomed = [postmaster, *postmaster.children(recursive=True)]
            postmaster.kill()
            self._executor.kill()
            _wait_until_gone(doomed)
        self._remove_lock_files()

    def create_database(self, name: str) -> None:
        self._execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))

    def drop_database(self, name: str) -> None:
        """Drop the database, terminating any connections still open to it."""
        self._execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )

    def close(self) -> None:
        try:
            self.stop()
        except BaseException:
            self.kill()
            raise

    def _execute(self, statement: sql.Composed) -> None:
        with psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname="postgres", autocommit=True
        ) as connection:
            connection.execute(statement)

    def _postmaster(self) -> psutil.Process | None:
        try:
            pid = int((self.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
            postmaster = psutil.Process(pid)
        except (FileNotFoundError, ValueError, psutil.NoSuchProcess):
            return None
        return None if _gone(postmaster) else postmaster

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


def _pg_ctl_command(bindir: Path, scripts_dir: Path) -> Path:
    """pg_ctl itself, or as root a wrapper that runs it as the postgres OS user."""
    pg_ctl = bindir / "pg_ctl"
    if os.geteuid() != 0:
        return pg_ctl
    runuser = _debian_binary(RUNUSER, "util-linux")
    wrapper = scripts_dir / "pg_ctl"
    # cd /: postgres may not be allowed into the caller's working directory.
    wrapper.write_text(
        "#!/bin/sh\n"
        f'cd / && exec {shlex.quote(runuser)} -u postgres -- {shlex.quote(str(pg_ctl))} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def _postgres_owned_tempdir() -> Path:
    """A temp dir the server may write to; pytest's own tmp dirs are root-only (0700)."""
    base_dir = Path(tempfile.mkdtemp(prefix="tests-postgres-"))
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            base_dir.rmdir()
            pytest.fail(
                "there is no postgres OS user to run PostgreSQL as; "
                "`apt-get install postgresql` creates it",
                pytrace=False,
            )
        os.chown(base_dir, owner.pw_uid, owner.pw_gid)
    return base_dir


class RedisServer(_Service):
    """redis-server on 127.0.0.1:``port`` without persistence: a restart starts empty."""

    def __init__(self, executable: str, directory: Path, port: int) -> None:
        executor = RedisExecutor(
            executable,
            databases=16,
            redis_timeout=0,
            loglevel="notice",
            host=LOOPBACK,
            port=port,
            startup_timeout=STARTUP_TIMEOUT,
            # pytest-redis passes save as the one argument `--save <value>`; redis reads
            # `--save ""` as an empty save list, which turns snapshots off.
            save='""',
            appendonly="no",
            datadir=directory,
        )
        log_path = directory / f"redis-server.{port}.log"
        super().__init__("redis-server", executor, port, log_path)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"


class AppInstance(_Service):
    """One instance of the service, run as ``python -m shortener serve`` on 127.0.0.1.

    With ``workers`` > 1 the CLI runs gunicorn, so ``pid`` is the gunicorn master and
    ``worker_pids()`` its workers. Output goes to ``log_path``.
    """

    def __init__(self, env: Mapping[str, str], workers: int, port: int, log_path: Path) -> None:
        self.env = dict(env)
        self.workers = workers
        self.url = f"http://{LOOPBACK}:{port}"
        command = [
            sys.executable,
            "-m",
            "shortener",
            "serve",
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--workers",
            str(workers),
        ]
        log_file = log_path.open("a")
        executor = HTTPExecutor(
            command,
            url=f"{self.url}/healthz",
            status=200,
            method="GET",
            request_timeout=2,
            timeout=STARTUP_TIMEOUT,
            cwd=str(PROJECT_ROOT),
            envvars={"PYTHONUNBUFFERED": "1", **self.env},
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        super().__init__(f"app instance ({workers} workers)", executor, port, log_path, log_file)

    def start(self) -> None:
        """Start on the same port and env; wait for ``/healthz`` and all worker processes."""
        super().start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while self.workers > 1:
            if not self.running or time.monotonic() > deadline:
                self.kill()
                raise ServiceError(
                    f"{self.name} on port {self.port} did not fork {self.workers} workers "
                    f"in {STARTUP_TIMEOUT} s\n{_log_tail(self.log_path)}"
                )
            if len(self.worker_pids()) >= self.workers:
                return
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        process = self._executor.process
        if process is None:
            raise ServiceError(f"the app instance on port {self.port} is not running")
        return process.pid

    def worker_pids(self) -> list[int]:
        """Pids of the processes ``pid`` started: the gunicorn workers, if any."""
        try:
            return [child.pid for child in psutil.Process(self.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        """SIGTERM the master alone, as a supervisor would, and wait for a graceful exit."""
        process = self._executor.process
        if process is None or process.poll() is not None:
            super().stop()
            return
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while True:
            try:
                process.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    self.kill()
                    raise ServiceError(
                        f"{self.name} on port {self.port} ignored SIGTERM for {STOP_TIMEOUT} s; "
                        f"killed it\n{_log_tail(self.log_path)}"
                    ) from None
            # gunicorn sends each worker one SIGTERM, and a worker still booting loses it
            # (it has the master's handler until it installs its own), so repeat it.
            for pid in self.worker_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        self._forget(process, clean_exit_codes=(0, -signal.SIGTERM))


class AppInstanceFactory:
    """``app_instance_factory(env, workers=1)`` starts an :class:`AppInstance` and waits
    until ``GET /healthz`` answers 200; ``env`` is added to this process's environment.
    """

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._instances: list[AppInstance] = []

    def __call__(self, env: Mapping[str, str], workers: int = 1) -> AppInstance:
        port = free_port()
        log_path = self._log_dir / f"app-{len(self._instances)}-{port}.log"
        instance = AppInstance(env, workers, port, log_path)
        self._instances.append(instance)
        instance.start()
        return instance

    def close(self) -> None:
        _close_all(self._instances)


class Nginx(_Service):
    """nginx in the foreground, confined to its own prefix directory.

    With ``confine=False`` the config is used as it is, with only ``daemon off`` added: it
    must itself put its pid, temp paths and ``access_log`` under ``prefix``, as the
    rendering of nginx/nginx.conf by nginx/render.py does.
    """

    def __init__(
        self, executable: str, prefix: Path, config_text: str, port: int, *, confine: bool = True
    ) -> None:
        prefix.mkdir(parents=True)
        self.prefix = prefix
        self.url = f"http://{LOOPBACK}:{port}"
        self.config_path = prefix / "nginx.conf"
        self.access_log_path = prefix / "access.log"
        # nginx's stub_status page, where the config has one (production() sets it).
        self.status_url: str | None = None
        log_path = prefix / "error.log"
        command = [executable, "-p", str(prefix), "-e", str(log_path)]
        if confine:
            (prefix / "tmp").mkdir()
            self.config_path.write_text(_confine_nginx_config(config_text, prefix))
        else:
            self.config_path.write_text(config_text)
            command += ["-g", "daemon off;"]
        log_file = log_path.open("a")
        executor = TCPExecutor(
            [*command, "-c", str(self.config_path)],
            host=LOOPBACK,
            port=port,
            timeout=STARTUP_TIMEOUT,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        super().__init__("nginx", executor, port, log_path, log_file)


_HTTP_BLOCK = re.compile(r"^\s*http\s*\{", re.MULTILINE)


def _confine_nginx_config(config_text: str, prefix: Path) -> str:
    """Point every path nginx would write (Debian builds in /var/lib, /var/log, /run) into
    ``prefix``: main-context lines go first, http-level ones into the ``http {`` block."""
    main = [
        "daemon off;",
        f"pid {prefix / 'nginx.pid'};",
        f"lock_file {prefix / 'nginx.lock'};",
        f"error_log {prefix / 'error.log'} notice;",
    ]
    if os.geteuid() == 0:
        # Workers would run as nobody, who cannot enter pytest's root-only (0700) tmp dirs.
        main.append("user root;")
    http = [f"access_log {prefix / 'access.log'};"]
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        http.append(f"{kind}_temp_path {prefix / 'tmp' / kind};")
    body = _HTTP_BLOCK.sub(
        lambda match: match.group(0) + "\n    " + "\n    ".join(http), config_text, count=1
    )
    return "\n".join(main) + "\n\n" + body


class NginxFactory:
    """``nginx_factory(config_text)`` starts nginx and waits until it listens on ``port``.

    ``config_text`` is a whole nginx.conf (``events {}``, ``http { ... }``) that listens on
    ``127.0.0.1:{nginx_factory.port}``, a free port renewed after every start; pass
    ``port=`` to use another. The factory adds ``daemon``, ``pid``, ``error_log``,
    ``lock_file``, ``user`` (as root) and, inside ``http {``, ``access_log`` and the
    ``*_temp_path`` directives, so the config must not set those itself.
    """

    def __init__(self, executable: str, directory: Path) -> None:
        self._executable = executable
        self._directory = directory
        self._instances: list[Nginx] = []
        self.port = free_port()

    def __call__(self, config_text: str, *, port: int | None = None) -> Nginx:
        port = self.port if port is None else port
        if str(port) not in config_text:
            raise ValueError(f"the nginx config must listen on 127.0.0.1:{port}")
        return self._start(config_text, port, confine=True)

    def production(self, upstreams: Sequence[str], *, port: int | None = None) -> Nginx:
        """Starts nginx on nginx/nginx.conf itself, rendered by nginx/render.py: listening on
        ``port`` (default ``self.port``), its status server on a free port (``status_url``),
        proxying to ``upstreams`` ("127.0.0.1:PORT" each), its JSON access log at
        ``access_log_path``."""
        port = self.port if port is None else port
        status_port = free_port()
        render = _nginx_render_module()
        config_text: str = render.render(
            render.SOURCE.read_text(encoding="utf-8"),
            prefix=self._prefix(port),
            listen_port=port,
            status_port=status_port,
            upstreams=upstreams,
        )
        nginx = self._start(config_text, port, confine=False)
        nginx.status_url = f"http://{LOOPBACK}:{status_port}/nginx_status"
        return nginx

    def _prefix(self, port: int) -> Path:
        return self._directory / f"nginx-{len(self._instances)}-{port}"

    def _start(self, config_text: str, port: int, *, confine: bool) -> Nginx:
        if port == self.port:
            self.port = free_port()
        nginx = Nginx(self._executable, self._prefix(port), config_text, port, confine=confine)
        self._instances.append(nginx)
        nginx.start()
        return nginx

    def close(self) -> None:
        _close_all(self._instances)


def _nginx_render_module() -> ModuleType:
    """nginx/render.py, loaded by path: nginx/ is not a package."""
    spec = importlib.util.spec_from_file_location(
        "nginx_render", PROJECT_ROOT / "nginx" / "render.py"
    )
    if spec is None or spec.loader is None:
        raise ServiceError("cannot load nginx/render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _close_all(services: Sequence[_Service]) -> None:
    """Close every service even if some fail, then report the first failure."""
    errors: list[BaseException] = []
    for service in services:
        try:
            service.close()
        except BaseException as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session; see :class:`PostgresServer`."""
    bindir = _postgres_bindir()
    scripts_dir = tmp_path_factory.mktemp("postgres")
    server = PostgresServer(bindir, _postgres_owned_tempdir(), scripts_dir, free_port())
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
    postgres_server.start()
    name = f"test_{uuid.uuid4().hex[:16]}"
    postgres_server.create_database(name)
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.start()
        postgres_server.drop_database(name)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server for the whole session; see :class:`RedisServer`."""
    executable = _debian_binary(REDIS_SERVER, "redis-server")
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
    factory = NginxFactory(_debian_binary(NGINX, "nginx"), tmp_path)
    try:
        yield factory
    finally:
        factory.close()
