"""The front door: short codes reach the redirect without aiohttp's router, nothing else does.

Every test on the `client` fixture goes through it as well (tests/conftest.py serves the app
the way `shortener serve` does), so the answers themselves are checked there.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from shortener.web.front import SHORT_CODES, front_door


async def test_short_codes_skip_the_router_and_every_other_path_takes_it() -> None:
    seen: list[tuple[str, str, str]] = []

    async def follow(request: web.Request) -> web.StreamResponse:
        seen.append(("front door", request.method, request.path))
        return web.Response()

    async def routed(request: web.BaseRequest) -> web.StreamResponse:
        seen.append(("router", request.method, request.path))
        return web.Response()

    app = web.Application()
    app.router.add_get("/{code}", follow)
    app.router.add_get("/", follow)
    app.router.add_get("/healthz", follow)
    app.router.add_get("/api/v1/links", follow)
    app[SHORT_CODES] = follow
    handle = front_door(app, routed)
    requests = [
        ("GET", "/abc123"),
        ("HEAD", "/abc123"),
        ("GET", "/ab%63"),  # decoded as the router decodes it
        ("POST", "/abc123"),  # the router answers 405
        ("GET", "/healthz"),  # a page of the app's own
        ("GET", "/"),
        ("GET", "/api/v1/links"),
        ("GET", "/abc/def"),
    ]
    for method, path in requests:
        await handle(make_mocked_request(method, path, app=app))
    assert seen == [
        ("front door", "GET", "/abc123"),
        ("front door", "HEAD", "/abc123"),
        ("front door", "GET", "/abc"),
        ("router", "POST", "/abc123"),
        ("router", "GET", "/healthz"),
        ("router", "GET", "/"),
        ("router", "GET", "/api/v1/links"),
        ("router", "GET", "/abc/def"),
    ]


async def test_an_app_without_short_codes_is_routed_as_usual() -> None:
    async def routed(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response()

    assert front_door(web.Application(), routed) is routed
