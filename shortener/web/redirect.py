"""The hot path: a short code in, a redirect out, answered from memory whenever possible.

A plain link in L1 is answered inline, with the edge's work (request id, latency) done right
here; everything else (L2, the store, limited and expired links, unknown codes, errors) takes
the general path through the edge (shortener.web.edge).
"""

from __future__ import annotations

import time

from aiohttp import hdrs, web

from shortener.cache.l1 import L1Cache
from shortener.cache.tiered import TieredCache
from shortener.config import Settings
from shortener.errors import gone, not_found, rate_limited
from shortener.links.codes import CODE_SHAPE
from shortener.links.model import MISSING, Lookup
from shortener.store import Store
from shortener.visits.recorder import VisitRecorder
from shortener.web.edge import STATUS_CLASSES, X_REQUEST_ID, Edge
from shortener.web.problems import render
from shortener.web.ratelimit import PenaltyBox, RateLimiter, client_key

ROUTE = "/{code}"
# Browsers may keep a plain redirect this long; limited links must reach us on every visit.
CACHE_CONTROL = "private, max-age=90"
NO_STORE = "no-store"


class Redirects:
    def __init__(
        self,
        l1: L1Cache,
        tiered: TieredCache,
        store: Store,
        visits: VisitRecorder,
        limiter: RateLimiter,
        settings: Settings,
        edge: Edge,
    ) -> None:
        self._l1 = l1
        self._tiered = tiered
        self._store = store
        self._visits = visits
        self._limiter = limiter
        self._edge = edge
        self._penalty = PenaltyBox()
        self._trusted = settings.trusted_proxies
        self._not_found_per_minute = settings.not_found_per_minute
        # The latency labels of a plain redirect, made once: (route, method, status class).
        self._redirected = {m: (ROUTE, m, STATUS_CLASSES[3]) for m in ("GET", "HEAD")}

    async def follow(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        edge = self._edge
        request_id = edge.request_id(request)
        code = request.path[1:]  # the route's one segment, as the front door sees it too
        # The fast path: a plain, unexpired link in L1, while nobody sits in the penalty box.
        target = None if self._penalty.release > started else self._l1.get(code)
        if (
            target is not None
            and target is not MISSING
            and target.max_visits is None
            and target.expires_at is None
            and not target.gone
        ):
            method = request.method
            if method == "GET":
                self._visits.record(code, request, clicked=False)
            response = web.Response(
                status=target.status,
                headers={
                    hdrs.LOCATION: target.url,
                    hdrs.CACHE_CONTROL: CACHE_CONTROL,
                    X_REQUEST_ID: request_id,
                },
            )
            if edge.observe:
                edge.latencies.record(self._redirected[method], time.monotonic() - started)
            return response
        pending = self._answer(request, code, target)
        return await edge.answer(request, pending, ROUTE, request_id, started)

    async def _answer(self, request: web.Request, code: str, target: Lookup | None) -> web.Response:
        if self._penalty:  # somebody is refused for walking unknown codes: is it this client?
            wait = self._penalty.wait(self._scanner_key(request))
            if wait is not None:
                return render(request, rate_limited(wait))
            target = self._l1.get(code)
        if target is None:
            if CODE_SHAPE.fullmatch(code) is None:
                return await self._not_found(request)
            target = await self._tiered.load(code)  # L2, then the store

        if target is MISSING:
            return await self._not_found(request)
        if target.gone or (target.expires_at is not None and target.expires_at <= time.time()):
            return render(request, gone())

        counts = request.method == "GET"
        if target.max_visits is not None:
            # Exact across every worker and instance: the store hands out the visits.
            if counts:
                allowed = await self._store.take_visit(code)
            else:
                allowed = await self._store.visits_left(code)
            if not allowed:
                return render(request, gone())
            cache_control = NO_STORE
        else:
            cache_control = NO_STORE if target.expires_at is not None else CACHE_CONTROL
        if counts:  # the visit, and its click unless the store counted it just now
            self._visits.record(code, request, clicked=target.max_visits is not None)

        return web.Response(
            status=target.status,
            headers={"Location": target.url, "Cache-Control": cache_control},
        )

    async def _not_found(self, request: web.Request) -> web.Response:
        key = self._scanner_key(request)
        wait = await self._limiter.wait("not-found", key, self._not_found_per_minute)
        if wait is not None:
            self._penalty.put(key, wait)
            return render(request, rate_limited(wait))
        return render(request, not_found())

    def _scanner_key(self, request: web.Request) -> str:
        """Unknown codes are counted, and their senders refused, per client; what another
        site's page makes a browser load (an <img> or <iframe> of made-up codes) counts
        apart, so such a page cannot get its visitors refused when they follow a link."""
        key = client_key(request, self._trusted)
        headers = request.headers
        if (
            headers.get("Sec-Fetch-Site") == "cross-site"
            and headers.get("Sec-Fetch-Dest") != "document"
        ):
            return f"{key} embedded"
        return key
