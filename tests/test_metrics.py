"""The batched latency histogram must expose exactly what observing each request would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from shortener.metrics import LATENCY_BUCKETS, LatencyBatch


def histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram(
        "latency_seconds", "test", ["route"], buckets=LATENCY_BUCKETS, registry=registry
    )


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if not sample.name.endswith("_created")
    }


def test_a_published_batch_equals_one_observe_per_request() -> None:
    observed_registry, batched_registry = CollectorRegistry(), CollectorRegistry()
    observed, batch = histogram(observed_registry), LatencyBatch(histogram(batched_registry))
    values = [0.0001, 0.0005, 0.0007, 0.001, 0.02, 0.5, 2.5, 3.0, 99.0] * 3
    for index, seconds in enumerate(values):
        route = "/{code}" if index % 2 else "/api/v1/links"
        observed.labels(route).observe(seconds)
        batch.record((route,), seconds)
    batch.publish()
    batch.publish()  # a second publish with nothing new adds nothing
    assert samples(batched_registry) == samples(observed_registry)
    assert samples(observed_registry)[("latency_seconds_count", (("route", "/{code}"),))] == 13
