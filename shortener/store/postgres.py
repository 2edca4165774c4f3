"""PostgreSQL through an asyncpg pool: the system of record in production."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg

from shortener.config import ConfigError, Settings
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
from shortener.metrics import DB_QUERY_DURATION
from shortener.store import NO_FILTER, Inserted, VisitKey, folded, like_escape, migration_scripts
from shortener.store.breaker import StoreBreaker

# Any number will do, as long as nothing else in the database takes the same advisory lock.
_MIGRATION_LOCK = 0x5E0127
_CHANGEABLE = ("url", "expires_at", "max_visits", "redirect_status", "disabled", "title", "tags")

_LINK_COLUMNS = """id, code, url, owner_id, created_at, updated_at, expires_at, max_visits,
    redirect_status, disabled, deleted_at IS NOT NULL AS deleted, clicks, version, title, tags"""
# A search reads this many of the newest links of a listing before it turns to the index.
_SEARCH_WINDOW = 5000
# pg_trgm looks up a LIKE pattern by the trigrams of its words of three or more characters.
_TRIGRAM_WORD = re.compile(r"[^\W_]{3,}")
# The expression links_search_trgm indexes (migration 0003): the same text, or no index.
_SEARCH_TEXT = "(lower(code || E'\\n' || url) || E'\\n' || coalesce(title_folded, ''))"

# This server is gone or no longer the primary (a standby, or a primary demoted after a
# failover): every pooled connection goes, and new ones look for the primary again.
_SERVER_LOST = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.ReadOnlySQLTransactionError,
    # No host is a primary now (TargetServerAttributeNotMatched), or a connection the server
    # ended left asyncpg's protocol in a state it cannot use.
    asyncpg.InternalClientError,
)
# Seconds Pool.close() may wait for connections in use before they are dropped.
CLOSE_GRACE = 2.0
_UNAVAILABLE = (*_SERVER_LOST, asyncio.TimeoutError, asyncpg.QueryCanceledError)
# A server that answers at once that it is not the primary: no call waits on it, so the
# breaker does not count it (and the pool finds the primary on the next call).
_NOT_PRIMARY = (asyncpg.ReadOnlySQLTransactionError, asyncpg.TargetServerAttributeNotMatched)
# A pooler that keeps no session between transactions (PgBouncer in transaction mode) loses or
# mixes up the named prepared statements of asyncpg's cache, and refuses statement_timeout as a
# start-up parameter: a setting to fix, not an outage to wait out.
_STATEMENTS_LOST = (asyncpg.InvalidSQLStatementNameError, asyncpg.DuplicatePreparedStatementError)
_POOLING_NEEDED = (
    "SHORTENER_DB_TRANSACTION_POOLING must be true: the database URL leads to a pooler in "
    "transaction mode such as PgBouncer"
)


class PostgresStore:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._pool: asyncpg.Pool | None = None
        self.breaker = StoreBreaker(self._probe)

    async def open(self) -> None:
        settings = self._settings
        server_settings = {"application_name": "shortener"}
        if not settings.db_transaction_pooling:
            # PgBouncer refuses it at start-up; behind it, set it on the role instead.
            server_settings["statement_timeout"] = str(int(settings.db_statement_timeout * 1000))
        try:
            self._pool = await asyncpg.create_pool(
                settings.database_url,
                min_size=settings.db_pool_min,
                max_size=settings.db_pool_max,
                timeout=settings.db_connect_timeout,
                command_timeout=settings.db_statement_timeout,
                reset=_keep_session,
                server_settings=server_settings,
                # Named prepared statements live in one server session, which transaction
                # pooling does not keep from one transaction to the next.
                statement_cache_size=0 if settings.db_transaction_pooling else 100,
            )
        except _UNAVAILABLE as exc:
            if _refused_startup_parameter(exc) and not settings.db_transaction_pooling:
                raise ConfigError(f"{_POOLING_NEEDED} ({exc})") from exc
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc

    async def close(self) -> None:
        """Closes the pool gracefully, or after CLOSE_GRACE seconds at once: a connection
        held by stuck work would keep Pool.close() waiting forever."""
        await self.breaker.close()
        pool, self._pool = self._pool, None
        if pool is None:
            return
        closing = asyncio.ensure_future(pool.close())
        done, _ = await asyncio.wait({closing}, timeout=CLOSE_GRACE)
        if closing in done and closing.exception() is None:
            return
        closing.cancel()
        pool.terminate()

    @asynccontextmanager
    async def _connection(
        self, operation: str, *, guarded: bool = True
    ) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy[asyncpg.Record]]:
        """A pooled connection for one operation. Guarded (all but migrations and the
        breaker's probe): refused at once while the breaker is open, and given at most the
        statement timeout in all, so that a hung server cannot hold a caller longer."""
        pool = self._pool  # close() may drop it meanwhile; this connection goes back here
        if pool is None:
            raise StoreUnavailable("the store is not open")
        if guarded:
            self.breaker.check()
        started = time.perf_counter()
        deadline = self._settings.db_statement_timeout if guarded else None
        conn = None
        try:
            async with asyncio.timeout(deadline):
                conn = await pool.acquire(timeout=self._settings.db_connect_timeout)
                yield conn
        except _STATEMENTS_LOST as exc:
            if self._settings.db_transaction_pooling:
                raise
            # asyncpg appends pages of advice on PgBouncer to the server's one-line message.
            raise ConfigError(f"{_POOLING_NEEDED} ({str(exc).splitlines()[0]})") from exc
        except _UNAVAILABLE as exc:
            if conn is not None and isinstance(exc, TimeoutError):
                # No more waiting on a server that did not answer: not for the cancellation
                # of the query, not for a reset. The pool opens a new connection instead.
                conn.terminate()
            if isinstance(exc, _SERVER_LOST):
                await pool.expire_connections()
            if guarded and not isinstance(exc, _NOT_PRIMARY):
                self.breaker.failed(exc)
            raise StoreUnavailable(f"PostgreSQL is unavailable: {exc!r}") from exc
        else:
            if guarded:
                self.breaker.succeeded()
        finally:
            if conn is not None:
                await pool.release(conn)
            DB_QUERY_DURATION.labels(operation).observe(time.perf_counter() - started)

    async def _probe(self) -> None:
        async with (
            self._connection("probe", guarded=False) as conn,
            asyncio.timeout(self._settings.db_connect_timeout),
        ):
            await conn.fetchval("SELECT 1")

    def pool_stats(self) -> tuple[int, int]:
        if self._pool is None:
            return 0, 0
        idle = self._pool.get_idle_size()
        return self._pool.get_size() - idle, idle

    async def migrate(self) -> list[int]:
        applied = []
        async with self._connection("migrate", guarded=False) as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                    version integer PRIMARY KEY,
                    applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done = {row[0] for row in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, sql in migration_scripts("postgres"):
                if version not in done:
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version) VALUES ($1)", version
                    )
                    applied.append(version)
        return applied

    async def ping(self) -> None:
        async with self._connection("ping") as conn:
            await conn.fetchval("SELECT 1")

    async def insert_link(
        self,
        code: str,
        new: NewLink,
        owner_id: int | None,
        now: datetime,
        unless_blocked: Sequence[str] = (),
    ) -> Link:
        # The blocklist is read in the statement that writes: one round trip for a create.
        async with self._connection("insert_link") as conn:
            try:
                row = await conn.fetchrow(
                    f"""INSERT INTO links (code, url, owner_id, created_at, updated_at,
                            expires_at, max_visits, redirect_status, title, title_folded, tags)
                        SELECT $1::text, $2::text, $3::bigint, $4::timestamptz,
                               $4::timestamptz, $5::timestamptz, $6::bigint, $7::smallint,
                               $8::text, $9::text, $10::text[]
                        WHERE NOT EXISTS (SELECT 1 FROM blocked_domains
                                          WHERE domain = ANY($11::text[]))
                        RETURNING {_LINK_COLUMNS}""",
                    code,
                    new.url,
                    owner_id,
                    now,
                    new.expires_at,
                    new.max_visits,
                    new.redirect_status,
                    new.title,
                    folded(new.title),
                    list(new.tags),
                    list(unless_blocked),
                )
            except asyncpg.UniqueViolationError:
                raise CodeTaken(code) from None
        if row is None:
            raise DomainBlocked(new.url)
        return _link(row)

    async def insert_links(
        self,
        rows: list[tuple[str, NewLink]],
        owner_id: int | None,
        now: datetime,
        unless_blocked: Sequence[Sequence[str]] = (),
    ) -> Inserted:
        news = [new for _, new in rows]
        domains = [",".join(each) for each in unless_blocked] or [""] * len(rows)
        # One statement reads the blocklist for every row and writes the rest; the codes
        # it refused come back on every row (and on one row of nulls when none was made).
        async with self._connection("insert_links") as conn:
            made = await conn.fetch(
                f"""WITH b AS MATERIALIZED (
                        SELECT u.*, EXISTS (SELECT 1 FROM blocked_domains
                                            WHERE domain = ANY(string_to_array(u.domains, ',')))
                                    AS blocked
                        FROM unnest($3::text[], $4::text[], $5::timestamptz[], $6::bigint[],
                                    $7::smallint[], $8::text[], $9::text[], $10::text[],
                                    $11::text[])
                             WITH ORDINALITY AS u(code, url, expires_at, max_visits,
                                                  redirect_status, title, title_folded, tags,
                                                  domains, n)),
                    made AS (
                        INSERT INTO links (code, url, owner_id, created_at, updated_at,
                            expires_at, max_visits, redirect_status, title, title_folded, tags)
                        SELECT b.code, b.url, $1, $2, $2, b.expires_at, b.max_visits,
                               b.redirect_status, b.title, b.title_folded,
                               string_to_array(b.tags, ',')
                        FROM b WHERE NOT b.blocked ORDER BY b.n
                        ON CONFLICT (code) DO NOTHING
                        RETURNING {_LINK_COLUMNS})
                    SELECT made.*, refused.codes AS blocked_codes
                    FROM (SELECT array_agg(code) AS codes FROM b WHERE blocked) AS refused
                    LEFT JOIN made ON true""",
                owner_id,
                now,
                [code for code, _ in rows],
                [new.url for new in news],
                [new.expires_at for new in news],
                [new.max_visits for new in news],
                [new.redirect_status for new in news],
                [new.title for new in news],
                [folded(new.title) for new in news],
                # Tags and domains hold no commas: one string per row keeps arrays flat.
                [",".join(new.tags) for new in news],
                domains,
            )
        blocked = set(made[0]["blocked_codes"] or []) if made else set()
        links = {row["code"]: _link(row) for row in made if row["id"] is not None}
        return Inserted(links, blocked)

    async def import_links(self, links: list[Link], owner_id: int) -> dict[str, Link]:
        async with self._connection("import_links") as conn:
            made = await conn.fetch(
                f"""INSERT INTO links (code, url, owner_id, created_at, updated_at, expires_at,
                        max_visits, redirect_status, disabled, deleted_at, clicks, title,
                        title_folded, tags)
                    SELECT b.code, b.url, $1, b.created_at, b.updated_at, b.expires_at,
                           b.max_visits, b.redirect_status, b.disabled,
                           CASE WHEN b.deleted THEN b.updated_at END, b.clicks, b.title,
                           b.title_folded, string_to_array(b.tags, ',')
                    FROM unnest($2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[],
                                $6::timestamptz[], $7::bigint[], $8::smallint[], $9::boolean[],
                                $10::boolean[], $11::bigint[], $12::text[], $13::text[],
                                $14::text[])
                         WITH ORDINALITY AS b(code, url, created_at, updated_at, expires_at,
                                              max_visits, redirect_status, disabled, deleted,
                                              clicks, title, title_folded, tags, n)
                    ORDER BY b.n
                    ON CONFLICT (code) DO NOTHING
                    RETURNING {_LINK_COLUMNS}""",
                owner_id,
                [link.code for link in links],
                [link.url for link in links],
                [link.created_at for link in links],
                [link.updated_at for link in links],
                [link.expires_at for link in links],
                [link.max_visits for link in links],
                [link.redirect_status for link in links],
                [link.disabled for link in links],
                [link.deleted for link in links],
                [link.clicks for link in links],
                [link.title for link in links],
                [folded(link.title) for link in links],
                [",".join(link.tags) for link in links],
            )
        return {row["code"]: _link(row) for row in made}

    async def links_by_code(self, codes: list[str]) -> dict[str, Link]:
        async with self._connection("links_by_code") as conn:
            rows = await conn.fetch(
                f"SELECT {_LINK_COLUMNS} FROM links WHERE code = ANY($1::text[])", codes
            )
        return {row["code"]: _link(row) for row in rows}

    async def export_links(self, after_id: int, limit: int) -> list[Link]:
        async with self._connection("export_links") as conn:
            rows = await conn.fetch(
                f"SELECT {_LINK_COLUMNS} FROM links WHERE id > $1 ORDER BY id LIMIT $2",
                after_id,
                limit,
            )
        return [_link(row) for row in rows]

    async def get_link(self, code: str) -> Link | None:
        async with self._connection("get_link") as conn:
            row = await conn.fetchrow(f"SELECT {_LINK_COLUMNS} FROM links WHERE code = $1", code)
        return _link(row) if row else None

    async def codes(self) -> list[str]:
        # Read in the background, and a large table takes longer than a request's statement
        # may: unguarded, with a timeout of its own.
        async with self._connection("codes", guarded=False) as conn, conn.transaction():
            await conn.execute("SET LOCAL statement_timeout = '60s'")
            rows = await conn.fetch("SELECT code FROM links", timeout=60)
        return [row[0] for row in rows]

    async def update_link(self, code: str, changes: LinkChanges, now: datetime) -> Link | None:
        values = changes.values
        flags_and_values: list[Any] = []
        for name in _CHANGEABLE:
            value: Any = values.get(name)
            if name == "tags" and value is not None:
                value = list(value)
            flags_and_values += [name in values, value]
        flags_and_values += ["title" in values, folded(values.get("title"))]
        async with self._connection("update_link") as conn:
            row = await conn.fetchrow(
                f"""UPDATE links SET
                        url = CASE WHEN $2 THEN $3 ELSE url END,
                        expires_at = CASE WHEN $4 THEN $5 ELSE expires_at END,
                        max_visits = CASE WHEN $6 THEN $7 ELSE max_visits END,
                        redirect_status = CASE WHEN $8 THEN $9 ELSE redirect_status END,
                        disabled = CASE WHEN $10 THEN $11 ELSE disabled END,
                        title = CASE WHEN $12 THEN $13 ELSE title END,
                        tags = CASE WHEN $14 THEN $15::text[] ELSE tags END,
                        title_folded = CASE WHEN $16 THEN $17 ELSE title_folded END,
                        updated_at = $18,
                        version = version + 1
                    WHERE code = $1 AND deleted_at IS NULL
                    RETURNING {_LINK_COLUMNS}""",
                code,
                *flags_and_values,
                now,
            )
        return _link(row) if row else None

    async def delete_link(self, code: str, now: datetime) -> Link | None:
        async with self._connection("delete_link") as conn:
            row = await conn.fetchrow(
                f"""UPDATE links SET deleted_at = $2, updated_at = $2, version = version + 1
                    WHERE code = $1 AND deleted_at IS NULL
                    RETURNING {_LINK_COLUMNS}""",
                code,
                now,
            )
        return _link(row) if row else None

    async def list_links(
        self,
        owner_id: int | None,
        before_id: int | None,
        limit: int,
        where: LinkFilter = NO_FILTER,
    ) -> list[Link]:
        before = before_id if before_id is not None else 2**63 - 1
        listing = _Conditions(["deleted_at IS NULL"], [])
        if owner_id is not None:
            listing.add("owner_id = {}", owner_id)
        if where.tags:
            listing.add("tags @> {}::text[]", list(where.tags))
        async with self._connection("list_links") as conn:
            if where.text is None:
                rows = await conn.fetch(*listing.page(before, limit))
            else:
                rows = await _search(conn, listing, where.text, before, limit)
        return [_link(row) for row in rows]

    async def add_visits(self, clicks: Mapping[str, int], counts: Mapping[VisitKey, int]) -> None:
        # Sorted, so that workers flushing at once lock rows in the same order.
        codes = sorted(clicks)
        keys = sorted(counts)
        async with self._connection("add_visits") as conn:
            try:
                # One statement: the clicks and the counts of the same visits commit together.
                await conn.execute(
                    """WITH clicked AS (
                           UPDATE links SET clicks = links.clicks + batch.n
                           FROM unnest($1::text[], $2::bigint[]) AS batch(code, n)
                           WHERE links.code = batch.code
                       )
                       INSERT INTO visit_counts AS counted (link_id, hour, dimension, value, count)
                       SELECT links.id, batch.hour, batch.dimension, batch.value, batch.n
                       FROM unnest($3::text[], $4::bigint[], $5::text[], $6::text[], $7::bigint[])
                            AS batch(code, hour, dimension, value, n)
                       JOIN links ON links.code = batch.code
                       ON CONFLICT (link_id, hour, dimension, value)
                       DO UPDATE SET count = counted.count + EXCLUDED.count""",
                    codes,
                    [clicks[code] for code in codes],
                    [key[0] for key in keys],
                    [key[1] for key in keys],
                    [key[2] for key in keys],
                    [key[3] for key in keys],
                    [counts[key] for key in keys],
                )
            except asyncpg.DeadlockDetectedError as exc:
                raise StoreUnavailable(
                    f"deadlock, the counts are written next time: {exc}"
                ) from exc

    async def visit_series(
        self, link_id: int, first_hour: int, end_hour: int, bucket_hours: int
    ) -> list[tuple[int, str, int]]:
        async with self._connection("visit_series") as conn:
            rows = await conn.fetch(
                """SELECT hour / $4 AS bucket, value, sum(count)::bigint AS n FROM visit_counts
                   WHERE link_id = $1 AND dimension = 'total' AND hour >= $2 AND hour < $3
                   GROUP BY bucket, value""",
                link_id,
                first_hour,
                end_hour,
                bucket_hours,
            )
        return [(row["bucket"], row["value"], row["n"]) for row in rows]

    async def visit_breakdowns(
        self, link_id: int, first_hour: int, end_hour: int
    ) -> list[tuple[str, str, int]]:
        async with self._connection("visit_breakdowns") as conn:
            rows = await conn.fetch(
                """SELECT dimension, value, sum(count)::bigint AS n FROM visit_counts
                   WHERE link_id = $1 AND dimension <> 'total' AND hour >= $2 AND hour < $3
                   GROUP BY dimension, value""",
                link_id,
                first_hour,
                end_hour,
            )
        return [(row["dimension"], row["value"], row["n"]) for row in rows]

    async def purge_visits(self, before_hour: int) -> int:
        async with self._connection("purge_visits") as conn:
            status = await conn.execute("DELETE FROM visit_counts WHERE hour < $1", before_hour)
        return int(status.split()[-1])

    async def take_visit(self, code: str) -> bool:
        async with self._connection("take_visit") as conn:
            status = await conn.execute(
                """UPDATE links SET clicks = clicks + 1
                   WHERE code = $1 AND (max_visits IS NULL OR clicks < max_visits)""",
                code,
            )
        return bool(status == "UPDATE 1")

    async def visits_left(self, code: str) -> bool:
        async with self._connection("visits_left") as conn:
            left = await conn.fetchval(
                "SELECT max_visits IS NULL OR clicks < max_visits FROM links WHERE code = $1",
                code,
            )
        return bool(left)

    async def insert_key(self, name: str, key_hash: str, admin: bool, now: datetime) -> ApiKey:
        async with self._connection("insert_key") as conn:
            key_id = await conn.fetchval(
                """INSERT INTO api_keys (name, key_hash, admin, created_at)
                   VALUES ($1, $2, $3, $4) RETURNING id""",
                name,
                key_hash,
                admin,
                now,
            )
        return ApiKey(id=key_id, name=name, admin=admin)

    async def key_by_hash(self, key_hash: str) -> ApiKey | None:
        async with self._connection("key_by_hash") as conn:
            row = await conn.fetchrow(
                """SELECT id, name, admin FROM api_keys
                   WHERE key_hash = $1 AND revoked_at IS NULL""",
                key_hash,
            )
        return ApiKey(id=row["id"], name=row["name"], admin=row["admin"]) if row else None

    async def touch_key(self, key_id: int, now: datetime) -> None:
        async with self._connection("touch_key") as conn:
            await conn.execute("UPDATE api_keys SET last_used_at = $2 WHERE id = $1", key_id, now)

    async def list_keys(self) -> list[KeyInfo]:
        async with self._connection("list_keys") as conn:
            rows = await conn.fetch(
                """SELECT id, name, admin, created_at, last_used_at,
                          revoked_at IS NOT NULL AS revoked
                   FROM api_keys ORDER BY id"""
            )
        return [KeyInfo(**dict(row.items())) for row in rows]

    async def revoke_key(self, key_id: int, now: datetime) -> bool:
        async with self._connection("revoke_key") as conn:
            status = await conn.execute(
                "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                key_id,
                now,
            )
        return bool(status == "UPDATE 1")

    async def blocked_among(self, domains: list[str]) -> set[str]:
        async with self._connection("blocked_among") as conn:
            rows = await conn.fetch(
                "SELECT domain FROM blocked_domains WHERE domain = ANY($1::text[])", domains
            )
        return {row[0] for row in rows}

    async def block_domain(self, domain: str, reason: str, now: datetime) -> BlockedDomain:
        async with self._connection("block_domain") as conn:
            row = await conn.fetchrow(
                """INSERT INTO blocked_domains (domain, reason, created_at) VALUES ($1, $2, $3)
                   ON CONFLICT (domain) DO UPDATE SET reason = EXCLUDED.reason
                   RETURNING domain, reason, created_at""",
                domain,
                reason,
                now,
            )
        assert row is not None
        return BlockedDomain(**dict(row.items()))

    async def unblock_domain(self, domain: str) -> bool:
        async with self._connection("unblock_domain") as conn:
            status = await conn.execute("DELETE FROM blocked_domains WHERE domain = $1", domain)
        return bool(status == "DELETE 1")

    async def list_blocked(self) -> list[BlockedDomain]:
        async with self._connection("list_blocked") as conn:
            rows = await conn.fetch(
                "SELECT domain, reason, created_at FROM blocked_domains ORDER BY domain"
            )
        return [BlockedDomain(**dict(row.items())) for row in rows]


class _Conditions:
    """A WHERE clause and its parameters, numbered as they are added."""

    def __init__(self, clauses: list[str], params: list[Any]) -> None:
        self.clauses = clauses
        self.params = params

    def add(self, clause: str, value: Any) -> None:
        self.params.append(value)
        self.clauses.append(clause.format(f"${len(self.params)}"))

    def but(self, clause: str, value: Any) -> _Conditions:
        more = _Conditions(list(self.clauses), list(self.params))
        more.add(clause, value)
        return more

    @property
    def sql(self) -> str:
        return " AND ".join(self.clauses)

    def page(self, before: int, limit: int) -> tuple[Any, ...]:
        """The newest `limit` rows older than `before`, read along the primary key."""
        where = self.but("id < {}", before)
        return (
            f"""SELECT {_LINK_COLUMNS} FROM links WHERE {where.sql}
                ORDER BY id DESC LIMIT {int(limit)}""",
            *where.params,
        )


async def _search(
    conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record],
    listing: _Conditions,
    text: str,
    before: int,
    limit: int,
) -> list[asyncpg.Record]:
    """A page of the links whose code, url or title holds `text`.

    The planner cannot tell how many links LIKE '%text%' matches, and guesses wrong both
    ways (a scan of every link for a rare text, a sort of every link for a common one). So
    the newest links of the listing are read first, where a common text fills the page, and
    the links older than those through the trigram index, which is quick for a rare text.
    """
    pattern = f"%{like_escape(text.lower())}%"
    recent = listing.but("id < {}", before)
    # The match is computed in the select list, where no index can be chosen for it.
    newest = await conn.fetch(
        f"""SELECT id, {_SEARCH_TEXT} LIKE ${len(recent.params) + 1} AS hit FROM links
            WHERE {recent.sql} ORDER BY id DESC LIMIT {_SEARCH_WINDOW}""",
        *recent.params,
        pattern,
    )
    hits = [row["id"] for row in newest if row["hit"]][:limit]
    found: list[asyncpg.Record] = []
    if hits:
        found += await conn.fetch(
            f"SELECT {_LINK_COLUMNS} FROM links WHERE id = ANY($1::bigint[]) ORDER BY id DESC",
            hits,
        )
    if len(found) == limit or len(newest) < _SEARCH_WINDOW:
        return found
    older = listing.but("id < {}", newest[-1]["id"]).but(f"{_SEARCH_TEXT} LIKE {{}}", pattern)
    if not _TRIGRAM_WORD.search(text):
        # No word of three letters or digits: the index holds nothing to look up.
        return found + await conn.fetch(*older.page(2**63 - 1, limit - len(found)))
    # MATERIALIZED, with no order or limit inside: the matches come from the trigram index.
    found += await conn.fetch(
        f"""WITH hits AS MATERIALIZED (SELECT id FROM links WHERE {older.sql})
            SELECT {_LINK_COLUMNS} FROM links
            WHERE id IN (SELECT id FROM hits ORDER BY id DESC LIMIT {int(limit - len(found))})
            ORDER BY id DESC""",
        *older.params,
    )
    return found


def _refused_startup_parameter(exc: BaseException) -> bool:
    """PgBouncer's answer to a start-up parameter it does not pass on (statement_timeout)."""
    return isinstance(exc, asyncpg.ProtocolViolationError) and "startup parameter" in str(exc)


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Skips asyncpg's reset query on every release (RESET ALL, UNLISTEN, unlock all...):
    the store leaves no session state behind, and on the miss path that query cost more
    than the lookup it followed."""


def _link(row: asyncpg.Record) -> Link:
    fields = dict(row.items())
    fields.pop("blocked_codes", None)
    fields["tags"] = tuple(fields["tags"])
    return Link(**fields)
