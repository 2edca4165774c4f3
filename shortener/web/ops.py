"""Operations endpoints: liveness, readiness and the OpenAPI document."""

from __future__ import annotations

import asyncio
from importlib import resources

import orjson
from aiohttp import web

from shortener.cache.l1 import L1Cache
from shortener.errors import StoreUnavailable
from shortener.store import Store

_JSON = "application/json"


class Operations:
    def __init__(self, store: Store, l1: L1Cache, probe_timeout: float) -> None:
        self._store = store
        self._l1 = l1
        self._probe_timeout = probe_timeout
        self._openapi = resources.files("shortener.web").joinpath("openapi.json").read_bytes()

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', content_type=_JSON)

    async def readyz(self, _request: web.Request) -> web.Response:
        store_up = await self._store_up()
        # With the store down, cached links still redirect; an instance with nothing cached
        # cannot serve and leaves rotation.
        ready = store_up or len(self._l1) > 0
        body = {
            "status": "ready" if ready else "unavailable",
            "dependencies": {
                "store": {"status": "up" if store_up else "down"},
                "l1": {"status": "up", "entries": len(self._l1)},
            },
        }
        return web.Response(
            status=200 if ready else 503,
            body=orjson.dumps(body),
            content_type=_JSON,
            headers={"Cache-Control": "no-store"},
        )

    async def _store_up(self) -> bool:
        try:
            await asyncio.wait_for(self._store.ping(), self._probe_timeout)
        except (StoreUnavailable, TimeoutError):
            return False
        return True

    async def openapi(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type=_JSON)
