"""The edge of this worker: request id, problems turned into responses, browser protections,
and each request's latency by route.

There is no aiohttp middleware: each route's handler is wrapped once, when the routes are
made, so a request pays for one wrapper and not for aiohttp's middleware chain. The redirect
route does the same work inline (shortener.web.redirect), and a final catch-all route answers
every path no other route takes with a 404 or 405 problem.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from multidict import istr

from shortener import metrics
from shortener.logs import REQUEST_ID
from shortener.web.page import SECURITY_HEADERS
from shortener.web.problems import response_for

STATUS_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
# The route label of requests no route of ours takes.
UNMATCHED = "unmatched"
_MAX_REQUEST_ID = 128
# A header name looked up on every request: as an istr, multidict does not fold its case.
X_REQUEST_ID = istr("X-Request-ID")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Edge:
    """`observe` records each request's latency by route, method and status class."""

    def __init__(self, observe: bool) -> None:
        self.observe = observe
        self.latencies = metrics.REQUEST_LATENCIES
        # Ids unique across workers and restarts without a random draw per request: this
        # worker's random prefix, then a count in decimal (the cheapest number to format).
        self._prefix = f"{secrets.token_hex(4)}-"
        self._numbers = itertools.count(1)

    def request_id(self, request: web.Request) -> str:
        """The caller's X-Request-ID when it is a sane one, else a new id."""
        request_id = request.headers.get(X_REQUEST_ID)
        if not request_id or len(request_id) > _MAX_REQUEST_ID or not request_id.isprintable():
            request_id = f"{self._prefix}{next(self._numbers)}"
        return request_id

    def finish(
        self,
        request: web.Request,
        response: web.StreamResponse,
        request_id: str,
        route: str,
        started: float,
    ) -> web.StreamResponse:
        """Security headers unless it is a redirect, the request id, the latency (`started`
        is the request's time.monotonic())."""
        status = response.status
        # A redirect has no body to protect, and it is the hot path: it goes out bare.
        if not 300 <= status < 400:
            response.headers.update(SECURITY_HEADERS)
        response.headers[X_REQUEST_ID] = request_id
        if self.observe:
            labels = (route, request.method, STATUS_CLASSES.get(status // 100, "other"))
            self.latencies.record(labels, time.monotonic() - started)
        return response

    async def answer(
        self,
        request: web.Request,
        pending: Awaitable[web.StreamResponse],
        route: str,
        request_id: str,
        started: float,
    ) -> web.StreamResponse:
        """The handler's response, or the problem it raised, finished at the edge."""
        REQUEST_ID.set(request_id)  # for the log lines written while answering
        try:
            response = await pending
        except Exception as exc:
            response = response_for(request, exc)
        return self.finish(request, response, request_id, route, started)

    def wrap(self, route: str, handler: Handler) -> Handler:
        async def at_edge(request: web.Request) -> web.StreamResponse:
            started = time.monotonic()
            request_id = self.request_id(request)
            return await self.answer(request, handler(request), route, request_id, started)

        return at_edge

    def routes(self, table: list[web.RouteDef]) -> list[web.RouteDef]:
        """The routes with each handler wrapped, then the catch-all."""
        routes = [
            web.RouteDef(
                route.method, route.path, self.wrap(route.path, route.handler), route.kwargs
            )
            for route in table
        ]
        routes.append(web.route("*", "/{path:.*}", self.wrap(UNMATCHED, _unmatched)))
        return routes


async def _unmatched(request: web.Request) -> web.StreamResponse:
    """A path no route takes: 405 naming the methods it has, when it has some, else 404."""
    allowed: set[str] = set()
    this = request.match_info.route.resource
    for resource in request.app.router.resources():
        if resource is not this:
            _, methods = await resource.resolve(request)
            allowed |= methods
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()
