"""The gunicorn side of `serve --workers N`: a worker that keeps gunicorn's listen backlog,
and a logger that writes gunicorn's own lines as the app's JSON."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.worker import GunicornUVLoopWebWorker
from gunicorn.glogging import Logger

from shortener.logs import configure_logging
from shortener.web import server


class Worker(GunicornUVLoopWebWorker):
    """aiohttp's uvloop worker, but its sites listen with gunicorn's ``backlog``.

    aiohttp's own worker starts every SockSite with aiohttp's default backlog (128), which
    re-listens gunicorn's socket and so shrinks its accept queue: a burst after a stall is
    refused. Otherwise it runs as aiohttp's: the app from the factory, gunicorn's keep-alive
    and graceful timeout, no access log, aiohttp's server logger, a heartbeat until told to stop.
    """

    async def _run(self) -> None:
        # gunicorn's app here is shortener.app:serve_from_env, an async factory, not WSGI.
        factory = cast(Callable[[], Awaitable[web.Application]], self.wsgi)
        app = await factory()
        runner = server.AppRunner(
            app,
            keepalive_timeout=self.cfg.keepalive,
            access_log=None,
            shutdown_timeout=self.cfg.graceful_timeout / 100 * 95,
        )
        await runner.setup()
        for sock in self.sockets:
            await web.SockSite(runner, sock, backlog=self.cfg.backlog).start()
        self.booted = True
        pid = os.getpid()
        while self.alive:
            self.notify()
            if self.ppid != os.getppid():
                self.alive = False
                self.log.info("Parent changed, shutting down: %s (pid %d)", self, pid)
            else:
                await self._wait_next_notify()  # woken early by a stop signal
        await runner.cleanup()


class JsonLogger(Logger):
    """gunicorn's logger with its handlers dropped: its error and access lines go to the root
    logger, which writes the app's JSON, in the master and, inherited, in every worker."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        configure_logging(cfg.loglevel)
        for log in (self.error_log, self.access_log):
            log.handlers.clear()
            log.propagate = True
