"""What every service starter shares: free ports, the error type, log tails, and
:class:`Service`, a server process under a mirakuru executor that can be stopped, killed and
started again on the same port."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

import port_for
import psutil
from mirakuru import ExecutorError, SimpleExecutor

LOOPBACK = "127.0.0.1"
STARTUP_TIMEOUT = 30
STOP_TIMEOUT = 30
PROJECT_ROOT = Path(__file__).resolve().parents[1]
RUNUSER = "/usr/sbin/runuser"


class ServiceError(RuntimeError):
    """A service process failed to start or stop; the message ends with its log tail."""


class MissingBinary(ServiceError):
    """A server's Debian binary is not installed; the message names the package."""


_handed_out_ports: set[int] = set()


def free_port() -> int:
    """Return a free TCP port on 127.0.0.1, never the same one twice in a process.

    port-for picks outside the kernel's ephemeral range, so while a chaos test has a
    server down, no outgoing connection can take its port before it starts again.
    """
    port = port_for.select_random(exclude_ports=_handed_out_ports)
    _handed_out_ports.add(port)
    return port


def debian_binary(path: str, apt_package: str) -> str:
    """``path`` if it is an executable, else :class:`MissingBinary` naming ``apt_package``."""
    if not os.access(path, os.X_OK):
        raise MissingBinary(f"{path} is missing; install it with `apt-get install {apt_package}`")
    return path


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    tail = "\n".join(text.splitlines()[-lines:])
    return f"--- last {lines} lines of {path} ---\n{tail}"


def gone(process: psutil.Process) -> bool:
    """Dead or a zombie: PID 1 in a container may never reap what we orphaned."""
    try:
        return bool(process.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def wait_until_gone(processes: list[psutil.Process], timeout: float = STOP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not all(gone(p) for p in processes):
        if time.monotonic() > deadline:
            raise ServiceError(f"processes {[p.pid for p in processes]} outlived SIGKILL")
        time.sleep(0.01)


def pin(pid: int, cpus: Collection[int]) -> None:
    """Confine process ``pid`` and its descendants, every thread of them, to ``cpus``; what
    they fork or spawn later inherits it (PostgreSQL backends, gunicorn workers)."""
    process = psutil.Process(pid)
    for member in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
            for thread in member.threads():
                os.sched_setaffinity(thread.id, cpus)


@contextlib.contextmanager
def hung(pid: int) -> Iterator[None]:
    """SIGSTOPs process ``pid`` and its descendants for the block, then SIGCONTs them: what a
    partition looks like from outside. The kernel still accepts connections and takes the
    bytes sent; nothing answers, so every call waits for its timeout."""
    root = psutil.Process(pid)
    stopped = [root, *root.children(recursive=True)]
    try:
        for process in stopped:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.suspend()
        yield
    finally:
        for process in stopped:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.resume()


class Service:
    """A server process under a mirakuru executor, restartable on the same port.

    A new kind of server subclasses it with the executor that knows when it is ready
    (``TCPExecutor``, ``HTTPExecutor``, ...) and, if it needs one, its own ``stop``.
    """

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

    @property
    def pid(self) -> int:
        """The process the executor started (for a launcher that execs, the server itself)."""
        process = self._executor.process
        if process is None:
            raise ServiceError(f"{self.name} on port {self.port} is not running")
        return process.pid

    def start(self) -> None:
        """Start again on the same port; a no-op while running."""
        if self.running:
            return
        try:
            self._executor.start()
        except ExecutorError as exc:
            raise ServiceError(
                f"{self.name} on port {self.port} did not start: {exc}\n{log_tail(self.log_path)}"
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
                f"{self.name} on port {self.port} stopped badly: {exc}\n{log_tail(self.log_path)}"
            ) from exc

    def _forget(self, process: subprocess.Popen[Any], clean_exit_codes: tuple[int, ...]) -> None:
        """Sweep up after a process that has exited, and say if it exited badly."""
        self.kill()
        if process.returncode not in clean_exit_codes:
            raise ServiceError(
                f"{self.name} on port {self.port} exited with code {process.returncode}\n"
                f"{log_tail(self.log_path)}"
            )

    def kill(self) -> None:
        """SIGKILL the whole process group and wait until all of it is gone."""
        group = self._process_group()
        for member in group:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.kill()
        self._executor.kill()
        wait_until_gone(group)

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


class Server(Protocol):
    """What every starter offers, a :class:`Service` or not (PostgresServer runs pg_ctl)."""

    port: int
    log_path: Path

    @property
    def running(self) -> bool: ...

    @property
    def pid(self) -> int: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def kill(self) -> None: ...

    def close(self) -> None: ...


def close_all(services: Sequence[Server]) -> None:
    """Close every service even if some fail, then report the first failure."""
    errors: list[BaseException] = []
    for service in services:
        try:
            service.close()
        except BaseException as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
