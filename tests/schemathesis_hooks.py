"""Schemathesis hooks for the rules of the OpenAPI document that no JSON Schema can state.

Loaded by the `st` command through SCHEMATHESIS_HOOKS. Each one is narrow: it names the rule
it stands in for, and nothing else the fuzzer finds is let through.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import orjson
import schemathesis

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


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("expires_at"), str):
        body["expires_at"] = _YEAR.sub("2096-", body["expires_at"])


@schemathesis.hook
def filter_failure(ctx: Any, failure: Any, case: Any, response: Any) -> bool:
    """Keeps every failure but a schema-valid request refused for an unstatable rule."""
    if failure.code != "ST202" or response.status_code != 400:
        return True
    try:
        errors = orjson.loads(response.content).get("errors", [])
    except (orjson.JSONDecodeError, AttributeError):
        return True
    named = {(error.get("field"), error.get("message")) for error in errors}
    if not named or not all(_unstatable(field, message) for field, message in named):
        return True
    print(f"tolerated: {case.method} {case.path} {sorted(named)}", file=sys.stderr)
    return False


def _unstatable(field: object, message: object) -> bool:
    return any(
        field == rule_field and isinstance(message, str) and message.startswith(start)
        for rule_field, start in UNSTATABLE_RULES
    )
