"""The SQLite store's migration runner: whole statements, one transaction for all."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from shortener.config import Settings
from shortener.store import sqlite as sqlite_store
from shortener.store.sqlite import SqliteStore, statements

# A ';' in a line comment, a block comment, string literals and a trigger's body: none ends
# a statement. The last statement has no ';' of its own.
MIGRATION = """-- notes; the first table with a ';' in a comment
CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL DEFAULT 'a;b');
/* a block; comment */ INSERT INTO notes (body) VALUES ('one; two'), ('it''s; fine');
CREATE TRIGGER notes_marked AFTER INSERT ON notes BEGIN
    UPDATE notes SET body = body || ';' WHERE id = new.id;
END; -- after the trigger; still a comment
INSERT INTO notes DEFAULT VALUES"""

BROKEN = """CREATE TABLE later (x INTEGER);
INSERT INTO no_such_table VALUES (1);"""


def test_statements_end_only_at_a_semicolon_outside_comments_strings_and_triggers() -> None:
    found = [statement.strip() for statement in statements(MIGRATION)]
    assert len(found) == 4
    assert found[0].startswith("-- notes;") and found[0].endswith("DEFAULT 'a;b');")
    assert found[1].startswith("/* a block; comment */ INSERT") and found[1].endswith("fine');")
    assert found[2].startswith("CREATE TRIGGER") and found[2].endswith("END;")
    assert found[3] == "-- after the trigger; still a comment\nINSERT INTO notes DEFAULT VALUES"
    assert all(sqlite3.complete_statement(statement + ";") for statement in found)


async def test_a_migration_with_semicolons_in_comments_and_strings_applies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "migration_scripts", lambda _dialect: [(1, MIGRATION)])
    store = SqliteStore(Settings(database_url=f"sqlite:///{tmp_path / 'notes.db'}"))
    await store.open()
    try:
        assert await store.migrate() == [1]
        async with store.db.execute("SELECT body FROM notes ORDER BY id") as cursor:
            bodies = [row[0] for row in await cursor.fetchall()]
        assert bodies == ["one; two", "it's; fine", "a;b;"]  # the trigger marks the last
        assert await store.migrate() == []
    finally:
        await store.close()


async def test_a_failing_migration_leaves_nothing_of_itself_or_of_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        sqlite_store, "migration_scripts", lambda _dialect: [(1, MIGRATION), (2, BROKEN)]
    )
    store = SqliteStore(Settings(database_url=f"sqlite:///{tmp_path / 'notes.db'}"))
    await store.open()
    try:
        with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
            await store.migrate()
        async with store.db.execute("SELECT name FROM sqlite_master") as cursor:
            assert await cursor.fetchall() == []
    finally:
        await store.close()
