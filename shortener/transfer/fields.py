"""Reading the cells of a record into a Link, the same way for every format."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import urlsplit

from shortener.links.model import Link
from shortener.transfer import Row, rejected

# A field larger than any valid one (2,048-character urls, 512-character titles) is refused
# as a bad row, not held in memory.
MAX_FIELD = 16_384
csv.field_size_limit(MAX_FIELD)


def new_link(
    code: str | None,
    url: str,
    *,
    title: str | None = None,
    tags: tuple[str, ...] = (),
    created_at: datetime | None = None,
    updated_at: datetime | None = None,
    expires_at: datetime | None = None,
    max_visits: int | None = None,
    redirect_status: int = 302,
    disabled: bool = False,
    deleted: bool = False,
    clicks: int = 0,
) -> Link:
    """A link as a file describes it; the importer judges it by the service's rules."""
    created = created_at or datetime.now(UTC)
    return Link(
        id=0,
        code=code or "",
        url=url,
        owner_id=None,
        created_at=created,
        updated_at=updated_at or created,
        expires_at=expires_at,
        max_visits=max_visits,
        redirect_status=redirect_status,
        disabled=disabled,
        deleted=deleted,
        clicks=clicks,
        version=1,
        title=title or None,
        tags=tags,
    )


def moment(raw: str, field: str) -> datetime:
    """An ISO 8601 / RFC 3339 time; one without an offset is taken as UTC."""
    try:
        value = datetime.fromisoformat(raw.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{field}: {raw[:40]!r} is not a date and time") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def count(raw: str, field: str) -> int:
    text = raw.strip().replace(",", "")
    if not text:
        return 0
    if not text.isdigit() or len(text) > 18:
        raise ValueError(f"{field}: {raw[:40]!r} is not a whole number")
    return int(text)


def code_of(short_url: str) -> str:
    """The code of a short URL: its path without the leading slash."""
    text = short_url.strip()
    if "://" not in text:
        text = "https://" + text
    return urlsplit(text).path.strip("/")


def csv_rows(
    stream: TextIO, required: set[str], parse: Callable[[dict[str, str]], Link]
) -> Iterator[Row]:
    """Rows of a CSV file with a header line, each parsed into a Link or rejected, with the
    line number it starts on."""
    reader = csv.reader(stream)
    try:
        header = [name.strip().lstrip("\ufeff") for name in next(reader)]
    except StopIteration:
        return
    except csv.Error as exc:
        yield rejected(1, f"bad header: {exc}")
        return
    missing = sorted(required - set(header))
    if missing:
        yield rejected(1, f"the header lacks the column(s) {', '.join(missing)}")
        return
    end = reader.line_num
    while True:
        start = end + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            end = reader.line_num
            yield rejected(start, f"unreadable CSV: {exc}")
            continue
        end = reader.line_num
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            yield rejected(start, f"{len(cells)} cells where the header names {len(header)}")
            continue
        try:
            yield Row(start, parse(dict(zip(header, cells, strict=True))))
        except ValueError as exc:
            yield rejected(start, str(exc))


def optional(raw: Any) -> str | None:
    return raw if isinstance(raw, str) and raw.strip() else None
