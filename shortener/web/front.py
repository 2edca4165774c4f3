"""The front door: a short code goes straight to the redirect, past aiohttp's router.

Every path of one segment that is not one of the app's own pages (`/healthz`, `/`, ...) is a
short code to aiohttp's router too (the route `/{code}`), so the answer is the same; what a
redirect saves is the router's walk of the app's routes and the match it builds for each
request, about a tenth of what bare aiohttp spends on a request. Everything else goes
through the router as before. The servers of shortener.web.server put it in front of the
app; an app without SHORT_CODES (a test's plain aiohttp server) is routed as usual.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import cast

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# A server's handler: aiohttp types it for the base class of the requests the app makes.
ServerHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
# The handler of the route `/{code}`, registered by the app, found here by the server.
SHORT_CODES: web.AppKey[Handler] = web.AppKey("short_codes")
_METHODS = frozenset({"GET", "HEAD"})


def front_door(app: web.Application, routed: ServerHandler) -> ServerHandler:
    """The request handler of a server of `app`, whose own handler (the router) is `routed`."""
    follow = app.get(SHORT_CODES)
    if follow is None:
        return routed
    # Paths of one segment the router takes to a page of their own rather than to `/{code}`.
    pages = frozenset(
        resource.canonical
        for resource in app.router.resources()
        if isinstance(resource, web.PlainResource)
    )

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.method in _METHODS:
            path = request.path
            if path.rfind("/") == 0 and path not in pages:
                return await follow(request)
        return await routed(request)

    # The app's request factory makes web.Requests, whatever aiohttp's types say.
    return cast(ServerHandler, handle)
