"""Visits buffered per worker, classified and counted in the background, written in batches.

The redirect only counts the raw facts of a visit, in a bounded dict. Every flush interval
those are classified into counts per (code, UTC hour, dimension, value), and those counts
and the links' clicks are written together, a link's in the same statement, so
`visits + bots == clicks` holds by construction. While the store is down the counts wait
here, bounded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Mapping
from typing import TypeVar

from aiohttp import hdrs, web

from shortener.errors import StoreUnavailable
from shortener.store import Store, VisitKey
from shortener.visits.classify import Classifier, referrer_host

log = logging.getLogger(__name__)
_K = TypeVar("_K")

# (code, UTC hours since the epoch, User-Agent, Referer, peer and X-Forwarded-For (only when
# countries are looked up), click already counted by the store): equal visits are equal
# tuples, counted as one entry, so each is classified once however often it came.
RawVisit = tuple[str, int, str | None, str | None, str | None, str | None, bool]

# Distinct raw visits a worker holds between two classifications (a second apart): far
# above what one worker answers in a second, and a few dozen MB at most.
RAW_BUFFER_MAX = 50_000
# Counts in one write statement at most: a backlog goes in several, each well within the
# store's statement timeout.
ROWS_PER_WRITE = 10_000
# Distinct visits classified before the loop lets requests in again: about 7 µs each, so
# a few ms.
_CHUNK = 500
_PURGE_EVERY = 3600.0


class VisitRecorder:
    def __init__(
        self,
        store: Store,
        classifier: Classifier,
        interval: float,
        max_rows: int,
        max_codes: int,
        retention_days: int,
        analytics: bool = True,
    ) -> None:
        self._store = store
        self._classifier = classifier
        self._interval = interval
        self._max_rows = max_rows
        self._max_codes = max_codes
        self._retention_hours = retention_days * 24
        self._locates = classifier.geolocates
        self._forwarded = bool(classifier.geolocates and classifier.trusted)
        # How many times each distinct visit came: counting in place keeps no tuple per
        # request alive until the next classification (the garbage collector's work).
        self._raw: dict[RawVisit, int] = {}
        self._counts: dict[VisitKey, int] = {}
        self._clicks: dict[str, int] = {}
        self._pending_visits = 0
        self._pending_clicks = 0
        self._purged_at = -_PURGE_EVERY
        # The current UTC hour, moved on by a timer at each turn of the hour (see run()), so
        # the redirect reads an attribute instead of the clock.
        self._hour = _current_hour()
        self._hour_timer: asyncio.TimerHandle | None = None
        # Plain counters, published as metrics once a second.
        self.visits = 0
        self.bots = 0
        self.dropped = 0
        self.clicks_dropped = 0
        self.flushed = 0
        self.clicks_flushed = 0
        self.flush_seconds: list[float] = []
        if not analytics:
            self.record = self._click_only  # type: ignore[method-assign]

    def record(self, code: str, request: web.Request, clicked: bool) -> None:
        """The redirect's one call: count the raw facts for the background, nothing more."""
        headers = request.headers
        visit = (
            code,
            self._hour,
            headers.get(hdrs.USER_AGENT),
            headers.get(hdrs.REFERER),
            request.remote if self._locates else None,
            headers.get(hdrs.X_FORWARDED_FOR) if self._forwarded else None,
            clicked,
        )
        raw = self._raw
        times = raw.get(visit)
        if times is not None:
            raw[visit] = times + 1
        elif len(raw) < RAW_BUFFER_MAX:
            raw[visit] = 1
        else:
            self._drop(clicked)

    def _click_only(self, code: str, request: web.Request, clicked: bool) -> None:
        """record() with the analytics off: the click and nothing else."""
        if clicked:
            return
        clicks = self._clicks
        if code in clicks:
            clicks[code] += 1
        elif len(clicks) < self._max_codes:
            clicks[code] = 1
        else:
            self.clicks_dropped += 1
            return
        self._pending_clicks += 1

    @property
    def buffered(self) -> int:
        """Visits recorded and not yet written."""
        return sum(self._raw.values()) + self._pending_visits

    @property
    def clicks_buffered(self) -> int:
        unclicked = sum(times for visit, times in self._raw.items() if not visit[6])
        return unclicked + self._pending_clicks

    async def aggregate(self) -> None:
        """Classifies the raw visits into counts, a chunk at a time between requests."""
        raw, self._raw = list(self._raw.items()), {}
        for start in range(0, len(raw), _CHUNK):
            if start:
                await asyncio.sleep(0)
            for visit, times in raw[start : start + _CHUNK]:
                self._count(visit, times)

    def _count(self, visit: RawVisit, times: int) -> None:
        code, hour, user_agent, referer, peer, forwarded_for, clicked = visit
        agent = self._classifier.agent(user_agent)
        if agent.bot:
            keys: tuple[VisitKey, ...] = ((code, hour, "total", "bots"),)
        else:
            country = self._classifier.country(peer, forwarded_for)
            keys = (
                (code, hour, "total", "visits"),
                (code, hour, "referrer", referrer_host(referer)),
                (code, hour, "country", country),
                (code, hour, "browser", agent.browser),
                (code, hour, "os", agent.os),
                (code, hour, "device", agent.device),
            )
        counts = self._counts
        clicks = self._clicks
        if self._full(keys, code, clicked):
            # A visit is kept whole or dropped whole, with its click: the totals stay equal.
            self._drop(clicked, times)
            return
        for key in keys:
            counts[key] = counts.get(key, 0) + times
        if not clicked:
            clicks[code] = clicks.get(code, 0) + times
            self._pending_clicks += times
        self._pending_visits += times
        if agent.bot:
            self.bots += times
        else:
            self.visits += times

    def _full(self, keys: tuple[VisitKey, ...], code: str, clicked: bool) -> bool:
        """Whether these counts would take the buffer over its bounds."""
        counts, clicks = self._counts, self._clicks
        # Counting the new rows is only worth it near the bound.
        room = self._max_rows - len(counts)
        if len(keys) > room and sum(1 for key in keys if key not in counts) > room:
            return True
        return not clicked and code not in clicks and len(clicks) >= self._max_codes

    def _drop(self, clicked: bool, times: int = 1) -> None:
        self.dropped += times
        if not clicked:
            self.clicks_dropped += times

    async def flush(self) -> None:
        """Writes every count, normally in one statement; on failure keeps them for later.

        A backlog (after the store was down) goes in several statements of at most
        ROWS_PER_WRITE counts, each with whole links: a link's clicks and counts always
        travel together, so a visit is never half written.
        """
        while self._counts or self._clicks:
            await self._write(*self._take(ROWS_PER_WRITE))

    def _take(self, rows: int) -> tuple[dict[VisitKey, int], dict[str, int], int, int]:
        """Removes up to about `rows` counts, link by link, with their clicks."""
        if len(self._counts) <= rows:
            everything = (self._counts, self._clicks, self._pending_visits, self._pending_clicks)
            self._counts, self._clicks = {}, {}
            self._pending_visits = self._pending_clicks = 0
            return everything
        codes: set[str] = set()
        taken = 0
        for code, count in Counter(key[0] for key in self._counts).items():
            if codes and taken + count > rows:
                break
            codes.add(code)
            taken += count
        counts = {key: self._counts.pop(key) for key in list(self._counts) if key[0] in codes}
        clicks = {code: self._clicks.pop(code) for code in codes if code in self._clicks}
        visits = sum(count for key, count in counts.items() if key[2] == "total")
        clicked = sum(clicks.values())
        self._pending_visits -= visits
        self._pending_clicks -= clicked
        return counts, clicks, visits, clicked

    async def _write(
        self, counts: dict[VisitKey, int], clicks: dict[str, int], visits: int, clicked: int
    ) -> None:
        started = time.perf_counter()
        try:
            await self._store.add_visits(clicks, counts)
        except StoreUnavailable:
            # Merged back whole; the bound applies to new visits, so memory stays within
            # about twice the limit.
            _merge(self._counts, counts)
            _merge(self._clicks, clicks)
            self._pending_visits += visits
            self._pending_clicks += clicked
            raise
        finally:
            self.flush_seconds.append(time.perf_counter() - started)
        self.flushed += visits
        self.clicks_flushed += clicked

    async def purge(self) -> None:
        """Deletes counts older than the retention, once an hour."""
        now = time.monotonic()
        if now - self._purged_at < _PURGE_EVERY:
            return
        self._purged_at = now
        before = _current_hour() - self._retention_hours
        deleted = await self._store.purge_visits(before)
        if deleted:
            log.info("visit counts older than the retention deleted: %d rows", deleted)

    async def drain(self) -> None:
        """Classifies and writes everything held: at shutdown."""
        await self.aggregate()
        await self.flush()

    def close(self) -> None:
        self._classifier.close()

    async def run(self) -> None:
        self._next_hour()
        try:
            while True:
                await asyncio.sleep(self._interval)
                try:
                    await self.drain()
                    await self.purge()
                except StoreUnavailable as exc:
                    log.warning("visits kept in memory, store unavailable: %s", exc)
        finally:
            if self._hour_timer is not None:
                self._hour_timer.cancel()

    def _next_hour(self) -> None:
        """Takes the hour from the clock and sets a timer for the next turn of the hour."""
        now = time.time()
        self._hour = int(now // 3600)
        loop = asyncio.get_running_loop()
        self._hour_timer = loop.call_later(3600 - now % 3600, self._next_hour)


def _current_hour() -> int:
    return int(time.time() // 3600)


def _merge(into: dict[_K, int], counts: Mapping[_K, int]) -> None:
    for key, count in counts.items():
        into[key] = into.get(key, 0) + count
