"""The formats by name, each a module of its own with one small interface."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol, TextIO

from shortener.links.model import Link
from shortener.transfer import Row, bitly, native_csv, native_jsonl, shlink, yourls


class Reader(Protocol):
    def read(self, stream: TextIO) -> Iterator[Row]: ...


class Writer(Reader, Protocol):
    def header(self, stream: TextIO) -> None: ...

    def write(self, links: Iterable[Link], stream: TextIO) -> None: ...


EXPORT_FORMATS: dict[str, Writer] = {"jsonl": native_jsonl, "csv": native_csv}
IMPORT_FORMATS: dict[str, Reader] = {
    **EXPORT_FORMATS,
    "shlink-csv": shlink,
    "yourls-csv": yourls,
    "bitly-csv": bitly,
}
