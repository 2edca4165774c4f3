"""The one place where problems become RFC 9457 responses (or small HTML pages for browsers)."""

from __future__ import annotations

import logging

import orjson
from aiohttp import web

from shortener.errors import Problem, StoreUnavailable, unavailable
from shortener.web import MAX_BODY_BYTES
from shortener.web.page import ASSETS

log = logging.getLogger(__name__)

PROBLEM_TYPE_PREFIX = "urn:shortener:problem:"
PROBLEM_CONTENT_TYPE = "application/problem+json"


_PAGES = {
    404: ("Link not found", "There is no short link at this address."),
    410: ("Link gone", "This short link has been removed, disabled, or has expired."),
}
# The main page's look, and nothing about the link: not its code, its target, or its fate.
_PAGE = ASSETS.link(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark"><title>{title}</title>
<link rel="icon" type="image/svg+xml" href="/static/icon.svg">
<link rel="stylesheet" href="/static/app.css"></head>
<body><header class="top"><div class="wrap top-inner"><a class="brand" href="/">
<img src="/static/icon.svg" alt="" width="28" height="28">Shortener</a></div></header>
<main class="wrap miss"><div class="card"><h1>{title}</h1><p>{text}</p>
<p><a class="button primary" href="/">Make a short link</a></p></div></main></body></html>
"""
)


def problem_body(problem: Problem, instance: str) -> dict[str, object]:
    body: dict[str, object] = {
        "type": PROBLEM_TYPE_PREFIX + problem.slug,
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        "instance": instance,
    }
    if problem.errors:
        body["errors"] = [{"field": e.field, "message": e.message} for e in problem.errors]
    return body


def render(request: web.Request, problem: Problem) -> web.Response:
    headers = dict(problem.headers)
    headers["Cache-Control"] = "no-store"
    if problem.status in _PAGES and _wants_html(request):
        title, text = _PAGES[problem.status]
        return web.Response(
            status=problem.status,
            text=_PAGE.format(title=title, text=text),
            content_type="text/html",
            headers=headers,
        )
    return web.Response(
        status=problem.status,
        body=orjson.dumps(problem_body(problem, request.path)),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def _wants_html(request: web.Request) -> bool:
    return "text/html" in request.headers.get("Accept", "")


def from_http_exception(exc: web.HTTPException) -> Problem:
    headers = {}
    if isinstance(exc, web.HTTPMethodNotAllowed):
        headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
    slug = {
        404: "not-found",
        405: "method-not-allowed",
        413: "payload-too-large",
    }.get(exc.status, "http-error")
    detail = {
        404: "Nothing is served at this path.",
        405: f"{exc.method if isinstance(exc, web.HTTPMethodNotAllowed) else 'This method'} "
        "is not allowed here.",
        413: f"The request body is larger than {MAX_BODY_BYTES} bytes.",
    }.get(exc.status, exc.reason)
    return Problem(exc.status, slug, exc.reason, detail, headers=headers)


def response_for(request: web.Request, exc: Exception) -> web.Response:
    """The response for an error a handler raised: always a problem, never a traceback."""
    if isinstance(exc, Problem):
        return render(request, exc)
    if isinstance(exc, StoreUnavailable):
        log.warning("store unavailable: %s", exc)
        return render(request, unavailable("The link store is unavailable; try again shortly."))
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            # A redirect raised as an exception is an answer, not an error.
            return web.Response(status=exc.status, headers=exc.headers, text=exc.text)
        return render(request, from_http_exception(exc))
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return render(
        request, Problem(500, "internal", "Internal error", "Something went wrong on our side.")
    )
