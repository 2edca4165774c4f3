"""What a link is, in full (Link) and in the small form the redirect path caches (Target)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Final


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: int
    name: str
    admin: bool


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: int
    name: str
    admin: bool
    created_at: datetime
    last_used_at: datetime | None
    revoked: bool


@dataclass(frozen=True, slots=True)
class BlockedDomain:
    domain: str
    reason: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Link:
    id: int
    code: str
    url: str
    owner_id: int | None
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    max_visits: int | None
    redirect_status: int
    disabled: bool
    deleted: bool
    clicks: int
    version: int
    title: str | None = None
    tags: tuple[str, ...] = ()

    def target(self) -> Target:
        return Target(
            url=self.url,
            status=self.redirect_status,
            expires_at=self.expires_at.timestamp() if self.expires_at else None,
            max_visits=self.max_visits,
            gone=self.deleted or self.disabled,
            version=self.version,
        )


@dataclass(frozen=True, slots=True)
class Target:
    """Everything the redirect needs to answer, and nothing that changes per click."""

    url: str
    status: int
    expires_at: float | None
    max_visits: int | None
    gone: bool
    # The link's version in the store: caches keep the newest answer they have seen.
    version: int


class Missing(enum.Enum):
    """The cached answer for a code that names no link."""

    MISSING = "missing"


MISSING: Final = Missing.MISSING
Lookup = Target | Missing


@dataclass(frozen=True, slots=True)
class NewLink:
    url: str
    alias: str | None
    expires_at: datetime | None
    max_visits: int | None
    redirect_status: int
    title: str | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LinkFilter:
    """What a listing keeps: links whose code, url or title holds `text`, carrying every tag."""

    text: str | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LinkChanges:
    """The fields a PATCH sets; absent fields are not in `values`."""

    values: dict[str, object]
