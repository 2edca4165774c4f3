"""The one middleware every request passes through: request id, problems turned into
responses, browser protections, and the request's latency. One layer, because each layer
costs every redirect."""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from shortener import metrics
from shortener.logs import REQUEST_ID
from shortener.web.page import SECURITY_HEADERS
from shortener.web.problems import response_for

_STATUS_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
_MAX_REQUEST_ID = 128

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def edge_middleware(observe: bool) -> Middleware:
    """The edge of this worker; `observe` records each request's latency by route and status."""
    # Ids unique across workers and restarts without a random draw per request.
    prefix = secrets.token_hex(4)
    numbers = itertools.count(1)
    latencies = metrics.REQUEST_LATENCIES

    @web.middleware
    async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = request.headers.get("X-Request-ID")
        if not request_id or len(request_id) > _MAX_REQUEST_ID or not request_id.isprintable():
            request_id = f"{prefix}{next(numbers):08x}"
        REQUEST_ID.set(request_id)
        try:
            response = await handler(request)
        except Exception as exc:
            response = response_for(request, exc)
        status = response.status
        # A redirect has no body to protect, and it is the hot path: it goes out bare.
        if not 300 <= status < 400:
            response.headers.update(SECURITY_HEADERS)
        response.headers["X-Request-ID"] = request_id
        if observe:
            route = request.match_info.route.resource
            labels = (
                route.canonical if route is not None else "unmatched",
                request.method,
                _STATUS_CLASSES.get(status // 100, "other"),
            )
            latencies.record(labels, time.perf_counter() - started)
        return response

    return edge
