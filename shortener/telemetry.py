"""The edge of every request (request id, latency) and the once-a-second metrics sync."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from shortener import metrics
from shortener.cache.redis import OPERATIONS
from shortener.cache.tiered import TieredCache
from shortener.links.clicks import ClickCounter
from shortener.logs import REQUEST_ID
from shortener.store import Store

_STATUS_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
_MAX_REQUEST_ID = 128

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


LATENCIES = metrics.LatencyBatch(metrics.REQUEST_DURATION)


def edge_middleware(observe: bool) -> Middleware:
    """Request id in and out and, if `observe`, each request's latency by route and status."""

    @web.middleware
    async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = request.headers.get("X-Request-ID", "")
        if not request_id or len(request_id) > _MAX_REQUEST_ID or not request_id.isprintable():
            request_id = secrets.token_hex(8)
        REQUEST_ID.set(request_id)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            # Only redirects and other non-errors escape the problems middleware.
            exc.headers["X-Request-ID"] = request_id
            if observe:
                _observe(request, exc.status, started)
            raise
        response.headers["X-Request-ID"] = request_id
        if observe:
            _observe(request, response.status, started)
        return response

    return edge


def _observe(request: web.Request, status: int, started: float) -> None:
    route = request.match_info.route.resource
    template = route.canonical if route is not None else "unmatched"
    status_class = _STATUS_CLASSES.get(status // 100, "other")
    LATENCIES.record((template, request.method, status_class), time.perf_counter() - started)


async def sync_metrics(
    tiered: TieredCache, clicks: ClickCounter, store: Store, interval: float = 1.0
) -> None:
    """Publishes the components' counters and gauges every `interval` until cancelled."""
    publisher = metrics.Publisher()
    metrics.mark_build()
    # Every series exists from the start, at zero, so dashboards show 0 rather than no data.
    if tiered.l2 is not None:
        for operation in OPERATIONS:
            metrics.REDIS_ERRORS.labels(operation)
        metrics.L1_FLUSHES.labels("resubscribed")
    store_checked = 0.0
    while True:
        LATENCIES.publish()
        _publish(publisher, tiered, clicks, store)
        if time.monotonic() - store_checked >= 5:
            store_checked = time.monotonic()
            metrics.DEPENDENCY_UP.labels("store").set(await _store_answers(store))
        await asyncio.sleep(interval)


def _publish(
    publisher: metrics.Publisher, tiered: TieredCache, clicks: ClickCounter, store: Store
) -> None:
    lookups = metrics.CACHE_LOOKUPS
    l1 = tiered.l1
    for result, total in (("hit", l1.hits), ("negative", l1.negatives), ("miss", l1.misses)):
        publisher.count(lookups.labels("l1", result), ("l1", result), total)
    publisher.count(lookups.labels("store", "hit"), ("store", "hit"), tiered.store_hits)
    publisher.count(
        lookups.labels("store", "negative"), ("store", "negative"), tiered.store_negatives
    )
    metrics.L1_ENTRIES.set(len(l1))
    l2 = tiered.l2
    if l2 is not None:
        for result, total in (("hit", l2.hits), ("negative", l2.negatives), ("miss", l2.misses)):
            publisher.count(lookups.labels("l2", result), ("l2", result), total)
        publisher.count(
            metrics.INVALIDATIONS_RECEIVED, ("invalidations",), l2.invalidations_received
        )
        publisher.count(metrics.L1_FLUSHES.labels("resubscribed"), ("flushes",), l2.flushes)
        for operation, total in l2.errors.items():
            publisher.count(
                metrics.REDIS_ERRORS.labels(operation), ("redis_errors", operation), total
            )
        metrics.REDIS_BREAKER_OPEN.set(1 if l2.breaker.is_open else 0)
        metrics.DEPENDENCY_UP.labels("redis").set(1 if l2.up else 0)
    metrics.CLICKS_BUFFERED.set(clicks.buffered)
    publisher.count(metrics.CLICKS_FLUSHED, ("clicks_flushed",), clicks.flushed)
    publisher.count(metrics.CLICKS_DROPPED, ("clicks_dropped",), clicks.dropped)
    in_use, idle = store.pool_stats()
    metrics.DB_POOL_CONNECTIONS.labels("in_use").set(in_use)
    metrics.DB_POOL_CONNECTIONS.labels("idle").set(idle)


async def _store_answers(store: Store) -> int:
    from shortener.errors import StoreUnavailable

    try:
        await asyncio.wait_for(store.ping(), 1.0)
    except (StoreUnavailable, TimeoutError):
        return 0
    return 1
