"""Shlink's CSV export (the web client's "Export" of the short URL list, short_urls.csv):
columns createdAt, domain, shortCode, shortUrl, longUrl, title, tags (joined by `|`), visits."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TextIO

from shortener.links.model import Link
from shortener.transfer import Row
from shortener.transfer.fields import count, csv_rows, moment, new_link, optional


def read(stream: TextIO) -> Iterator[Row]:
    return csv_rows(stream, {"shortCode", "longUrl"}, _parse)


def _parse(cells: dict[str, str]) -> Link:
    created = optional(cells.get("createdAt"))
    return new_link(
        cells["shortCode"].strip(),
        cells["longUrl"].strip(),
        title=optional(cells.get("title")),
        tags=tuple(tag.strip() for tag in cells.get("tags", "").split("|") if tag.strip()),
        created_at=moment(created, "createdAt") if created else None,
        clicks=count(cells.get("visits", ""), "visits"),
    )
