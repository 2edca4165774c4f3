"""Schemathesis hooks for the rules of the OpenAPI document that no JSON Schema can state.

Loaded by the `st` command through SCHEMATHESIS_HOOKS. Each one is narrow: it names the rule
it stands in for, prints every failure it lets through, and lets nothing else through.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import orjson
import schemathesis

from tests.contract import OPENAPI

# "In the future" is a rule of the document no schema can say: a schema-valid expiry is moved
# to the year 2096 (a leap year, so every generated day exists), keeping its date and time.
_YEAR = re.compile(r"^[0-9]{4}-")

# 400s for schema-valid input that depend on the server's state or settings or on two fields
# together, each named in the document's description of the field: (field, message start).
UNSTATABLE_RULES = (
    ("url", "must not point at this service (it would loop)"),
    ("url", "points at a blocked domain"),
    ("url", "has a punycode host name that is not valid"),
    ("url", "has a host that is not a valid address or name"),
    ("to", "must be after from"),
    ("interval", "the range holds "),
)

BATCH = "/api/v1/links/batch"
# /api/v1/links/batch is also /api/v1/links/{code} for the code "batch": a 405 there rightly
# allows the methods of both paths.
_BATCH_ALLOW = {
    method.upper()
    for path in (BATCH, "/api/v1/links/{code}")
    for method in OPENAPI["paths"][path]
    if method != "parameters"
}


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    body = case.body
    if not isinstance(body, dict):
        return
    links = body.get("links") if case.path == BATCH else [body]
    for link in links if isinstance(links, list) else []:
        if isinstance(link, dict) and isinstance(link.get("expires_at"), str):
            link["expires_at"] = _YEAR.sub("2096-", link["expires_at"])


@schemathesis.hook
def filter_failure(ctx: Any, failure: Any, case: Any, response: Any) -> bool:
    """Keeps every failure but the three kinds named above."""
    tolerated = (
        (failure.code == "ST202" and _refused_for_unstatable_rules(response))
        or (failure.code == "ST201" and _batch_item_refused(case, response))
        or (failure.code == "ST205" and _batch_allow(case, response))
    )
    if tolerated:
        print(
            f"tolerated {failure.code}: {case.method} {case.path} {_text(response)}",
            file=sys.stderr,
        )
    return not tolerated


def _refused_for_unstatable_rules(response: Any) -> bool:
    if response.status_code != 400:
        return False
    body = _json(response)
    errors = body.get("errors", []) if isinstance(body, dict) else []
    named = {(error.get("field"), error.get("message")) for error in errors}
    return bool(named) and all(_unstatable(field, message) for field, message in named)


def _unstatable(field: object, message: object) -> bool:
    return any(
        field == rule_field and isinstance(message, str) and message.startswith(start)
        for rule_field, start in UNSTATABLE_RULES
    )


def _batch_item_refused(case: Any, response: Any) -> bool:
    """A batch answers 200 with each item judged alone: a bad item is a 4xx result in it."""
    if case.path != BATCH or response.status_code != 200:
        return False
    body = _json(response)
    results = body.get("results", []) if isinstance(body, dict) else []
    return any(400 <= result.get("status", 0) < 500 for result in results)


def _batch_allow(case: Any, response: Any) -> bool:
    header = ",".join(response.headers.get("allow", []))
    allowed = {method.strip() for method in header.split(",") if method.strip()}
    return case.path == BATCH and allowed == _BATCH_ALLOW


def _json(response: Any) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None


def _text(response: Any) -> str:
    return f"{response.status_code} {response.content[:300]!r}"
