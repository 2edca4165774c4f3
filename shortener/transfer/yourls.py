"""YOURLS links as CSV: the columns of its `yourls_url` table (keyword, url, title, timestamp,
ip, clicks), as a database export or an export plugin writes them. YOURLS keeps times in the
server's zone without an offset; they are read as UTC."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TextIO

from shortener.links.model import Link
from shortener.transfer import Row
from shortener.transfer.fields import count, csv_rows, moment, new_link, optional


def read(stream: TextIO) -> Iterator[Row]:
    return csv_rows(stream, {"keyword", "url"}, _parse)


def _parse(cells: dict[str, str]) -> Link:
    created = optional(cells.get("timestamp"))
    return new_link(
        cells["keyword"].strip(),
        cells["url"].strip(),
        title=optional(cells.get("title")),
        created_at=moment(created, "timestamp") if created else None,
        clicks=count(cells.get("clicks", ""), "clicks"),
    )
