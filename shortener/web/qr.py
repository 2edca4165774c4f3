"""GET /api/v1/links/{code}/qr: the QR code of a link's short URL, as SVG or PNG, from segno."""

from __future__ import annotations

import asyncio
import io
from typing import Final

import segno
from aiohttp import web
from cachetools import LRUCache
from multidict import MultiMapping

from shortener.config import Settings
from shortener.errors import FieldError, validation_failed
from shortener.links.service import LinkService
from shortener.web.callers import Callers

FORMATS: Final = {"svg": "image/svg+xml", "png": "image/png"}
# Module size in pixels (SVG user units); the default PNG is about 300 px for a short URL.
DEFAULT_SCALE: Final = {"svg": 4, "png": 8}
MAX_SCALE: Final = 32
# Medium error correction survives a smudged print or a glare on a screen.
ERROR_LEVEL: Final = "m"
CACHE_CONTROL: Final = "private, max-age=3600"

Key = tuple[str, str, int]


def render(short_url: str, fmt: str, scale: int) -> bytes:
    """The QR code of short_url: a PNG, or an SVG that also scales to whatever box holds it."""
    code = segno.make(short_url, error=ERROR_LEVEL, micro=False)
    out = io.BytesIO()
    if fmt == "png":
        code.save(out, kind="png", scale=scale)
        return out.getvalue()
    code.save(out, kind="svg", scale=scale, xmldecl=False, svgclass=None, lineclass=None, nl=False)
    width, height = code.symbol_size(scale=scale)
    return out.getvalue().replace(b"<svg ", f'<svg viewBox="0 0 {width} {height}" '.encode(), 1)


class QrCodes:
    def __init__(
        self, settings: Settings, service: LinkService, callers: Callers, cache_size: int = 1024
    ) -> None:
        self._settings = settings
        self._service = service
        self._callers = callers
        self._cache: LRUCache[Key, bytes] = LRUCache(maxsize=cache_size)
        # One rendering at a time per worker, off the event loop: redirects keep their CPU.
        self._rendering = asyncio.Semaphore(1)

    async def get(self, request: web.Request) -> web.Response:
        # Whoever may read the link may have its QR code: the same rules as the API's GET.
        caller = await self._callers.require(request)
        link = await self._service.get(request.match_info["code"], caller)
        fmt, scale = _parse_query(request.query)
        key = (self._settings.short_url(link.code), fmt, scale)
        body = self._cache.get(key)
        if body is None:
            async with self._rendering:
                body = self._cache.get(key)
                if body is None:
                    body = await asyncio.to_thread(render, *key)
                    self._cache[key] = body
        return web.Response(
            body=body,
            headers={
                "Content-Type": FORMATS[fmt],
                "Cache-Control": CACHE_CONTROL,
                "Vary": "Authorization, X-API-Key",
            },
        )


def _parse_query(query: MultiMapping[str]) -> tuple[str, int]:
    errors = []
    fmt = query.get("format", "svg")
    if fmt not in FORMATS:
        errors.append(FieldError("format", "must be svg or png"))
    raw_scale = query.get("scale")
    scale = DEFAULT_SCALE.get(fmt, 1)
    if raw_scale is not None:
        # At most two digits before int(): Python refuses to parse very long numbers.
        digits = raw_scale.isascii() and raw_scale.isdigit() and len(raw_scale) <= 2
        if digits and 1 <= int(raw_scale) <= MAX_SCALE:
            scale = int(raw_scale)
        else:
            errors.append(FieldError("scale", f"must be a whole number from 1 to {MAX_SCALE}"))
    if errors:
        raise validation_failed(errors)
    return fmt, scale
