"""The system of record behind one small interface, with a PostgreSQL and an SQLite backend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from importlib import resources
from typing import TYPE_CHECKING, NamedTuple, Protocol

from shortener.config import Settings
from shortener.links.model import (
    ApiKey,
    BlockedDomain,
    KeyInfo,
    Link,
    LinkChanges,
    LinkFilter,
    NewLink,
)

if TYPE_CHECKING:
    from shortener.store.breaker import StoreBreaker

NO_FILTER = LinkFilter()


class Inserted(NamedTuple):
    """What a batch insert did: the links made, by code, and the codes of the rows left out
    because a domain of theirs is blocked (a code in use is in neither)."""

    made: dict[str, Link]
    blocked: set[str]


# (code, UTC hours since the epoch, dimension, value): the key of one count of visits.
VisitKey = tuple[str, int, str, str]


class Store(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def migrate(self) -> list[int]:
        """Applies pending migrations, safely when several processes start at once."""
        ...

    @property
    def breaker(self) -> StoreBreaker | None:
        """The circuit breaker in front of a store that can hang (a networked one)."""
        ...

    def pool_stats(self) -> tuple[int, int]:
        """Connections in use and idle, for the metrics."""
        ...

    async def ping(self) -> None:
        """Raises StoreUnavailable unless the store answers now."""
        ...

    async def insert_link(
        self,
        code: str,
        new: NewLink,
        owner_id: int | None,
        now: datetime,
        unless_blocked: Sequence[str] = (),
    ) -> Link:
        """Raises CodeTaken if the code is or ever was in use, and DomainBlocked (storing
        nothing) if any of the domains `unless_blocked` is on the blocklist."""
        ...

    async def insert_links(
        self,
        rows: list[tuple[str, NewLink]],
        owner_id: int | None,
        now: datetime,
        unless_blocked: Sequence[Sequence[str]] = (),
    ) -> Inserted:
        """Inserts every (code, link) whose code is free and none of whose domains (the
        row's entry in `unless_blocked`, if given) is on the blocklist, in one round trip,
        in order."""
        ...

    async def import_links(self, links: list[Link], owner_id: int) -> dict[str, Link]:
        """Inserts whole links (times, clicks, deleted or not) in one statement, so all of
        them or none; the links made, by code (a code already in use is absent)."""
        ...

    async def links_by_code(self, codes: list[str]) -> dict[str, Link]:
        """The links with these codes, deleted or not."""
        ...

    async def export_links(self, after_id: int, limit: int) -> list[Link]:
        """Every link, deleted ones too, oldest first, from the id after `after_id`."""
        ...

    async def get_link(self, code: str) -> Link | None:
        """The link with this code, deleted or not."""
        ...

    async def codes(self) -> list[str]:
        """Every code in use or ever used (deleted links keep theirs)."""
        ...

    async def update_link(self, code: str, changes: LinkChanges, now: datetime) -> Link | None: ...

    async def delete_link(self, code: str, now: datetime) -> Link | None: ...

    async def list_links(
        self,
        owner_id: int | None,
        before_id: int | None,
        limit: int,
        where: LinkFilter = NO_FILTER,
    ) -> list[Link]:
        """Live links that pass the filter, newest first; owner_id None lists every owner's."""
        ...

    async def take_visit(self, code: str) -> bool:
        """Counts one visit of a link with max_visits if one is left, atomically."""
        ...

    async def visits_left(self, code: str) -> bool: ...

    async def add_visits(self, clicks: Mapping[str, int], counts: Mapping[VisitKey, int]) -> None:
        """Adds clicks to links and counts to their visit counts, all or nothing."""
        ...

    async def visit_series(
        self, link_id: int, first_hour: int, end_hour: int, bucket_hours: int
    ) -> list[tuple[int, str, int]]:
        """(bucket, 'visits' or 'bots', count) for hours in [first_hour, end_hour)."""
        ...

    async def visit_breakdowns(
        self, link_id: int, first_hour: int, end_hour: int
    ) -> list[tuple[str, str, int]]:
        """(dimension, value, count) of human visits for hours in [first_hour, end_hour)."""
        ...

    async def purge_visits(self, before_hour: int) -> int:
        """Deletes the counts of hours before this one; how many rows went."""
        ...

    async def insert_key(self, name: str, key_hash: str, admin: bool, now: datetime) -> ApiKey: ...

    async def key_by_hash(self, key_hash: str) -> ApiKey | None:
        """The key with this hash, unless it was revoked."""
        ...

    async def touch_key(self, key_id: int, now: datetime) -> None: ...

    async def list_keys(self) -> list[KeyInfo]: ...

    async def revoke_key(self, key_id: int, now: datetime) -> bool: ...

    async def blocked_among(self, domains: list[str]) -> set[str]:
        """Those of these domains that are on the blocklist."""
        ...

    async def block_domain(self, domain: str, reason: str, now: datetime) -> BlockedDomain: ...

    async def unblock_domain(self, domain: str) -> bool: ...

    async def list_blocked(self) -> list[BlockedDomain]: ...


def make_store(settings: Settings) -> Store:
    if settings.is_sqlite:
        from shortener.store.sqlite import SqliteStore

        return SqliteStore(settings)
    from shortener.store.postgres import PostgresStore

    return PostgresStore(settings)


def migration_scripts(dialect: str) -> list[tuple[int, str]]:
    """The numbered SQL files of one dialect, in order."""
    folder = resources.files("shortener.store") / "migrations" / dialect
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text("utf-8")))
    return sorted(found)


def like_escape(text: str) -> str:
    """`text` for a LIKE pattern, matched literally (backslash is the escape character)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def folded(title: object) -> str | None:
    """A title as search compares it: in lower case, folded the same way on every store."""
    return title.lower() if isinstance(title, str) else None
