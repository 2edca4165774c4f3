"""The web page at /: its HTML, its content-hashed static files, and browser security headers."""

from __future__ import annotations

import gzip
import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Final

from aiohttp import web

from shortener.errors import not_found

# Every script and style comes from our own files, so nothing injected into a page can run.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# A hashed name changes whenever the content does, so a browser may keep each one forever.
IMMUTABLE: Final = "public, max-age=31536000, immutable"

_CONTENT_TYPES = {
    "css": "text/css; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "svg": "image/svg+xml",
}
_TEMPLATE = "index.html"
# References to our assets in the markup: "/static/<name>" between quotes.
_ASSET_REFERENCE = re.compile(r'(?<=")/static/([A-Za-z0-9_.-]+)(?=")')

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Asset:
    """One file's bytes, compressed once, with the digest that names and validates it."""

    body: bytes
    gzipped: bytes
    content_type: str
    digest: str

    @classmethod
    def of(cls, body: bytes, content_type: str) -> Asset:
        digest = hashlib.sha256(body).hexdigest()[:16]
        return cls(body, gzip.compress(body, mtime=0), content_type, digest)

    def response(self, request: web.Request, cache_control: str) -> web.Response:
        etag = f'"{self.digest}"'
        headers = {"Cache-Control": cache_control, "ETag": etag, "Vary": "Accept-Encoding"}
        if etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        headers["Content-Type"] = self.content_type
        body = self.body
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            headers["Content-Encoding"] = "gzip"
            body = self.gzipped
        return web.Response(body=body, headers=headers)


class Assets:
    """The files of shortener/web/static, read and hashed once, served under hashed names."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.template = files.pop(_TEMPLATE).decode("utf-8")
        self._urls: dict[str, str] = {}
        self._by_url_name: dict[str, Asset] = {}
        for name, body in sorted(files.items()):
            stem, _, suffix = name.rpartition(".")
            content_type = _CONTENT_TYPES.get(suffix)
            if content_type is None:
                continue
            asset = Asset.of(body, content_type)
            hashed = f"{stem}.{asset.digest[:10]}.{suffix}"
            self._urls[name] = f"/static/{hashed}"
            self._by_url_name[hashed] = asset

    @classmethod
    def from_package(cls) -> Assets:
        folder = resources.files("shortener.web").joinpath("static")
        return cls(
            {entry.name: entry.read_bytes() for entry in folder.iterdir() if entry.is_file()}
        )

    def url(self, name: str) -> str:
        return self._urls[name]

    def get(self, hashed_name: str) -> Asset | None:
        return self._by_url_name.get(hashed_name)

    def link(self, markup: str) -> str:
        """The markup with every "/static/<name>" replaced by that file's hashed URL."""
        return _ASSET_REFERENCE.sub(lambda match: self.url(match.group(1)), markup)


# Package data, fixed for the life of the process: read once, when the module is imported.
ASSETS: Final = Assets.from_package()


class Page:
    def __init__(self, assets: Assets = ASSETS) -> None:
        self._assets = assets
        self._page = Asset.of(
            assets.link(assets.template).encode("utf-8"), "text/html; charset=utf-8"
        )

    async def index(self, request: web.Request) -> web.Response:
        # The page names the current asset URLs, so browsers must check it each time.
        return self._page.response(request, "no-cache")

    async def static(self, request: web.Request) -> web.Response:
        asset = self._assets.get(request.match_info["name"])
        if asset is None:
            raise not_found("No such file.")
        return asset.response(request, IMMUTABLE)
