"""The once-a-second sync of the counters components keep into the exported metrics."""

from __future__ import annotations

import asyncio
import time

from shortener import metrics
from shortener.cache.redis import OPERATIONS
from shortener.cache.tiered import TieredCache
from shortener.store import Store
from shortener.visits.recorder import VisitRecorder


async def sync_metrics(
    tiered: TieredCache, visits: VisitRecorder, store: Store, interval: float = 1.0
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
        metrics.REQUEST_LATENCIES.publish()
        _publish(publisher, tiered, visits, store)
        if time.monotonic() - store_checked >= 5:
            store_checked = time.monotonic()
            metrics.DEPENDENCY_UP.labels("store").set(await _store_answers(store))
        await asyncio.sleep(interval)


def _publish(
    publisher: metrics.Publisher, tiered: TieredCache, visits: VisitRecorder, store: Store
) -> None:
    lookups = metrics.CACHE_LOOKUPS
    l1 = tiered.l1
    for result, total in (("hit", l1.hits), ("negative", l1.negatives), ("miss", l1.misses)):
        publisher.count(lookups.labels("l1", result), ("l1", result), total)
    publisher.count(lookups.labels("store", "hit"), ("store", "hit"), tiered.store_hits)
    publisher.count(
        lookups.labels("store", "negative"), ("store", "negative"), tiered.store_negatives
    )
    if tiered.known is not None:
        # Unknown codes the filter of known codes answered, sparing the store a query.
        spared = tiered.known.spared
        publisher.count(lookups.labels("filter", "negative"), ("filter", "negative"), spared)
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
    metrics.CLICKS_BUFFERED.set(visits.clicks_buffered)
    publisher.count(metrics.CLICKS_FLUSHED, ("clicks_flushed",), visits.clicks_flushed)
    publisher.count(metrics.CLICKS_DROPPED, ("clicks_dropped",), visits.clicks_dropped)
    publisher.count(metrics.VISITS_RECORDED.labels("visit"), ("visits", "visit"), visits.visits)
    publisher.count(metrics.VISITS_RECORDED.labels("bot"), ("visits", "bot"), visits.bots)
    publisher.count(metrics.VISITS_DROPPED, ("visits_dropped",), visits.dropped)
    metrics.VISITS_BUFFERED.set(visits.buffered)
    flushes, visits.flush_seconds = visits.flush_seconds, []
    for seconds in flushes:
        metrics.VISITS_FLUSH_DURATION.observe(seconds)
    breaker = store.breaker
    if breaker is not None:
        metrics.STORE_BREAKER_OPEN.set(1 if breaker.is_open else 0)
        publisher.count(metrics.STORE_BREAKER_OPENINGS, ("store_openings",), breaker.openings)
        publisher.count(metrics.STORE_CALLS_REJECTED, ("store_rejected",), breaker.rejected)
    in_use, idle = store.pool_stats()
    metrics.DB_POOL_CONNECTIONS.labels("in_use").set(in_use)
    metrics.DB_POOL_CONNECTIONS.labels("idle").set(idle)


async def _store_answers(store: Store) -> int:
    from shortener.errors import StoreUnavailable

    # asyncio.timeout, not wait_for: on Python 3.11, wait_for swallows a cancellation that
    # arrives as the ping ends, and this loop then outlives shutdown, which awaits it.
    try:
        async with asyncio.timeout(1.0):
            await store.ping()
    except (StoreUnavailable, TimeoutError):
        return 0
    return 1
