"""Who is asking: the API key a request presents, resolved to its record."""

from __future__ import annotations

from aiohttp import web

from shortener.auth import KeyRing
from shortener.errors import Problem, unauthorized
from shortener.links.model import ApiKey


class Callers:
    def __init__(self, keys: KeyRing) -> None:
        self._keys = keys

    async def optional(self, request: web.Request, required: bool) -> ApiKey | None:
        presented = _presented_key(request)
        if presented is None:
            if required:
                raise unauthorized()
            return None
        caller = await self._keys.resolve(presented)
        if caller is None:
            # A wrong key is refused even where no key is needed, so a typo is noticed.
            raise unauthorized("The API key is not valid.")
        return caller

    async def require(self, request: web.Request) -> ApiKey:
        caller = await self.optional(request, required=True)
        assert caller is not None
        return caller

    async def require_admin(self, request: web.Request) -> ApiKey:
        caller = await self.require(request)
        if not caller.admin:
            raise Problem(403, "forbidden", "Forbidden", "This needs an admin key.")
        return caller


def _presented_key(request: web.Request) -> str | None:
    authorization = request.headers.get("Authorization")
    if authorization is not None:
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise unauthorized("Use 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.")
        return key.strip()
    api_key = request.headers.get("X-API-Key")
    return api_key.strip() if api_key is not None else None
