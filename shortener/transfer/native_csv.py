"""This service's CSV: the JSON lines' fields as columns, tags joined by `|`, and every cell
that a spreadsheet would run as a formula made inert."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import TextIO

from shortener.links.model import Link
from shortener.transfer import Row
from shortener.transfer.fields import count, csv_rows, moment, new_link, optional
from shortener.transfer.native_jsonl import FIELDS, as_record

# A spreadsheet reads a cell starting with one of these as a formula (=HYPERLINK(...)):
# such a cell is written with a leading apostrophe, which the reader here removes again.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def header(stream: TextIO) -> None:
    csv.writer(stream, lineterminator="\n").writerow(FIELDS)


def write(links: Iterable[Link], stream: TextIO) -> None:
    writer = csv.writer(stream, lineterminator="\n")
    for link in links:
        record = as_record(link)
        record["tags"] = "|".join(link.tags)
        writer.writerow([_cell(record[field]) for field in FIELDS])


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _text(raw: str) -> str:
    return raw[1:] if raw.startswith("'") else raw


def read(stream: TextIO) -> Iterator[Row]:
    return csv_rows(stream, {"code", "url"}, _parse)


def _parse(cells: dict[str, str]) -> Link:
    values = {name: _text(value) for name, value in cells.items()}
    expires = optional(values.get("expires_at"))
    max_visits = optional(values.get("max_visits"))
    return new_link(
        values["code"],
        values["url"],
        title=optional(values.get("title")),
        tags=tuple(tag for tag in values.get("tags", "").split("|") if tag),
        created_at=_time(values, "created_at"),
        updated_at=_time(values, "updated_at"),
        expires_at=moment(expires, "expires_at") if expires else None,
        max_visits=count(max_visits, "max_visits") if max_visits else None,
        redirect_status=count(values.get("redirect_status") or "302", "redirect_status"),
        disabled=_flag(values, "disabled"),
        deleted=_flag(values, "deleted"),
        clicks=count(values.get("clicks", ""), "clicks"),
    )


def _time(values: dict[str, str], field: str) -> datetime | None:
    raw = optional(values.get(field))
    return moment(raw, field) if raw else None


def _flag(values: dict[str, str], field: str) -> bool:
    raw = values.get(field, "").strip().lower()
    if raw not in {"", "true", "false"}:
        raise ValueError(f"{field}: {raw[:20]!r} is not true or false")
    return raw == "true"
