"""The service itself, run as ``python -m shortener serve``, and any other HTTP server
process (a benchmark's baseline, say) started the same way."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil
from mirakuru import HTTPExecutor

from devservices.processes import (
    LOOPBACK,
    PROJECT_ROOT,
    STARTUP_TIMEOUT,
    STOP_TIMEOUT,
    Service,
    ServiceError,
    close_all,
    free_port,
    log_tail,
)


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


class HttpProcess(Service):
    """A server ``command`` on 127.0.0.1:``port``, ready once ``GET ready_path`` answers
    ``status`` (a regex, as mirakuru takes it). ``env`` is added to this process's
    environment; stdout and stderr go to ``log_path``.
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        port: int,
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        ready_path: str = "/healthz",
        status: str = "200",
    ) -> None:
        self.env = dict(env or {})
        self.url = f"http://{LOOPBACK}:{port}"
        log_file = log_path.open("a")
        executor = HTTPExecutor(
            list(command),
            url=f"{self.url}{ready_path}",
            status=status,
            method="GET",
            request_timeout=2,
            timeout=STARTUP_TIMEOUT,
            cwd=str(PROJECT_ROOT),
            envvars={"PYTHONUNBUFFERED": "1", **self.env},
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        super().__init__(name, executor, port, log_path, log_file)


class AppInstance(HttpProcess):
    """One instance of the service, run as ``python -m shortener serve`` on 127.0.0.1.

    With ``workers`` > 1 the CLI runs gunicorn, so ``pid`` is the gunicorn master and
    ``worker_pids()`` its workers. Output goes to ``log_path``.
    """

    def __init__(self, env: Mapping[str, str], workers: int, port: int, log_path: Path) -> None:
        self.workers = workers
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
        super().__init__(f"app instance ({workers} workers)", command, port, log_path, env=env)

    def start(self) -> None:
        """Start on the same port and env; wait for ``/healthz`` and all worker processes."""
        super().start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while self.workers > 1:
            if not self.running or time.monotonic() > deadline:
                self.kill()
                raise ServiceError(
                    f"{self.name} on port {self.port} did not fork {self.workers} workers "
                    f"in {STARTUP_TIMEOUT} s\n{log_tail(self.log_path)}"
                )
            if len(self.worker_pids()) >= self.workers:
                return
            time.sleep(0.05)

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
                        f"killed it\n{log_tail(self.log_path)}"
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
        close_all(self._instances)
