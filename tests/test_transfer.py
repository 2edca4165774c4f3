"""Export and import from the command line, on both backends: this service's own formats
round-trip, other shorteners' exports import, bad rows are named, a second run changes
nothing, and CSV cells cannot run as spreadsheet formulas."""

from __future__ import annotations

import csv
import http.client
import io
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from shortener import cli

SAMPLES = Path(__file__).parent / "transfer_samples"


class Shortener:
    """The `shortener` command on one store, run in this process."""

    def __init__(self, url: str, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
        self.url = url
        self._monkeypatch = monkeypatch
        self._capsys = capsys

    def run(self, *args: str) -> tuple[int, str, str]:
        self._monkeypatch.setenv("SHORTENER_DATABASE_URL", self.url)
        self._monkeypatch.setenv("SHORTENER_BASE_URL", "https://sho.rt")
        self._capsys.readouterr()
        code = cli.main(list(args))
        out, err = self._capsys.readouterr()
        return code, out, err

    def key(self) -> str:
        code, _, _ = self.run("keys", "create", "--name", "importer")
        assert code == 0
        _, listing, _ = self.run("keys", "list")
        return listing.strip().splitlines()[-1].split("\t")[0]

    def export(self, file_format: str = "jsonl") -> str:
        code, out, _ = self.run("export", "--format", file_format)
        assert code == 0
        return out

    def records(self) -> list[dict[str, Any]]:
        return sorted(
            (orjson.loads(line) for line in self.export().splitlines()),
            key=lambda record: record["code"],
        )


@pytest.fixture
def stores(
    request: pytest.FixtureRequest,
    backend_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> Iterator[tuple[Shortener, Shortener]]:
    """Two empty stores of the test's kind."""
    if backend_url.startswith("sqlite"):
        yield (
            Shortener(backend_url, monkeypatch, capsys),
            Shortener(f"sqlite:///{tmp_path / 'second.db'}", monkeypatch, capsys),
        )
        return
    server = request.getfixturevalue("postgres_server")
    name = f"test_{uuid.uuid4().hex[:16]}"
    server.create_database(name)
    try:
        yield (
            Shortener(backend_url, monkeypatch, capsys),
            Shortener(server.url(name), monkeypatch, capsys),
        )
    finally:
        server.drop_database(name)


SOURCE = [
    {
        "code": "plain",
        "url": "https://example.com/a?b=1#c",
        "title": None,
        "tags": [],
        "created_at": "2024-01-02T03:04:05.000006Z",
        "updated_at": "2024-01-02T03:04:05.000006Z",
        "expires_at": None,
        "max_visits": None,
        "redirect_status": 302,
        "disabled": False,
        "deleted": False,
        "clicks": 0,
    },
    {
        "code": "Full-1",
        "url": "https://example.org/ünï?q=x",
        "title": '=HYPERLINK("https://evil.example","click me")',
        "tags": ["News", "-dash", "a_b"],
        "created_at": "2023-05-06T07:08:09.100000Z",
        "updated_at": "2024-02-03T04:05:06.700000Z",
        "expires_at": "2020-01-01T00:00:00.000000Z",
        "max_visits": 10,
        "redirect_status": 308,
        "disabled": True,
        "deleted": False,
        "clicks": 12345,
    },
    {
        "code": "gone",
        "url": "https://example.net/",
        "title": "+cmd|' /C calc'!A0",
        "tags": ["x_y"],
        "created_at": "2022-01-01T00:00:00.000000Z",
        "updated_at": "2022-06-01T00:00:00.000000Z",
        "expires_at": None,
        "max_visits": None,
        "redirect_status": 301,
        "disabled": False,
        "deleted": True,
        "clicks": 7,
    },
]


def jsonl_file(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(orjson.dumps(record).decode() + "\n" for record in records))
    return path


def test_export_import_export_round_trips_on_an_empty_store(
    stores: tuple[Shortener, Shortener], tmp_path: Path
) -> None:
    first, second = stores
    source = jsonl_file(tmp_path / "source.jsonl", SOURCE)
    code, out, _ = first.run("import", str(source), "--owner", first.key())
    assert code == 0, out
    exported = first.records()
    # the file's fields, the url as the service stores it and tags in lower case
    assert exported[0]["code"] == "Full-1"
    assert exported[0]["url"] == "https://example.org/%C3%BCn%C3%AF?q=x"
    assert exported[0]["tags"] == ["news", "-dash", "a_b"]
    assert {record["code"]: record["clicks"] for record in exported} == {
        "Full-1": 12345,
        "gone": 7,
        "plain": 0,
    }
    for file_format in ("jsonl", "csv"):
        dump = tmp_path / f"export.{file_format}"
        dump.write_text(first.export(file_format))
        target = (
            second
            if file_format == "jsonl"
            else Shortener(f"sqlite:///{tmp_path / 'third.db'}", first._monkeypatch, first._capsys)
        )
        code, out, _ = target.run(
            "import", str(dump), "--format", file_format, "--owner", target.key()
        )
        assert code == 0, out
        assert target.records() == exported


def test_the_deleted_link_stays_gone_after_import(
    stores: tuple[Shortener, Shortener], tmp_path: Path
) -> None:
    first, _ = stores
    source = jsonl_file(tmp_path / "source.jsonl", SOURCE)
    first.run("import", str(source), "--owner", first.key())
    assert [record["deleted"] for record in first.records()] == [False, True, False]


def test_csv_export_makes_formula_cells_inert(
    stores: tuple[Shortener, Shortener], tmp_path: Path
) -> None:
    first, _ = stores
    source = jsonl_file(tmp_path / "source.jsonl", SOURCE)
    first.run("import", str(source), "--owner", first.key())
    rows = list(csv.DictReader(io.StringIO(first.export("csv"))))
    for row in rows:
        for cell in row.values():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), row
    titles = {row["code"]: row["title"] for row in rows}
    assert titles["Full-1"] == "'" + SOURCE[1]["title"]
    assert titles["gone"] == "'" + SOURCE[2]["title"]


@pytest.mark.parametrize(
    ("file_format", "sample", "expected"),
    [
        (
            "shlink-csv",
            "shlink.csv",
            {
                "launch-post": ("https://example.com/blog/launch?utm_source=shlink", 42),
                "Abc12": ("https://docs.example.org/guide", 0),
                "pricing": ("https://example.com/pricing", 1337),
            },
        ),
        (
            "yourls-csv",
            "yourls.csv",
            {
                "ozh": ("https://ozh.org/", 318),
                "yourls": ("https://yourls.org/", 1024),
                "docs-1": ("https://docs.yourls.org/guide/install.html", 7),
            },
        ),
        (
            "bitly-csv",
            "bitly.csv",
            {
                "spring-sale": ("https://shop.example.com/sale/spring?ref=bitly", 87),
                "4kLmNoP": ("https://example.com/careers", 5),
                "2aBcDeF": ("https://example.net/", 0),
            },
        ),
    ],
)
def test_foreign_exports_import_and_a_second_run_changes_nothing(
    stores: tuple[Shortener, Shortener],
    file_format: str,
    sample: str,
    expected: dict[str, tuple[str, int]],
) -> None:
    first, _ = stores
    owner = first.key()
    code, out, err = first.run(
        "import", str(SAMPLES / sample), "--format", file_format, "--owner", owner
    )
    assert code == 0, out
    assert out.strip().splitlines()[-1] == "imported 3, unchanged 0, rejected 0"
    assert "import: line" in err  # plain progress lines when not on a terminal
    records = first.records()
    assert {r["code"]: (r["url"], r["clicks"]) for r in records} == expected
    before = first.export()
    code, out, _ = first.run(
        "import", str(SAMPLES / sample), "--format", file_format, "--owner", owner
    )
    assert code == 0
    assert out.strip().splitlines()[-1] == "imported 0, unchanged 3, rejected 0"
    assert first.export() == before


def test_samples_keep_titles_tags_and_times(stores: tuple[Shortener, Shortener]) -> None:
    first, _ = stores
    owner = first.key()
    first.run("import", str(SAMPLES / "shlink.csv"), "--format", "shlink-csv", "--owner", owner)
    first.run("import", str(SAMPLES / "bitly.csv"), "--format", "bitly-csv", "--owner", owner)
    records = {record["code"]: record for record in first.records()}
    assert records["launch-post"]["tags"] == ["news", "product"]
    assert records["launch-post"]["created_at"] == "2023-03-14T08:26:53.000000Z"
    assert records["pricing"]["title"] == 'Pricing, plans and "free" tier'
    assert records["spring-sale"]["tags"] == ["campaign", "spring"]
    assert records["spring-sale"]["title"] == "Spring sale"


def test_bad_rows_are_named_and_the_good_ones_imported(stores: tuple[Shortener, Shortener]) -> None:
    first, _ = stores
    sample = str(SAMPLES / "bad_rows.shlink.csv")
    code, out, _ = first.run("import", sample, "--format", "shlink-csv", "--owner", first.key())
    assert code == 1
    lines = out.strip().splitlines()
    assert lines[-1] == "imported 2, unchanged 0, rejected 7"
    named = {int(line.split(":")[0].removeprefix("line ")): line for line in lines[:-1]}
    assert sorted(named) == [3, 4, 5, 6, 7, 8, 11]
    assert "url" in named[3]
    assert "'api'" in named[4]
    assert "createdAt" in named[5]
    assert "visits" in named[6]
    assert "cells" in named[8]
    assert "line 2" in named[11]
    assert sorted(record["code"] for record in first.records()) == ["good-one", "good-two"]


def test_a_taken_code_is_a_conflict_and_an_unknown_owner_is_refused(
    stores: tuple[Shortener, Shortener], tmp_path: Path
) -> None:
    first, _ = stores
    owner = first.key()
    first.run("import", str(SAMPLES / "yourls.csv"), "--format", "yourls-csv", "--owner", owner)
    other = first.key()
    code, out, _ = first.run(
        "import", str(SAMPLES / "yourls.csv"), "--format", "yourls-csv", "--owner", other
    )
    assert code == 1
    assert out.count("is taken by another link") == 3
    code, _, err = first.run(
        "import", str(SAMPLES / "yourls.csv"), "--format", "yourls-csv", "--owner", "999"
    )
    assert code == 2 and "no live key" in err


def test_an_interrupted_import_resumes_where_it_stopped(
    stores: tuple[Shortener, Shortener], tmp_path: Path
) -> None:
    first, _ = stores
    owner = first.key()
    records = [
        {"code": f"r{i}", "url": f"https://example.com/{i}", "clicks": i} for i in range(1200)
    ]
    whole = jsonl_file(tmp_path / "whole.jsonl", records)
    # An interruption leaves whole chunks written: a prefix of the file here.
    part = jsonl_file(tmp_path / "part.jsonl", records[:500])
    assert first.run("import", str(part), "--owner", owner)[0] == 0
    code, out, _ = first.run("import", str(whole), "--owner", owner)
    assert code == 0
    assert out.strip().splitlines()[-1] == "imported 700, unchanged 500, rejected 0"
    assert len(first.records()) == 1200


def test_hostile_import_lines_are_rejected_not_crashing(
    stores: tuple[Shortener, Shortener], tmp_path: Path
) -> None:
    first, _ = stores
    hostile = tmp_path / "hostile.jsonl"
    nested = "[" * 100_000 + "]" * 100_000
    hostile.write_text(
        nested
        + "\n"
        + orjson.dumps({"code": "big", "url": "https://e.com/" + "a" * 300_000}).decode()
        + "\n"
        + '{"code": "ok", "url": "https://example.com/"}\n'
    )
    code, out, _ = first.run("import", str(hostile), "--owner", first.key())
    assert code == 1
    assert out.strip().splitlines()[-1] == "imported 1, unchanged 0, rejected 2"
    big_csv = tmp_path / "big.csv"
    big_csv.write_text("keyword,url\nhuge," + "x" * 200_000 + "\nfine,https://example.com/f\n")
    code, out, _ = first.run("import", str(big_csv), "--format", "yourls-csv", "--owner", "1")
    assert out.strip().splitlines()[-1] == "imported 1, unchanged 0, rejected 1"


def test_imported_codes_replace_cached_unknowns_on_running_instances(
    app_instance_factory: Any,
    postgres_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    env = {"SHORTENER_DATABASE_URL": postgres_url, "SHORTENER_REDIS_URL": redis_url}
    instance = app_instance_factory(env)

    def status(code: str) -> int:
        connection = http.client.HTTPConnection(instance.host, instance.port, timeout=10)
        try:
            connection.request("GET", f"/{code}")
            return connection.getresponse().status
        finally:
            connection.close()

    assert status("ozh") == 404  # now cached as unknown, in Redis and in the worker
    monkeypatch.setenv("SHORTENER_REDIS_URL", redis_url)
    shortener = Shortener(postgres_url, monkeypatch, capsys)
    code, out, _ = shortener.run(
        "import", str(SAMPLES / "yourls.csv"), "--format", "yourls-csv", "--owner", shortener.key()
    )
    assert code == 0, out
    deadline = time.monotonic() + 5
    while status("ozh") != 302 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status("ozh") == 302
