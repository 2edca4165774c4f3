"""The OpenAPI document and the server agree: the same operations, and the patterns the
document states are exactly the ones the server checks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from shortener.app import create_app
from shortener.config import Settings
from shortener.errors import Problem
from shortener.web.api import decode_cursor, encode_cursor
from shortener.web.blocklist import parse_entry
from tests.contract import OPENAPI, Reply, check_reply

_METHODS = {"get", "head", "post", "put", "patch", "delete", "options"}


def _documented() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in OPENAPI["paths"].items()
        for method in item
        if method in _METHODS
    }


def test_served_routes_are_the_documented_operations(tmp_path: Path) -> None:
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'links.db'}"))
    routes = [route for route in app.router.routes() if route.resource is not None]
    # The last route answers every other path and method with a 404 or 405 problem.
    catch_all = routes.pop()
    assert (catch_all.method, catch_all.resource.canonical) == ("*", "/{path}")
    served = {(route.method, route.resource.canonical) for route in routes}
    assert served == _documented()


(CURSOR,) = (
    param["schema"]
    for param in OPENAPI["paths"]["/api/v1/links"]["get"]["parameters"]
    if param["name"] == "cursor"
)
DOMAIN = OPENAPI["components"]["schemas"]["BlockedDomainCreate"]["properties"]["domain"]


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=10**18 - 1))
def test_every_cursor_the_api_gives_out_matches_the_document(link_id: int) -> None:
    cursor = encode_cursor(link_id)
    assert re.fullmatch(CURSOR["pattern"], cursor)
    assert decode_cursor(cursor) == link_id


@settings(max_examples=100, deadline=None)
@given(st.from_regex(CURSOR["pattern"], fullmatch=True))
def test_every_cursor_the_document_allows_is_taken(cursor: str) -> None:
    assert 0 <= decode_cursor(cursor) < 10**18  # leading zeros allowed: 004 is 4


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40))
def test_a_cursor_outside_the_document_is_refused(cursor: str) -> None:
    if re.fullmatch(CURSOR["pattern"], cursor):
        return
    with pytest.raises(Problem) as refused:
        decode_cursor(cursor)
    assert refused.value.status == 400


@settings(max_examples=100, deadline=None)
@given(
    st.one_of(
        st.from_regex(DOMAIN["pattern"], fullmatch=True),
        st.text(max_size=300),
    )
)
def test_blocklist_domain_is_taken_exactly_when_the_document_allows_it(raw: str) -> None:
    allowed = len(raw) <= DOMAIN["maxLength"] and re.fullmatch(DOMAIN["pattern"], raw)
    try:
        domain, _ = parse_entry({"domain": raw})
    except Problem as problem:
        assert problem.status == 400 and not allowed
    else:
        assert allowed and domain == raw.lower().rstrip(".")


@pytest.mark.parametrize("status", [405, 413])
def test_an_undocumented_status_fails_the_contract_check(status: int) -> None:
    headers = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/problem+json"}))
    reply = Reply(status, headers, b"{}")
    with pytest.raises(AssertionError, match="not documented"):
        check_reply("GET", "/api/v1/links", reply)
