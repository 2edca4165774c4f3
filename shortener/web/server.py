"""aiohttp's HTTP server with bounds on how a request's head may arrive.

`shortener serve` may face clients without nginx in front, so the app protects itself as
nginx would (client_header_timeout, large_client_header_buffers): a request's line and
headers must arrive within HEADER_TIMEOUT seconds of their first byte (of the connection,
for its first request) and within MAX_HEAD_BYTES, or the connection is answered 408 or 431
and closed. Idle keep-alive connections are not affected: they wait for keepalive_timeout.
Without these, slow or huge heads held memory and connections for as long as a client liked.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
from collections.abc import Callable
from typing import Any

import uvloop
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_runner import GracefulExit

from shortener.web.front import front_door

HEADER_TIMEOUT = 10.0
# A URL shortener's requests are small: a short path or a 2 KiB URL in a body, a key, the
# usual browser headers. 32 KiB of head is nginx's own default ceiling (4 x 8k buffers).
MAX_HEAD_BYTES = 32 * 1024
HEAD_LIMITS: dict[str, Any] = {
    "max_line_size": 8190,
    "max_field_size": 8190,
    "max_headers": 64,
}

_PROBLEM = (
    "HTTP/1.1 {status} {reason}\r\nContent-Type: application/problem+json\r\n"
    "Content-Length: {length}\r\nConnection: close\r\n\r\n{body}"
)


def _problem(status: int, reason: str, detail: str) -> bytes:
    body = f'{{"type":"about:blank","title":"{reason}","status":{status},"detail":"{detail}"}}'
    text = _PROBLEM.format(status=status, reason=reason, length=len(body), body=body)
    return text.encode("ascii")


_TOO_SLOW = _problem(408, "Request Timeout", "The request head took too long to arrive.")
_TOO_LARGE = _problem(
    431, "Request Header Fields Too Large", "The request head is larger than 32768 bytes."
)


class _GuardedHandler(RequestHandler):
    """One connection: aiohttp's, with a deadline and a size bound on each request head."""

    __slots__ = ("_head_bytes", "_head_deadline")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._head_deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        super().connection_made(transport)
        self._start_head()

    def data_received(self, data: bytes) -> None:
        # start() awaits the next request: these bytes begin a new head.
        begins = self._head_deadline is None and self._waiter is not None and data
        requests = self._request_count
        super().data_received(data)
        if self._request_count != requests:  # the head is complete
            self._end_head()
            return
        if begins:
            # Only a head that does not arrive whole is timed: most come in one piece, and
            # a timer each would cost every request.
            self._start_head()
        elif self._head_deadline is None:
            return
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            self._refuse(_TOO_LARGE)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._end_head()
        super().connection_lost(exc)

    def _start_head(self) -> None:
        self._head_bytes = 0
        self._head_deadline = self._loop.call_later(HEADER_TIMEOUT, self._refuse, _TOO_SLOW)

    def _end_head(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _refuse(self, answer: bytes) -> None:
        self._end_head()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(answer)
        self.force_close()


class _GuardedServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _GuardedHandler(self, loop=self._loop, **self._kwargs)


class AppRunner(web.AppRunner):
    """aiohttp's AppRunner whose connections are _GuardedHandlers with HEAD_LIMITS, and whose
    requests meet the app's front door (shortener.web.front) before its router."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(app, **{**HEAD_LIMITS, **kwargs})

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        return _GuardedServer(
            front_door(self.app, made.request_handler),
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **made._kwargs,
        )


def raise_open_files_limit() -> None:
    """Lets this process (and the gunicorn it may become) hold as many connections as the
    system allows it: a soft limit of 1,024 let 1,100 idle connections lock everyone out."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(
    app: web.Application,
    *,
    host: str,
    port: int,
    backlog: int,
    keepalive_timeout: float,
    on_ready: Callable[[], None],
) -> None:
    """Serves `app` in this process on uvloop until SIGINT or SIGTERM, as web.run_app would
    but through AppRunner above."""

    async def serve() -> None:
        runner = AppRunner(
            app, keepalive_timeout=keepalive_timeout, access_log=None, handle_signals=True
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, backlog=backlog).start()
            on_ready()
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(GracefulExit, KeyboardInterrupt):
        uvloop.run(serve())
