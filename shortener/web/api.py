"""The JSON API under /api/v1: thin actions over the link service."""

from __future__ import annotations

import asyncio
import base64
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from shortener.config import Settings
from shortener.errors import (
    FieldError,
    Problem,
    bad_request,
    invalid,
    rate_limited,
    validation_failed,
)
from shortener.links.model import Link, NewLink
from shortener.links.rules import parse_filter, parse_link_changes, parse_new_link
from shortener.links.service import LinkService
from shortener.web import MAX_BATCH_BODY_BYTES, MAX_BATCH_ITEMS, MAX_BODY_BYTES
from shortener.web.callers import Callers
from shortener.web.problems import problem_body
from shortener.web.ratelimit import RateLimiter, client_key

DEFAULT_PAGE = 20
MAX_PAGE = 100
MAX_LINK_ID = 2**63 - 1

# A cursor is base64url("id:" + 1 to 18 digits) without padding, exactly as this API gives
# it out; the pattern spells that out so that the OpenAPI document can state it. 18 digits
# keep every id a cursor names below MAX_LINK_ID, the most the stores hold.
_DIGITS_3 = "(?:[MN][DTjz]|O[DT])[AEIMQUYcgk][w-z0-5]"
_DIGITS_1 = "(?:[MN][AQgw]|O[AQ])"
_DIGITS_2 = "(?:[MN][DTjz]|O[DT])[AEIMQUYcgk]"
CURSOR_PATTERN = (
    f"^aWQ6(?:(?:{_DIGITS_3}){{1,6}}|(?:{_DIGITS_3}){{0,5}}{_DIGITS_1}"
    f"|(?:{_DIGITS_3}){{0,5}}{_DIGITS_2})$"
)
_CURSOR = re.compile(CURSOR_PATTERN)


class LinksApi:
    def __init__(
        self, settings: Settings, service: LinkService, callers: Callers, limiter: RateLimiter
    ) -> None:
        self._settings = settings
        self._service = service
        self._callers = callers
        self._limiter = limiter

    async def create(self, request: web.Request) -> web.Response:
        settings = self._settings
        caller = await self._callers.optional(request, required=not settings.public_create)
        if caller is None:
            # Without a key nothing but the visitor's browser vouches for the request, so a
            # page of another site must not use it; with one, the header needs a preflight.
            refuse_foreign_origin(request, settings.base_url)
        body = await read_json(request, settings.body_timeout)
        if caller is None:
            address = client_key(request, settings.trusted_proxies)
            await self._limiter.check("create-keyless", address, settings.public_create_per_minute)
        else:
            await self._limiter.check(
                "create-key", str(caller.id), settings.creates_per_key_per_minute
            )
        new = parse_new_link(body, settings.base_host)
        link = await self._service.create(new, caller)
        return self._json(link, status=201, headers={"Location": f"/api/v1/links/{link.code}"})

    async def create_batch(self, request: web.Request) -> web.Response:
        """Up to MAX_BATCH_ITEMS creates, each judged as a create of its own would be."""
        settings = self._settings
        caller = await self._callers.optional(request, required=not settings.public_create)
        if caller is None:
            refuse_foreign_origin(request, settings.base_url)
        body = await read_json(request, settings.body_timeout, MAX_BATCH_BODY_BYTES)
        bodies = _batch_items(body)
        if caller is None:
            address = client_key(request, settings.trusted_proxies)
            allowed, wait = await self._limiter.take(
                "create-keyless", address, settings.public_create_per_minute, len(bodies)
            )
        else:
            allowed, wait = await self._limiter.take(
                "create-key", str(caller.id), settings.creates_per_key_per_minute, len(bodies)
            )
        items: list[NewLink | Problem] = []
        for position, item in enumerate(bodies):
            if position >= allowed:
                items.append(rate_limited(wait))
                continue
            try:
                items.append(_parse_batch_item(item, settings.base_host))
            except Problem as problem:
                items.append(problem)
        results: list[dict[str, Any]] = []
        for outcome in await self._service.create_many(items, caller):
            if isinstance(outcome, Problem):
                details = problem_body(outcome, request.path)
                results.append({"status": outcome.status, "problem": details})
            else:
                results.append({"status": 201, "link": self.link_json(outcome)})
        body = {"results": results}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def get(self, request: web.Request) -> web.Response:
        caller = await self._callers.require(request)
        return self._json(await self._service.get(request.match_info["code"], caller))

    async def update(self, request: web.Request) -> web.Response:
        caller = await self._callers.require(request)
        body = await read_json(request, self._settings.body_timeout)
        changes = parse_link_changes(body, self._settings.base_host)
        return self._json(await self._service.update(request.match_info["code"], changes, caller))

    async def delete(self, request: web.Request) -> web.Response:
        caller = await self._callers.require(request)
        await self._service.delete(request.match_info["code"], caller)
        return web.Response(status=204)

    async def list(self, request: web.Request) -> web.Response:
        caller = await self._callers.require(request)
        limit = _parse_limit(request.query.get("limit"))
        before = decode_cursor(request.query["cursor"]) if "cursor" in request.query else None
        where = parse_filter(request.query.get("q"), request.query.getall("tag", []))
        links = await self._service.list(caller, limit + 1, before, where)
        page = links[:limit]
        next_cursor = encode_cursor(page[-1].id) if len(links) > limit else None
        body = {"items": [self.link_json(link) for link in page], "next_cursor": next_cursor}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    def _json(
        self, link: Link, status: int = 200, headers: dict[str, str] | None = None
    ) -> web.Response:
        return web.Response(
            status=status,
            body=orjson.dumps(self.link_json(link)),
            content_type="application/json",
            headers=headers,
        )

    def link_json(self, link: Link) -> dict[str, Any]:
        return {
            "code": link.code,
            "short_url": self._settings.short_url(link.code),
            "url": link.url,
            "created_at": rfc3339(link.created_at),
            "updated_at": rfc3339(link.updated_at),
            "expires_at": rfc3339(link.expires_at) if link.expires_at else None,
            "max_visits": link.max_visits,
            "redirect_status": link.redirect_status,
            "disabled": link.disabled,
            "clicks": link.clicks,
            "title": link.title,
            "tags": list(link.tags),
        }


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def refuse_foreign_origin(request: web.Request, base_url: str) -> None:
    """403 unless the request comes from no page, or from a page of this service."""
    origin = request.headers.get("Origin")
    if origin is None:
        return
    base = urlsplit(base_url)
    own = f"{base.scheme}://{base.netloc}".lower()
    sent = urlsplit(origin.lower())
    if origin.lower() != own and (not sent.netloc or sent.netloc != request.host.lower()):
        raise Problem(
            403,
            "forbidden",
            "Forbidden",
            "Links are created without a key only from this service's own pages.",
        )


async def read_json(
    request: web.Request, body_timeout: float, max_bytes: int = MAX_BODY_BYTES
) -> object:
    # A form or text/plain body needs no preflight, so requiring JSON keeps other sites'
    # pages from sending writes at all.
    if request.content_type != "application/json":
        raise Problem(
            415,
            "unsupported-media-type",
            "Unsupported media type",
            "The body must be sent as Content-Type: application/json.",
        )
    if request.content_length is not None and request.content_length > max_bytes:
        raise payload_too_large(max_bytes)
    if max_bytes != request.client_max_size:
        request = request.clone(client_max_size=max_bytes)
    try:
        raw = await _read_body(request, body_timeout)
    except web.HTTPRequestEntityTooLarge:
        raise payload_too_large(max_bytes) from None
    except TimeoutError:
        raise Problem(
            408, "timeout", "Request timeout", f"The body took longer than {body_timeout:g} s."
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request("The body is not valid UTF-8.") from None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        raise bad_request("The body is not valid JSON.") from None


async def _read_body(request: web.Request, body_timeout: float) -> bytes:
    if request.content.is_eof():  # it has all arrived (usually with the head): no wait
        return await request.read()
    async with asyncio.timeout(body_timeout):
        return await request.read()


def payload_too_large(max_bytes: int) -> Problem:
    return Problem(
        413,
        "payload-too-large",
        "Payload too large",
        f"The request body is larger than {max_bytes} bytes.",
    )


def _batch_items(body: object) -> list[Any]:
    if not isinstance(body, dict):
        raise bad_request("The body must be a JSON object.")
    unknown = sorted(set(body) - {"links"})
    if unknown:
        raise validation_failed([FieldError(name, "is not a known field") for name in unknown])
    items = body.get("links")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH_ITEMS:
        raise invalid("links", f"must be a list of 1 to {MAX_BATCH_ITEMS} link bodies")
    return items


def _parse_batch_item(item: object, own_host: str) -> NewLink:
    """One item as a create of its own: over 16,384 bytes as JSON, 413; else its rules."""
    try:
        size = len(orjson.dumps(item))
    except orjson.JSONEncodeError:
        raise bad_request("The item is nested too deeply.") from None
    if size > MAX_BODY_BYTES:
        raise payload_too_large(MAX_BODY_BYTES)
    return parse_new_link(item, own_host)


def _parse_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE
    # At most three digits before int(): Python refuses to parse very long numbers.
    if not raw.isascii() or not raw.isdigit() or len(raw) > 3 or not 1 <= int(raw) <= MAX_PAGE:
        raise invalid("limit", f"must be a whole number from 1 to {MAX_PAGE}")
    return int(raw)


def encode_cursor(link_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{link_id}".encode()).decode().rstrip("=")


def decode_cursor(raw: str) -> int:
    if not _CURSOR.fullmatch(raw):
        raise invalid("cursor", "is not a cursor this API gave out")
    return int(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))[3:])
