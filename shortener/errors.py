"""The problem types: every error the service reports is one of these values.

They are raised where the problem is found (domain, store, web edge) and turned into
RFC 9457 responses in one place, shortener.web.problems.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    message: str


@dataclass(eq=False)
class Problem(Exception):
    status: int
    slug: str
    title: str
    detail: str
    errors: list[FieldError] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.title}: {self.detail}"


def invalid(field_name: str, message: str) -> Problem:
    return validation_failed([FieldError(field_name, message)])


def validation_failed(errors: list[FieldError]) -> Problem:
    named = ", ".join(sorted({error.field for error in errors}))
    return Problem(400, "validation", "Invalid input", f"Invalid value for: {named}", errors=errors)


def bad_request(detail: str) -> Problem:
    return Problem(400, "bad-request", "Bad request", detail)


def unauthorized(detail: str = "A valid API key is required.") -> Problem:
    return Problem(
        401, "unauthorized", "Unauthorized", detail, headers={"WWW-Authenticate": "Bearer"}
    )


def not_found(detail: str = "No such link.") -> Problem:
    return Problem(404, "not-found", "Not found", detail)


def gone(detail: str = "This link is no longer available.") -> Problem:
    return Problem(410, "gone", "Gone", detail)


def conflict(detail: str) -> Problem:
    return Problem(409, "conflict", "Conflict", detail)


def rate_limited(retry_after: int) -> Problem:
    return Problem(
        429,
        "rate-limited",
        "Too many requests",
        f"Rate limit exceeded; try again in {retry_after} s.",
        headers={"Retry-After": str(retry_after)},
    )


def unavailable(detail: str, retry_after: int = 1) -> Problem:
    return Problem(
        503,
        "unavailable",
        "Service unavailable",
        detail,
        headers={"Retry-After": str(retry_after)},
    )


class StoreUnavailable(Exception):
    """The system of record cannot be reached right now."""


class CodeTaken(Exception):
    """The code is in use, or was used by a link now deleted."""


class DomainBlocked(Exception):
    """A link was not stored: its destination is on the blocklist in the store."""
