"""Bitly's CSV export of links (Links, Export): `Link` (the bitlink), `Custom Link` (a branded
back-half, when set) and `Destination URL`, with `Title`, `Date Created`, `Tags` and
`Engagements` when the export has them. The code is the back-half of the custom link if
there is one, else of the bitlink."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TextIO

from shortener.links.model import Link
from shortener.transfer import Row
from shortener.transfer.fields import code_of, count, csv_rows, moment, new_link, optional


def read(stream: TextIO) -> Iterator[Row]:
    return csv_rows(stream, {"Link", "Destination URL"}, _parse)


def _parse(cells: dict[str, str]) -> Link:
    custom = optional(cells.get("Custom Link"))
    created = optional(cells.get("Date Created"))
    tags = cells.get("Tags", "").replace("|", ",").split(",")
    return new_link(
        code_of(custom or cells["Link"]),
        cells["Destination URL"].strip(),
        title=optional(cells.get("Title")),
        tags=tuple(tag.strip() for tag in tags if tag.strip()),
        created_at=moment(created, "Date Created") if created else None,
        clicks=count(cells.get("Engagements", ""), "Engagements"),
    )
