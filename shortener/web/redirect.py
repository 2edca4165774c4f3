"""The hot path: a short code in, a redirect out, answered from memory whenever possible."""

from __future__ import annotations

import time

from aiohttp import web

from shortener.cache.l1 import L1Cache
from shortener.cache.tiered import TieredCache
from shortener.errors import gone, not_found
from shortener.links.clicks import ClickCounter
from shortener.links.codes import CODE_SHAPE
from shortener.links.model import MISSING
from shortener.store import Store
from shortener.web.problems import render

# Browsers may keep a plain redirect this long; limited links must reach us on every visit.
CACHE_CONTROL = "private, max-age=90"
NO_STORE = "no-store"


class Redirects:
    def __init__(
        self, l1: L1Cache, tiered: TieredCache, store: Store, clicks: ClickCounter
    ) -> None:
        self._l1 = l1
        self._tiered = tiered
        self._store = store
        self._clicks = clicks

    async def follow(self, request: web.Request) -> web.Response:
        code = request.match_info["code"]
        if CODE_SHAPE.fullmatch(code) is None:
            return render(request, not_found())

        target = self._l1.get(code)
        if target is None:
            target = await self._tiered.load(code)  # L2, then the store

        if target is MISSING:
            return render(request, not_found())
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
            if counts:
                self._clicks.add(code)
            cache_control = NO_STORE if target.expires_at is not None else CACHE_CONTROL

        return web.Response(
            status=target.status,
            headers={"Location": target.url, "Cache-Control": cache_control},
        )
