"""This service's JSON lines: one link object a line, every field, deleted links marked."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from shortener.links.model import Link
from shortener.transfer import Row, rejected
from shortener.transfer.fields import MAX_FIELD, moment, new_link

FIELDS = (
    "code",
    "url",
    "title",
    "tags",
    "created_at",
    "updated_at",
    "expires_at",
    "max_visits",
    "redirect_status",
    "disabled",
    "deleted",
    "clicks",
)
# A line longer than every field at its largest together cannot be a link.
MAX_LINE = 16 * MAX_FIELD


def header(stream: TextIO) -> None:
    """JSON lines have none."""


def write(links: Iterable[Link], stream: TextIO) -> None:
    for link in links:
        stream.write(orjson.dumps(as_record(link)).decode() + "\n")


def as_record(link: Link) -> dict[str, Any]:
    return {
        "code": link.code,
        "url": link.url,
        "title": link.title,
        "tags": list(link.tags),
        "created_at": _time(link.created_at),
        "updated_at": _time(link.updated_at),
        "expires_at": _time(link.expires_at) if link.expires_at else None,
        "max_visits": link.max_visits,
        "redirect_status": link.redirect_status,
        "disabled": link.disabled,
        "deleted": link.deleted,
        "clicks": link.clicks,
    }


def read(stream: TextIO) -> Iterator[Row]:
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        if len(line) > MAX_LINE:
            yield rejected(number, f"the line is longer than {MAX_LINE} characters")
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield rejected(number, f"not JSON: {exc}")
            continue
        try:
            yield Row(number, from_record(record))
        except (ValueError, TypeError) as exc:
            yield rejected(number, str(exc))


def from_record(record: object) -> Link:
    if not isinstance(record, dict):
        raise ValueError("the line is not a JSON object")
    unknown = sorted(set(record) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(unknown)}")
    if not isinstance(record.get("code"), str) or not isinstance(record.get("url"), str):
        raise ValueError("code and url must be strings")
    tags = record.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise ValueError("tags must be a list of strings")
    title = record.get("title")
    if title is not None and not isinstance(title, str):
        raise ValueError("title must be a string or null")
    return new_link(
        record["code"],
        record["url"],
        title=title,
        tags=tuple(tags),
        created_at=_optional_time(record, "created_at"),
        updated_at=_optional_time(record, "updated_at"),
        expires_at=_optional_time(record, "expires_at"),
        max_visits=_optional_int(record, "max_visits"),
        redirect_status=_optional_int(record, "redirect_status") or 302,
        disabled=_flag(record, "disabled"),
        deleted=_flag(record, "deleted"),
        clicks=_optional_int(record, "clicks") or 0,
    )


def _time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _optional_time(record: dict[str, Any], field: str) -> datetime | None:
    raw = record.get(field)
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise ValueError(f"{field} must be an RFC 3339 string")
    return moment(raw, field)


def _optional_int(record: dict[str, Any], field: str) -> int | None:
    raw = record.get(field)
    if raw is not None and (not isinstance(raw, int) or isinstance(raw, bool)):
        raise ValueError(f"{field} must be an integer")
    return raw


def _flag(record: dict[str, Any], field: str) -> bool:
    raw = record.get(field, False)
    if not isinstance(raw, bool):
        raise ValueError(f"{field} must be true or false")
    return raw
