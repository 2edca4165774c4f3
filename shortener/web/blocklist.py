"""The admin API for the domain blocklist under /api/v1/blocklist."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import orjson
from aiohttp import web

from shortener.config import normalise_domain
from shortener.errors import FieldError, invalid, not_found, validation_failed
from shortener.links.model import BlockedDomain
from shortener.store import Store
from shortener.web.api import read_json, rfc3339
from shortener.web.callers import Callers

_MAX_REASON = 500
# An ASCII (punycode) host name, as the OpenAPI document states it.
DOMAIN_PATTERN = r"^[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?$"
MAX_DOMAIN_LENGTH = 253
_DOMAIN = re.compile(DOMAIN_PATTERN)


class BlocklistApi:
    def __init__(self, store: Store, callers: Callers, body_timeout: float) -> None:
        self._store = store
        self._callers = callers
        self._body_timeout = body_timeout

    async def list(self, request: web.Request) -> web.Response:
        await self._callers.require_admin(request)
        items = [_json(entry) for entry in await self._store.list_blocked()]
        return web.Response(body=orjson.dumps({"items": items}), content_type="application/json")

    async def add(self, request: web.Request) -> web.Response:
        await self._callers.require_admin(request)
        domain, reason = parse_entry(await read_json(request, self._body_timeout))
        entry = await self._store.block_domain(domain, reason, datetime.now(UTC))
        return web.Response(
            status=201, body=orjson.dumps(_json(entry)), content_type="application/json"
        )

    async def remove(self, request: web.Request) -> web.Response:
        await self._callers.require_admin(request)
        if not await self._store.unblock_domain(request.match_info["domain"].lower()):
            raise not_found("That domain is not on the blocklist.")
        return web.Response(status=204)


def parse_entry(body: object) -> tuple[str, str]:
    if not isinstance(body, dict):
        raise invalid("domain", "the body must be a JSON object with a domain")
    unknown = sorted(set(body) - {"domain", "reason"})
    if unknown:
        raise validation_failed([FieldError(name, "is not a known field") for name in unknown])
    raw, reason = body.get("domain"), body.get("reason", "")
    if not isinstance(raw, str):
        raise invalid("domain", "must be a string")
    if len(raw) > MAX_DOMAIN_LENGTH or not _DOMAIN.fullmatch(raw):
        raise invalid(
            "domain", "must be a domain name in its ASCII (punycode) form, such as example.com"
        )
    if not isinstance(reason, str) or len(reason) > _MAX_REASON:
        raise invalid("reason", f"must be a string of at most {_MAX_REASON} characters")
    return normalise_domain(raw), reason


def _json(entry: BlockedDomain) -> dict[str, str]:
    return {"domain": entry.domain, "reason": entry.reason, "created_at": rfc3339(entry.created_at)}
