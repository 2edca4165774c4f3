"""Every metric the service exports, defined once.

prometheus_client runs in multiprocess mode whenever PROMETHEUS_MULTIPROC_DIR is set (always
under gunicorn), so that one scrape of /metrics covers every worker of the instance. No label
ever takes an unbounded value: never a code, a URL or a client address.
"""

from __future__ import annotations

import bisect
import os
import platform

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from shortener import __version__

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

REQUEST_DURATION = Histogram(
    "shortener_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template, method and status class.",
    ["route", "method", "status_class"],
    buckets=LATENCY_BUCKETS,
)
CACHE_LOOKUPS = Counter(
    "shortener_cache_lookups_total",
    "Redirect lookups by the tier that answered (l1, l2, filter: the filter of known codes, "
    "store) and result "
    "(hit: a link; negative: a cached unknown code; miss: the tier did not know).",
    ["tier", "result"],
)
L1_ENTRIES = Gauge(
    "shortener_l1_entries",
    "Entries in the in-process cache, summed over live workers.",
    multiprocess_mode="livesum",
)
INVALIDATIONS_RECEIVED = Counter(
    "shortener_invalidations_received_total",
    "Codes other workers invalidated, received from Redis pub/sub.",
)
L1_FLUSHES = Counter(
    "shortener_l1_flushes_total",
    "Whole-L1 flushes, by reason (e.g. a pub/sub reconnect that may have lost messages).",
    ["reason"],
)
REDIS_ERRORS = Counter(
    "shortener_redis_errors_total",
    "Redis calls that failed or timed out, by operation.",
    ["operation"],
)
REDIS_BREAKER_OPEN = Gauge(
    "shortener_redis_breaker_open",
    "1 while the Redis circuit breaker is open in any live worker.",
    multiprocess_mode="livemax",
)
STORE_BREAKER_OPEN = Gauge(
    "shortener_store_breaker_open",
    "1 while the store's circuit breaker is open in any live worker: calls that need the "
    "store are answered 503 at once while a background probe waits for it to answer.",
    multiprocess_mode="livemax",
)
STORE_BREAKER_OPENINGS = Counter(
    "shortener_store_breaker_openings_total",
    "Times the store's circuit breaker opened (after failed store calls in a row).",
)
STORE_CALLS_REJECTED = Counter(
    "shortener_store_calls_rejected_total",
    "Store calls refused at once because the store's circuit breaker was open.",
)
DEPENDENCY_UP = Gauge(
    "shortener_dependency_up",
    "1 when the dependency answered its last check (the lowest of the live workers).",
    ["dependency"],
    multiprocess_mode="livemin",
)
DB_POOL_CONNECTIONS = Gauge(
    "shortener_db_pool_connections",
    "PostgreSQL pool connections by state (in_use, idle), summed over live workers.",
    ["state"],
    multiprocess_mode="livesum",
)
DB_QUERY_DURATION = Histogram(
    "shortener_db_query_duration_seconds",
    "Time of store operations, by operation.",
    ["operation"],
    buckets=LATENCY_BUCKETS,
)
CLICKS_BUFFERED = Gauge(
    "shortener_clicks_buffered",
    "Clicks counted in memory and not yet written, summed over live workers.",
    multiprocess_mode="livesum",
)
CLICKS_FLUSHED = Counter("shortener_clicks_flushed_total", "Clicks written to the store.")
CLICKS_DROPPED = Counter(
    "shortener_clicks_dropped_total",
    "Clicks dropped because the in-memory buffer was full (too many distinct codes between "
    "flushes, most likely while the store was down).",
)
VISITS_RECORDED = Counter(
    "shortener_visits_recorded_total",
    "Redirects classified for the analytics, by kind (visit: a person; bot: a known bot or "
    "crawler, or no User-Agent).",
    ["kind"],
)
VISITS_BUFFERED = Gauge(
    "shortener_visits_buffered",
    "Visits recorded in memory and not yet written, summed over live workers.",
    multiprocess_mode="livesum",
)
VISITS_DROPPED = Counter(
    "shortener_visits_dropped_total",
    "Visits (with their clicks) dropped because a worker's bounded buffer was full, most "
    "likely while the store was down.",
)
VISITS_FLUSH_DURATION = Histogram(
    "shortener_visits_flush_duration_seconds",
    "Time of one write of a worker's visit counts and clicks, failed writes included.",
    buckets=LATENCY_BUCKETS,
)
BUILD_INFO = Gauge(
    "shortener_build_info",
    "Always 1; the labels say which build runs.",
    ["version", "python"],
    multiprocess_mode="max",
)


def registry() -> CollectorRegistry:
    """The registry a scrape reads: every worker's files in multiprocess mode."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        collected = CollectorRegistry()
        multiprocess.MultiProcessCollector(collected)  # type: ignore[no-untyped-call]
        return collected
    from prometheus_client import REGISTRY

    return REGISTRY


def worker_exited(pid: int) -> None:
    """Drops a dead worker's live gauges (its counters stay in the sums)."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def exposition() -> bytes:
    return generate_latest(registry())


def mark_build() -> None:
    BUILD_INFO.labels(version=__version__, python=platform.python_version()).set(1)


class Publisher:
    """Copies the plain counters that components keep on the request path into the metrics.

    Counting in plain integers and publishing once a second keeps the shared-memory writes of
    multiprocess mode off the hot path.
    """

    def __init__(self) -> None:
        self._published: dict[tuple[str, ...], float] = {}

    def count(self, child: Counter, key: tuple[str, ...], total: float) -> None:
        delta = total - self._published.get(key, 0)
        if delta > 0:
            child.inc(delta)
            self._published[key] = total


class LatencyBatch:
    """Latencies counted per histogram bucket in plain lists, added to a histogram in one go.

    Observing a prometheus_client histogram takes a lock and, in multiprocess mode, writes
    to a memory-mapped file for every request; this keeps both off the request path.
    """

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        self._bounds = list(histogram._upper_bounds)  # includes +Inf
        self._pending: dict[tuple[str, ...], list[float]] = {}

    def record(self, labels: tuple[str, ...], seconds: float) -> None:
        counts = self._pending.get(labels)
        if counts is None:
            # One count a bucket, then the sum of the observations.
            counts = self._pending[labels] = [0.0] * (len(self._bounds) + 1)
        counts[bisect.bisect_left(self._bounds, seconds)] += 1
        counts[-1] += seconds

    def publish(self) -> None:
        pending, self._pending = self._pending, {}
        for labels, counts in pending.items():
            child = self._histogram.labels(*labels)
            # prometheus_client offers no bulk observe; these are the values observe() adds to.
            child._sum.inc(counts[-1])
            for bucket, count in zip(child._buckets, counts[:-1], strict=True):
                if count:
                    bucket.inc(count)


# Every worker's request latencies, recorded at the edge, published by the sync.
REQUEST_LATENCIES = LatencyBatch(REQUEST_DURATION)
