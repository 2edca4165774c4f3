"""SQLite through aiosqlite: the embedded default, so the first command works on a bare machine."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import aiosqlite
import orjson

from shortener.config import Settings
from shortener.errors import CodeTaken, DomainBlocked, StoreUnavailable
from shortener.links.model import (
    ApiKey,
    BlockedDomain,
    KeyInfo,
    Link,
    LinkChanges,
    LinkFilter,
    NewLink,
)
from shortener.store import NO_FILTER, Inserted, VisitKey, folded, like_escape, migration_scripts

_LINK_COLUMNS = """id, code, url, owner_id, created_at, updated_at, expires_at, max_visits,
    redirect_status, disabled, deleted_at IS NOT NULL AS deleted, clicks, version, title, tags"""
_CHANGEABLE = ("url", "expires_at", "max_visits", "redirect_status", "disabled", "title", "tags")


class SqliteStore:
    # A local file does not hang the way a partitioned server does.
    breaker = None

    def __init__(self, settings: Settings) -> None:
        self._path = settings.sqlite_path
        self._db: aiosqlite.Connection | None = None
        self._writer: aiosqlite.Connection | None = None

    async def open(self) -> None:
        self._db = await self._connect()
        self._writer = await self._connect()

    async def _connect(self) -> aiosqlite.Connection:
        try:
            # isolation_level None: each statement commits on its own unless we say BEGIN.
            db = await aiosqlite.connect(self._path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite file {self._path}: {exc}") from exc
        db.row_factory = sqlite3.Row
        # WAL lets several workers read while one writes; writers wait instead of failing.
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA busy_timeout=5000")
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute("PRAGMA foreign_keys=ON")
        return db

    async def close(self) -> None:
        for db in (self._db, self._writer):
            if db is not None:
                await db.close()
        self._db = self._writer = None

    def pool_stats(self) -> tuple[int, int]:
        """One connection, never held between statements."""
        return 0, 1 if self._db is not None else 0

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreUnavailable("the store is not open")
        return self._db

    @property
    def writer(self) -> aiosqlite.Connection:
        if self._writer is None:
            raise StoreUnavailable("the store is not open")
        return self._writer

    async def migrate(self) -> list[int]:
        db = self.db
        applied = []
        # BEGIN IMMEDIATE takes the write lock first, so concurrent starts apply each step once.
        await db.execute("BEGIN IMMEDIATE")
        try:
            await db.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                    version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"""
            )
            async with db.execute("SELECT version FROM schema_migrations") as cursor:
                done = {row[0] for row in await cursor.fetchall()}
            for version, sql in migration_scripts("sqlite"):
                if version not in done:
                    # One by one inside this transaction: executescript would commit it first.
                    for statement in statements(sql):
                        await db.execute(statement)
                    await db.execute(
                        "INSERT INTO schema_migrations VALUES (?, ?)",
                        (version, _epoch(datetime.now(UTC))),
                    )
                    applied.append(version)
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        return applied

    async def ping(self) -> None:
        try:
            await self.db.execute("SELECT 1")
        except sqlite3.Error as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def insert_link(
        self,
        code: str,
        new: NewLink,
        owner_id: int | None,
        now: datetime,
        unless_blocked: Sequence[str] = (),
    ) -> Link:
        # In-process: asking first costs no round trip.
        if unless_blocked and await self.blocked_among(list(unless_blocked)):
            raise DomainBlocked(new.url)
        made = (await self.insert_links([(code, new)], owner_id, now)).made
        if code not in made:
            raise CodeTaken(code)
        return made[code]

    async def insert_links(
        self,
        rows: list[tuple[str, NewLink]],
        owner_id: int | None,
        now: datetime,
        unless_blocked: Sequence[Sequence[str]] = (),
    ) -> Inserted:
        refused: set[str] = set()
        if unless_blocked:
            # In-process: asking first costs no round trip.
            listed = await self.blocked_among(sorted({d for each in unless_blocked for d in each}))
            refused = {
                code
                for (code, _), domains in zip(rows, unless_blocked, strict=True)
                if listed.intersection(domains)
            }
            rows = [(code, new) for code, new in rows if code not in refused]
        batch = [
            [
                code,
                new.url,
                _epoch(new.expires_at),
                new.max_visits,
                new.redirect_status,
                new.title,
                folded(new.title),
                _tags_json(new.tags),
            ]
            for code, new in rows
        ]
        # One statement: the batch commits atomically, outside any transaction that other
        # coroutines sharing this connection could fall into. WHERE true lets ON CONFLICT parse.
        async with self.db.execute(
            f"""INSERT INTO links (code, url, owner_id, created_at, updated_at, expires_at,
                    max_visits, redirect_status, title, title_folded, tags)
                SELECT value ->> 0, value ->> 1, ?, ?, ?, value ->> 2, value ->> 3,
                       value ->> 4, value ->> 5, value ->> 6, value ->> 7
                FROM json_each(?) WHERE true ORDER BY key
                ON CONFLICT (code) DO NOTHING
                RETURNING {_LINK_COLUMNS}""",
            (owner_id, _epoch(now), _epoch(now), orjson.dumps(batch).decode()),
        ) as cursor:
            made = await cursor.fetchall()
        return Inserted({row["code"]: _link(row) for row in made}, refused)

    async def import_links(self, links: list[Link], owner_id: int) -> dict[str, Link]:
        batch = [
            [
                link.code,
                link.url,
                _epoch(link.created_at),
                _epoch(link.updated_at),
                _epoch(link.expires_at),
                link.max_visits,
                link.redirect_status,
                int(link.disabled),
                _epoch(link.updated_at) if link.deleted else None,
                link.clicks,
                link.title,
                folded(link.title),
                _tags_json(link.tags),
            ]
            for link in links
        ]
        async with self.db.execute(
            f"""INSERT INTO links (code, url, owner_id, created_at, updated_at, expires_at,
                    max_visits, redirect_status, disabled, deleted_at, clicks, title,
                    title_folded, tags)
                SELECT value ->> 0, value ->> 1, ?, value ->> 2, value ->> 3, value ->> 4,
                       value ->> 5, value ->> 6, value ->> 7, value ->> 8, value ->> 9,
                       value ->> 10, value ->> 11, value ->> 12
                FROM json_each(?) WHERE true ORDER BY key
                ON CONFLICT (code) DO NOTHING
                RETURNING {_LINK_COLUMNS}""",
            (owner_id, orjson.dumps(batch).decode()),
        ) as cursor:
            made = await cursor.fetchall()
        return {row["code"]: _link(row) for row in made}

    async def links_by_code(self, codes: list[str]) -> dict[str, Link]:
        async with self.db.execute(
            f"""SELECT {_LINK_COLUMNS} FROM links
                WHERE code IN (SELECT value FROM json_each(?))""",
            (orjson.dumps(codes).decode(),),
        ) as cursor:
            rows = await cursor.fetchall()
        return {row["code"]: _link(row) for row in rows}

    async def export_links(self, after_id: int, limit: int) -> list[Link]:
        async with self.db.execute(
            f"SELECT {_LINK_COLUMNS} FROM links WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        ) as cursor:
            rows = await cursor.fetchall()
        return [_link(row) for row in rows]

    async def get_link(self, code: str) -> Link | None:
        async with self.db.execute(
            f"SELECT {_LINK_COLUMNS} FROM links WHERE code = ?", (code,)
        ) as cursor:
            row = await cursor.fetchone()
        return _link(row) if row else None

    async def codes(self) -> list[str]:
        async with self.db.execute("SELECT code FROM links") as cursor:
            return [row[0] for row in await cursor.fetchall()]

    async def update_link(self, code: str, changes: LinkChanges, now: datetime) -> Link | None:
        params: list[Any] = []
        for name in _CHANGEABLE:
            value = changes.values.get(name)
            if name == "expires_at":
                value = _epoch(value)
            elif name == "tags":
                value = _tags_json(value) if value is not None else None
            params += [name in changes.values, value]
        params += ["title" in changes.values, folded(changes.values.get("title"))]
        async with self.db.execute(
            f"""UPDATE links SET
                    url = CASE WHEN ? THEN ? ELSE url END,
                    expires_at = CASE WHEN ? THEN ? ELSE expires_at END,
                    max_visits = CASE WHEN ? THEN ? ELSE max_visits END,
                    redirect_status = CASE WHEN ? THEN ? ELSE redirect_status END,
                    disabled = CASE WHEN ? THEN ? ELSE disabled END,
                    title = CASE WHEN ? THEN ? ELSE title END,
                    tags = CASE WHEN ? THEN ? ELSE tags END,
                    title_folded = CASE WHEN ? THEN ? ELSE title_folded END,
                    updated_at = ?,
                    version = version + 1
                WHERE code = ? AND deleted_at IS NULL
                RETURNING {_LINK_COLUMNS}""",
            (*params, _epoch(now), code),
        ) as cursor:
            row = await cursor.fetchone()
        return _link(row) if row else None

    async def delete_link(self, code: str, now: datetime) -> Link | None:
        async with self.db.execute(
            f"""UPDATE links SET deleted_at = ?, updated_at = ?, version = version + 1
                WHERE code = ? AND deleted_at IS NULL
                RETURNING {_LINK_COLUMNS}""",
            (_epoch(now), _epoch(now), code),
        ) as cursor:
            row = await cursor.fetchone()
        return _link(row) if row else None

    async def list_links(
        self,
        owner_id: int | None,
        before_id: int | None,
        limit: int,
        where: LinkFilter = NO_FILTER,
    ) -> list[Link]:
        conditions = ["deleted_at IS NULL", "id < ?"]
        params: list[Any] = [before_id if before_id is not None else 2**63 - 1]
        if owner_id is not None:
            conditions.append("owner_id = ?")
            params.append(owner_id)
        if where.text is not None:
            # LIKE folds ASCII only: codes and urls are ASCII, titles are matched folded.
            n = len(params) + 1
            conditions.append(
                f"(code LIKE ?{n} ESCAPE '\\' OR url LIKE ?{n} ESCAPE '\\'"
                f" OR title_folded LIKE ?{n} ESCAPE '\\')"
            )
            params.append(f"%{like_escape(where.text.lower())}%")
        # Tags are stored as compact JSON of a-z 0-9 _ - only: '"tag"' occurs in the text
        # exactly when the tag is in the list, and instr() is far cheaper than json_each.
        for tag in where.tags:
            conditions.append("instr(tags, ?) > 0")
            params.append(f'"{tag}"')
        query = f"""SELECT {_LINK_COLUMNS} FROM links WHERE {" AND ".join(conditions)}
                    ORDER BY id DESC LIMIT ?"""
        async with self.db.execute(query, (*params, limit)) as cursor:
            rows = await cursor.fetchall()
        return [_link(row) for row in rows]

    async def add_visits(self, clicks: Mapping[str, int], counts: Mapping[VisitKey, int]) -> None:
        # A connection of its own, used by nothing else: its transaction cannot take in the
        # statements of other coroutines, so clicks and counts commit together or not at all.
        db = self.writer
        try:
            await db.execute("BEGIN IMMEDIATE")
            try:
                await db.execute(
                    """UPDATE links SET clicks = clicks + batch.n
                       FROM (SELECT json_extract(value, '$[0]') AS code,
                                    json_extract(value, '$[1]') AS n
                             FROM json_each(?)) AS batch
                       WHERE links.code = batch.code""",
                    (orjson.dumps(list(clicks.items())).decode(),),
                )
                await db.execute(
                    """INSERT INTO visit_counts (link_id, hour, dimension, value, count)
                       SELECT links.id, json_extract(batch.value, '$[1]'),
                              json_extract(batch.value, '$[2]'), json_extract(batch.value, '$[3]'),
                              json_extract(batch.value, '$[4]')
                       FROM json_each(?) AS batch
                       JOIN links ON links.code = json_extract(batch.value, '$[0]')
                       WHERE true
                       ON CONFLICT (link_id, hour, dimension, value)
                       DO UPDATE SET count = visit_counts.count + excluded.count""",
                    (orjson.dumps([[*key, count] for key, count in counts.items()]).decode(),),
                )
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite could not write the visits: {exc}") from exc

    async def visit_series(
        self, link_id: int, first_hour: int, end_hour: int, bucket_hours: int
    ) -> list[tuple[int, str, int]]:
        async with self.db.execute(
            """SELECT hour / ? AS bucket, value, sum(count) FROM visit_counts
               WHERE link_id = ? AND dimension = 'total' AND hour >= ? AND hour < ?
               GROUP BY bucket, value""",
            (bucket_hours, link_id, first_hour, end_hour),
        ) as cursor:
            rows = await cursor.fetchall()
        return [(bucket, value, count) for bucket, value, count in rows]

    async def visit_breakdowns(
        self, link_id: int, first_hour: int, end_hour: int
    ) -> list[tuple[str, str, int]]:
        async with self.db.execute(
            """SELECT dimension, value, sum(count) FROM visit_counts
               WHERE link_id = ? AND dimension <> 'total' AND hour >= ? AND hour < ?
               GROUP BY dimension, value""",
            (link_id, first_hour, end_hour),
        ) as cursor:
            rows = await cursor.fetchall()
        return [(dimension, value, count) for dimension, value, count in rows]

    async def purge_visits(self, before_hour: int) -> int:
        cursor = await self.db.execute("DELETE FROM visit_counts WHERE hour < ?", (before_hour,))
        return int(cursor.rowcount)

    async def take_visit(self, code: str) -> bool:
        cursor = await self.db.execute(
            """UPDATE links SET clicks = clicks + 1
               WHERE code = ? AND (max_visits IS NULL OR clicks < max_visits)""",
            (code,),
        )
        return bool(cursor.rowcount == 1)

    async def visits_left(self, code: str) -> bool:
        async with self.db.execute(
            "SELECT max_visits IS NULL OR clicks < max_visits FROM links WHERE code = ?", (code,)
        ) as cursor:
            row = await cursor.fetchone()
        return bool(row and row[0])

    async def insert_key(self, name: str, key_hash: str, admin: bool, now: datetime) -> ApiKey:
        cursor = await self.db.execute(
            "INSERT INTO api_keys (name, key_hash, admin, created_at) VALUES (?, ?, ?, ?)",
            (name, key_hash, admin, _epoch(now)),
        )
        assert cursor.lastrowid is not None
        return ApiKey(id=cursor.lastrowid, name=name, admin=admin)

    async def key_by_hash(self, key_hash: str) -> ApiKey | None:
        async with self.db.execute(
            "SELECT id, name, admin FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL",
            (key_hash,),
        ) as cursor:
            row = await cursor.fetchone()
        return ApiKey(id=row["id"], name=row["name"], admin=bool(row["admin"])) if row else None

    async def touch_key(self, key_id: int, now: datetime) -> None:
        await self.db.execute(
            "UPDATE api_keys SET last_used_at = ? WHERE id = ?", (_epoch(now), key_id)
        )

    async def list_keys(self) -> list[KeyInfo]:
        async with self.db.execute(
            """SELECT id, name, admin, created_at, last_used_at, revoked_at IS NOT NULL
               FROM api_keys ORDER BY id"""
        ) as cursor:
            rows = await cursor.fetchall()
        keys = []
        for key_id, name, admin, created_at, last_used_at, revoked in rows:
            created = _time(created_at)
            assert created is not None
            keys.append(
                KeyInfo(key_id, name, bool(admin), created, _time(last_used_at), bool(revoked))
            )
        return keys

    async def revoke_key(self, key_id: int, now: datetime) -> bool:
        cursor = await self.db.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (_epoch(now), key_id),
        )
        return bool(cursor.rowcount == 1)

    async def blocked_among(self, domains: list[str]) -> set[str]:
        async with self.db.execute(
            "SELECT domain FROM blocked_domains WHERE domain IN (SELECT value FROM json_each(?))",
            (orjson.dumps(domains).decode(),),
        ) as cursor:
            rows = await cursor.fetchall()
        return {row[0] for row in rows}

    async def block_domain(self, domain: str, reason: str, now: datetime) -> BlockedDomain:
        async with self.db.execute(
            """INSERT INTO blocked_domains (domain, reason, created_at) VALUES (?, ?, ?)
               ON CONFLICT (domain) DO UPDATE SET reason = excluded.reason
               RETURNING domain, reason, created_at""",
            (domain, reason, _epoch(now)),
        ) as cursor:
            row = await cursor.fetchone()
        assert row is not None
        created = _time(row["created_at"])
        assert created is not None
        return BlockedDomain(row["domain"], row["reason"], created)

    async def unblock_domain(self, domain: str) -> bool:
        cursor = await self.db.execute("DELETE FROM blocked_domains WHERE domain = ?", (domain,))
        return bool(cursor.rowcount == 1)

    async def list_blocked(self) -> list[BlockedDomain]:
        async with self.db.execute(
            "SELECT domain, reason, created_at FROM blocked_domains ORDER BY domain"
        ) as cursor:
            rows = await cursor.fetchall()
        blocked = []
        for domain, reason, created_at in rows:
            created = _time(created_at)
            assert created is not None
            blocked.append(BlockedDomain(domain, reason, created))
        return blocked


def statements(script: str) -> Iterator[str]:
    """The statements of an SQL script, each cut at the ``;`` that ends it, never at one in a
    comment, a string literal or a trigger's body (sqlite3.complete_statement tells which)."""
    start = 0
    for end, char in enumerate(script):
        if char == ";" and sqlite3.complete_statement(script[start : end + 1]):
            yield script[start : end + 1]
            start = end + 1
    if script[start:].strip():  # the last statement may lack its ';', or be a comment
        yield script[start:]


def _epoch(moment: Any) -> float | None:
    return moment.timestamp() if isinstance(moment, datetime) else None


def _time(seconds: float | None) -> datetime | None:
    return datetime.fromtimestamp(seconds, UTC) if seconds is not None else None


def _link(row: sqlite3.Row) -> Link:
    created_at = _time(row["created_at"])
    updated_at = _time(row["updated_at"])
    assert created_at is not None and updated_at is not None
    return Link(
        id=row["id"],
        code=row["code"],
        url=row["url"],
        owner_id=row["owner_id"],
        created_at=created_at,
        updated_at=updated_at,
        expires_at=_time(row["expires_at"]),
        max_visits=row["max_visits"],
        redirect_status=row["redirect_status"],
        disabled=bool(row["disabled"]),
        deleted=bool(row["deleted"]),
        clicks=row["clicks"],
        version=row["version"],
        title=row["title"],
        tags=tuple(orjson.loads(row["tags"])),
    )


def _tags_json(tags: Any) -> str:
    return orjson.dumps(list(tags)).decode()
