"""The floor for the redirect benchmark: bare aiohttp on uvloop answering every GET with a 302.

It sends what the app sends for a cached redirect (302, a Location as long as the benchmark's
seeded links, which bench/redirect.py passes in, and the same Cache-Control) with the same
server settings (`web.run_app`, no access log, the same keep-alive), and does nothing else:
one catch-all route, no middleware, no cache, no click counting. Whatever the app answers
slower than this is the cost of the app's own code.

    python bench/bare.py [--port 8090] [--location URL]
"""

from __future__ import annotations

import argparse

import uvloop
from aiohttp import web

LOCATION = "https://example.com/bench/landing/page-0000?utm_source=bench&utm_medium=wrk"
CACHE_CONTROL = "private, max-age=90"  # what the app sends with a plain cached redirect
KEEPALIVE_TIMEOUT = 75.0


def make_app(location: str) -> web.Application:
    headers = {"Location": location, "Cache-Control": CACHE_CONTROL}

    async def redirect(_request: web.Request) -> web.Response:
        return web.Response(status=302, headers=headers)

    app = web.Application()
    app.add_routes([web.get("/{path:.*}", redirect)])
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--location", default=LOCATION, help="the Location every answer carries")
    args = parser.parse_args()
    web.run_app(
        make_app(args.location),
        host=args.host,
        port=args.port,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
        access_log=None,
        loop=uvloop.new_event_loop(),
        print=None,
    )


if __name__ == "__main__":
    main()
