"""Operations endpoints: liveness, readiness and the OpenAPI document."""

from __future__ import annotations

import asyncio
import logging
from importlib import resources

import orjson
from aiohttp import web

from shortener import metrics
from shortener.cache.l1 import L1Cache
from shortener.cache.redis import RedisTier
from shortener.errors import StoreUnavailable
from shortener.store import Store

log = logging.getLogger(__name__)

_JSON = "application/json"


# How often each worker probes its dependencies for /readyz.
READINESS_INTERVAL = 1.0


class Operations:
    def __init__(
        self, store: Store, l1: L1Cache, l2: RedisTier | None, probe_timeout: float
    ) -> None:
        self._store = store
        self._l1 = l1
        self._l2 = l2
        self._probe_timeout = probe_timeout
        self._openapi = resources.files("shortener.web").joinpath("openapi.json").read_bytes()
        self._store_up = False
        self._redis_up: bool | None = None

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', content_type=_JSON)

    async def readyz(self, _request: web.Request) -> web.Response:
        # Answered from the last probe, never by probing: a flood of /readyz must not become
        # a flood of pings on PostgreSQL and Redis.
        store_up, redis_up = self._store_up, self._redis_up
        # With the store down, cached links still redirect: a shared outage must not take
        # every instance out of rotation. Only an instance that can answer nothing leaves.
        ready = store_up or bool(redis_up) or len(self._l1) > 0
        redis_state = "disabled" if redis_up is None else ("up" if redis_up else "down")
        body = {
            "status": "ready" if ready else "unavailable",
            "dependencies": {
                "store": {"status": "up" if store_up else "down"},
                "redis": {"status": redis_state},
                "l1": {"status": "up", "entries": len(self._l1)},
            },
        }
        return web.Response(
            status=200 if ready else 503,
            body=orjson.dumps(body),
            content_type=_JSON,
            headers={"Cache-Control": "no-store"},
        )

    async def refresh(self) -> None:
        """Probes the store and Redis once, for /readyz to answer from."""
        self._store_up, self._redis_up = await asyncio.gather(
            self._probe_store(), self._probe_redis()
        )

    async def keep_refreshing(self, interval: float = READINESS_INTERVAL) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except Exception:  # the probes must outlive any surprise, or /readyz goes stale
                log.exception("readiness probe failed")
                self._store_up, self._redis_up = False, None if self._l2 is None else False

    async def _probe_store(self) -> bool:
        try:
            async with asyncio.timeout(self._probe_timeout):  # not wait_for: see telemetry.py
                await self._store.ping()
        except (StoreUnavailable, TimeoutError):
            return False
        return True

    async def _probe_redis(self) -> bool | None:
        if self._l2 is None:
            return None
        return self._l2.subscribed and await self._l2.ping()

    async def metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=metrics.exposition(), headers={"Content-Type": metrics.CONTENT_TYPE}
        )

    async def openapi(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type=_JSON)
