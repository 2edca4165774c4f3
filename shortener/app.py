"""create_app(settings): wires the store, caches, routes and background tasks together."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable

from aiohttp import web

from shortener.auth import KeyRing
from shortener.cache.known import KnownCodes
from shortener.cache.l1 import L1Cache
from shortener.cache.redis import redis_tier
from shortener.cache.tiered import TieredCache
from shortener.config import Settings
from shortener.errors import StoreUnavailable
from shortener.links.policy import DestinationPolicy
from shortener.links.service import LinkService
from shortener.store import Store, make_store
from shortener.telemetry import sync_metrics
from shortener.visits.classify import Classifier
from shortener.visits.recorder import VisitRecorder
from shortener.web import MAX_BODY_BYTES
from shortener.web.api import LinksApi
from shortener.web.blocklist import BlocklistApi
from shortener.web.callers import Callers
from shortener.web.edge import Edge
from shortener.web.front import SHORT_CODES
from shortener.web.ops import Operations
from shortener.web.page import Page
from shortener.web.qr import QrCodes
from shortener.web.ratelimit import RateLimiter
from shortener.web.redirect import Redirects
from shortener.web.stats import VisitStatsApi

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
L1 = web.AppKey("l1", L1Cache)
TIERED = web.AppKey("tiered", TieredCache)
VISITS = web.AppKey("visits", VisitRecorder)
LIMITER = web.AppKey("limiter", RateLimiter)
# Seconds each step of shutdown (a close, a last flush, stopping a task) may take before it
# is abandoned; the steps together stay within gunicorn's graceful_timeout (20 s).
CLOSE_TIMEOUT = 3.0


def create_app(settings: Settings) -> web.Application:
    store = make_store(settings)
    l1 = L1Cache(settings.l1_size, settings.l1_ttl, settings.l1_negative_ttl)
    l2 = redis_tier(settings, l1)
    known = None
    if l2 is not None:
        # Unknown codes answered without the store; the invalidation channel keeps it true.
        known = l2.known = KnownCodes(store.codes)
    tiered = TieredCache(l1, l2, store, known)
    visits = VisitRecorder(
        store,
        Classifier(settings.geoip_db, settings.trusted_proxies),
        settings.click_flush_interval,
        settings.visits_buffer_max_rows,
        settings.click_buffer_max_codes,
        settings.visits_retention_days,
        analytics=settings.analytics,
    )
    policy = DestinationPolicy(store, settings.blocklist, settings.private_targets)
    service = LinkService(store, tiered, policy)

    # No middleware: the edge wraps each route's handler (shortener.web.edge).
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[SETTINGS] = settings
    app[STORE] = store
    app[L1] = l1
    app[TIERED] = tiered
    app[VISITS] = visits

    limiter = RateLimiter(settings.redis_url, settings.redis_timeout)
    app[LIMITER] = limiter
    callers = Callers(KeyRing(store))
    api = LinksApi(settings, service, callers, limiter)
    blocklist = BlocklistApi(store, callers, settings.body_timeout)
    ops = Operations(store, l1, l2, probe_timeout=settings.db_connect_timeout)
    edge = Edge(settings.metrics)
    redirects = Redirects(l1, tiered, store, visits, limiter, settings, edge)
    page = Page()
    qr = QrCodes(settings, service, callers)
    stats = VisitStatsApi(store, service, callers)
    # The hot path first: the dispatcher tries routes in order. It does its edge work inline,
    # and our servers send it short codes before the router (shortener.web.front).
    app.router.add_get("/{code}", redirects.follow)
    app[SHORT_CODES] = redirects.follow
    app.add_routes(
        edge.routes(
            [
                # HEAD where the OpenAPI document lists it: short links and the health checks.
                web.get("/", page.index, allow_head=False),
                web.get("/static/{name}", page.static, allow_head=False),
                web.get("/healthz", ops.healthz),
                web.get("/readyz", ops.readyz),
                web.get("/metrics", ops.metrics, allow_head=False),
                web.get("/api/v1/openapi.json", ops.openapi, allow_head=False),
                web.post("/api/v1/links", api.create),
                web.post("/api/v1/links/batch", api.create_batch),
                web.get("/api/v1/links", api.list, allow_head=False),
                web.get("/api/v1/links/{code}", api.get, allow_head=False),
                web.patch("/api/v1/links/{code}", api.update),
                web.delete("/api/v1/links/{code}", api.delete),
                web.get("/api/v1/links/{code}/qr", qr.get, allow_head=False),
                web.get("/api/v1/links/{code}/stats", stats.get, allow_head=False),
                web.get("/api/v1/blocklist", blocklist.list, allow_head=False),
                web.post("/api/v1/blocklist", blocklist.add),
                web.delete("/api/v1/blocklist/{domain}", blocklist.remove),
            ]
        )
    )
    app.cleanup_ctx.append(_store_lifecycle)
    app.cleanup_ctx.append(_limiter_lifecycle)
    app.cleanup_ctx.append(_visit_flusher)
    app.cleanup_ctx.append(_metrics_sync)
    app.cleanup_ctx.append(lambda _app: _readiness_probes(ops))
    if l2 is not None:
        app.cleanup_ctx.append(_invalidation_listener)
    app.on_startup.append(_freeze_heap)
    return app


async def _freeze_heap(_app: web.Application) -> None:
    """Everything made at start-up lives as long as the worker: the cyclic garbage collector
    stops walking it, so its full collections cost what the requests leave, not the heap."""
    gc.collect()
    gc.freeze()


async def _store_lifecycle(app: web.Application) -> AsyncIterator[None]:
    store = app[STORE]
    await open_store(store)
    await store.migrate()
    yield
    await bounded("closing the store", store.close())


async def _limiter_lifecycle(app: web.Application) -> AsyncIterator[None]:
    yield
    await bounded("closing the rate limiter's Redis client", app[LIMITER].close())


async def _visit_flusher(app: web.Application) -> AsyncIterator[None]:
    visits = app[VISITS]
    task = asyncio.create_task(visits.run())
    yield
    await bounded("stopping the visit flusher", _cancelled(task))
    try:
        await bounded("writing the buffered visits and clicks", visits.drain())
    except StoreUnavailable as exc:
        log.error("visits and clicks lost at shutdown, store unavailable: %s", exc)
    visits.close()


async def _metrics_sync(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(sync_metrics(app[TIERED], app[VISITS], app[STORE]))
    yield
    await bounded("stopping the metrics sync", _cancelled(task))


async def _readiness_probes(ops: Operations) -> AsyncIterator[None]:
    await ops.refresh()
    task = asyncio.create_task(ops.keep_refreshing())
    yield
    await bounded("stopping the readiness probes", _cancelled(task))


async def _invalidation_listener(app: web.Application) -> AsyncIterator[None]:
    l2 = app[TIERED].l2
    assert l2 is not None
    task = asyncio.create_task(l2.listen())
    yield
    await bounded("stopping the invalidation listener", _cancelled(task))
    if l2.known is not None:
        await bounded("closing the known-codes filter", l2.known.close())
    await bounded("closing the Redis clients", l2.close())


async def bounded(step: str, work: Awaitable[None]) -> None:
    """Runs one step of shutdown for at most CLOSE_TIMEOUT seconds, then abandons it with an
    error logged, so that shutdown always ends; its own errors propagate. Not wait_for: that
    waits for the cancelled work to end, which work stuck on a frozen server may never do."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=CLOSE_TIMEOUT)
    if not done:
        task.cancel()
        log.error("shutdown: %s took over %g s; abandoned", step, CLOSE_TIMEOUT)
        return
    task.result()


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def open_store(store: Store, max_delay: float = 10.0) -> None:
    """Opens the store, waiting with backoff while it cannot be reached."""
    delay = 0.5
    while True:
        try:
            await store.open()
            return
        except StoreUnavailable as exc:
            log.warning("store unreachable, retrying in %.1f s: %s", delay, exc)
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay)


async def serve_from_env() -> web.Application:
    """The application factory gunicorn's aiohttp worker calls in every worker process."""
    return create_app(Settings.from_env())
