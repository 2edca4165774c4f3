"""A test client that checks every response against the served OpenAPI document."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jsonschema
import orjson
from aiohttp.test_utils import TestClient
from multidict import CIMultiDictProxy

OPENAPI: dict[str, Any] = orjson.loads(
    resources.files("shortener.web").joinpath("openapi.json").read_bytes()
)
_METHODS = {"get", "head", "post", "patch", "delete", "put", "options"}


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip()


def _templates() -> list[tuple[re.Pattern[str], str]]:
    found = []
    for template in OPENAPI["paths"]:
        pattern = re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template))
        found.append((re.compile(pattern), template))
    # Literal paths win over templated ones (/healthz is not a short code).
    return sorted(found, key=lambda item: item[1].count("{"))


_TEMPLATES = _templates()


def operation_for(method: str, path: str) -> tuple[str | None, dict[str, Any] | None]:
    for pattern, template in _TEMPLATES:
        if pattern.fullmatch(path):
            return template, OPENAPI["paths"][template].get(method.lower())
    return None, None


def check_reply(method: str, path: str, reply: Reply) -> None:
    """Fails unless the reply is one the OpenAPI document describes for this request."""
    assert reply.status < 500 or reply.status == 503, f"{method} {path} gave {reply.status}"
    template, operation = operation_for(method, path)
    if template is None or operation is None:
        # No such path, or no such method on it: only 404 and 405 problems may answer.
        assert reply.status in {404, 405}, f"{method} {path}: undocumented {reply.status}"
        if method != "HEAD":
            assert reply.content_type in {"application/problem+json", "text/html"}, reply
        return
    responses = operation["responses"]
    spec = responses.get(str(reply.status))
    assert spec is not None, f"{method} {template}: status {reply.status} is not documented"
    for header in spec.get("headers", {}):
        assert header in reply.headers, f"{method} {template} {reply.status}: no {header} header"
    content = spec.get("content")
    if not content or method == "HEAD" or reply.status == 204:
        return
    assert reply.content_type in content, (
        f"{method} {template} {reply.status}: content type {reply.content_type!r} "
        f"is not one of {sorted(content)}"
    )
    if reply.content_type.endswith("json"):
        schema = {**content[reply.content_type]["schema"], "components": OPENAPI["components"]}
        jsonschema.validate(
            reply.json(), schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        )


class ContractClient:
    def __init__(self, client: TestClient[Any, Any]) -> None:
        self.raw = client
        self.app = client.app

    async def request(self, method: str, path: str, **kwargs: Any) -> Reply:
        kwargs.setdefault("allow_redirects", False)
        async with self.raw.request(method, path, **kwargs) as response:
            reply = Reply(response.status, response.headers, await response.read())
        check_reply(method, path.split("?", 1)[0], reply)
        return reply

    async def get(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("GET", path, **kwargs)

    async def head(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("HEAD", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("POST", path, **kwargs)

    async def patch(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("PATCH", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("DELETE", path, **kwargs)
