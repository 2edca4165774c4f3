"""Redis: a redis-server of its own without persistence."""

from __future__ import annotations

from pathlib import Path

from pytest_redis.executor import RedisExecutor

from devservices.processes import LOOPBACK, STARTUP_TIMEOUT, Service

REDIS_SERVER = "/usr/bin/redis-server"


class RedisServer(Service):
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
