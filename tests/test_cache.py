"""L1 and the tiered read path: bounds, negative entries, the invalidation race, single-flight."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shortener.cache.breaker import Breaker
from shortener.cache.l1 import L1Cache
from shortener.cache.tiered import TieredCache
from shortener.config import Settings
from shortener.errors import StoreUnavailable
from shortener.links.model import MISSING, Link, NewLink, Target
from shortener.store.breaker import StoreBreaker
from shortener.store.sqlite import SqliteStore

TARGET = Target("https://example.com", 302, None, None, False, version=1)


def test_l1_is_bounded_lru() -> None:
    l1 = L1Cache(size=3, ttl=60, negative_ttl=5)
    for code in "abcd":
        l1.put(code, TARGET, l1.epoch)
    assert len(l1) == 3
    assert l1.get("a") is None and l1.get("d") == TARGET


def test_l1_keeps_what_was_read_lately() -> None:
    l1 = L1Cache(size=3, ttl=60, negative_ttl=5)
    for code in "abc":
        l1.put(code, TARGET, l1.epoch)
    assert l1.get("a") == TARGET
    l1.put("d", TARGET, l1.epoch)
    assert l1.get("b") is None and l1.get("a") == TARGET and l1.get("d") == TARGET


def test_negative_entries_expire_sooner() -> None:
    now = [0.0]
    l1 = L1Cache(size=10, ttl=0.4, negative_ttl=0.1, timer=lambda: now[0])
    l1.put("known", TARGET, l1.epoch)
    l1.put("unknown", MISSING, l1.epoch)
    assert l1.get("unknown") is MISSING
    now[0] = 0.1
    assert l1.get("unknown") is None and l1.get("known") == TARGET
    now[0] = 0.4
    assert l1.get("known") is None


def test_entries_loaded_together_expire_spread_over_the_last_fifth_of_the_ttl() -> None:
    now = [0.0]
    l1 = L1Cache(
        size=2000, ttl=30, negative_ttl=5, timer=lambda: now[0], rng=random.Random(7).random
    )
    codes = [f"code{n}" for n in range(1000)]
    for code in codes:
        l1.put(code, TARGET, l1.epoch)

    def alive_at(moment: float) -> int:
        now[0] = moment
        return sum(l1.get(code) is not None for code in codes)

    # None before 80% of the TTL, about half by 90%, all of them by the TTL itself: the
    # reloads of codes stored in one instant spread over six seconds instead of one.
    assert alive_at(23.99) == 1000
    assert 400 < alive_at(27.0) < 600
    assert 0 < alive_at(29.9) < 50
    assert alive_at(30.0) == 0


def test_a_lookup_older_than_an_invalidation_is_not_stored() -> None:
    l1 = L1Cache(size=10, ttl=60, negative_ttl=5)
    started_at = l1.epoch
    l1.invalidate("code")
    l1.put("code", TARGET, started_at)
    assert l1.get("code") is None
    l1.put("code", TARGET, l1.epoch)
    assert l1.get("code") == TARGET
    l1.flush()
    assert len(l1) == 0


def test_size_zero_disables_l1() -> None:
    l1 = L1Cache(size=0, ttl=60, negative_ttl=5)
    l1.put("code", TARGET, l1.epoch)
    assert l1.get("code") is None


class CountingStore(SqliteStore):
    """The real SQLite store, counting lookups and holding each one a little while."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.lookups = 0
        self.looking = asyncio.Event()

    async def get_link(self, code: str) -> Link | None:
        self.lookups += 1
        self.looking.set()
        await asyncio.sleep(0.05)
        return await super().get_link(code)


async def test_concurrent_misses_make_one_store_query(tmp_path: Path) -> None:
    store = CountingStore(Settings(database_url=f"sqlite:///{tmp_path / 'db'}"))
    await store.open()
    await store.migrate()
    try:
        await store.insert_link(
            "hot",
            NewLink("https://example.com/hot", None, None, None, 302),
            None,
            datetime.now(UTC),
        )
        tiered = TieredCache(L1Cache(100, 60, 5), None, store)
        results = await asyncio.gather(*(tiered.load("hot") for _ in range(50)))
        missing = await asyncio.gather(*(tiered.load("nope") for _ in range(50)))
        assert store.lookups == 2
        assert {result.url for result in results if isinstance(result, Target)} == {
            "https://example.com/hot"
        }
        assert set(missing) == {MISSING}
        assert tiered.l1.get("hot") is not None and tiered.l1.get("nope") is MISSING
    finally:
        await store.close()


async def test_invalidation_during_a_lookup_keeps_the_old_answer_out(tmp_path: Path) -> None:
    store = CountingStore(Settings(database_url=f"sqlite:///{tmp_path / 'db'}"))
    await store.open()
    await store.migrate()
    try:
        tiered = TieredCache(L1Cache(100, 60, 5), None, store)
        lookup = asyncio.ensure_future(tiered.load("code"))
        await store.looking.wait()  # the lookup has read its epoch and asks the store
        tiered.l1.invalidate("code")
        assert await lookup is MISSING
        assert tiered.l1.get("code") is None
    finally:
        await store.close()


def test_breaker_opens_after_three_failures_and_lets_one_trial_through_per_cooldown() -> None:
    now = [100.0]
    breaker = Breaker(failures_to_open=3, cooldown=1.0, clock=lambda: now[0])
    for _ in range(2):
        breaker.failed()
        assert not breaker.is_open and breaker.allows()
    breaker.failed()
    assert breaker.is_open
    assert not breaker.allows()  # open: nothing goes out during the cooldown
    now[0] += 0.99
    assert not breaker.allows()
    now[0] += 0.01
    assert breaker.allows()  # half-open: one trial...
    assert not breaker.allows()  # ...and the others wait another cooldown
    breaker.failed()  # the trial failed: still open
    assert breaker.is_open and not breaker.allows()
    now[0] += 1.0
    assert breaker.allows()
    breaker.succeeded()  # the trial answered: closed
    assert not breaker.is_open and breaker.allows() and breaker.allows()


async def test_store_breaker_refuses_at_once_and_a_background_probe_closes_it() -> None:
    answers, probed_thrice = asyncio.Event(), asyncio.Event()
    probes = 0

    async def probe() -> None:
        nonlocal probes
        probes += 1
        if probes == 3:
            probed_thrice.set()
        if not answers.is_set():
            raise StoreUnavailable("still down")

    breaker = StoreBreaker(probe, failures_to_open=3, interval=0.01)
    try:
        for _ in range(3):
            breaker.check()
            breaker.failed(TimeoutError())
        assert breaker.is_open and breaker.openings == 1
        for _ in range(5):
            with pytest.raises(StoreUnavailable):
                breaker.check()
        assert breaker.rejected == 5
        # Probing in the background, finding the store still down.
        await asyncio.wait_for(probed_thrice.wait(), 5)
        assert breaker.is_open
        answers.set()
        deadline = time.monotonic() + 5
        while breaker.is_open:
            assert time.monotonic() < deadline, "the probe never closed the breaker"
            await asyncio.sleep(0.01)
        breaker.check()
        # Failures after it closed count from zero again.
        breaker.failed(TimeoutError())
        assert not breaker.is_open
    finally:
        await breaker.close()
