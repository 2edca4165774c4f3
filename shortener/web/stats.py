"""GET /api/v1/links/{code}/stats: a link's visits, for the key that may see the link."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from aiohttp import web

from shortener.links.service import LinkService
from shortener.store import Store
from shortener.visits.report import build_report, parse_range
from shortener.web.callers import Callers


class VisitStatsApi:
    def __init__(self, store: Store, service: LinkService, callers: Callers) -> None:
        self._store = store
        self._service = service
        self._callers = callers

    async def get(self, request: web.Request) -> web.Response:
        caller = await self._callers.require(request)
        link = await self._service.get(request.match_info["code"], caller)
        wanted = parse_range(request.query, datetime.now(UTC))
        report = await build_report(self._store, link, wanted)
        return web.Response(
            body=orjson.dumps(report, option=orjson.OPT_UTC_Z), content_type="application/json"
        )
