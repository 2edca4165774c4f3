"""A link's visit statistics over a range: the totals, a series of buckets, the breakdowns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from shortener.errors import FieldError, Problem, validation_failed
from shortener.links.model import Link
from shortener.links.rules import parse_moment
from shortener.store import Store

MAX_BUCKETS = 1000
TOP_ROWS = 20
OTHER = "(other)"
DEFAULT_RANGE = timedelta(days=30)
INTERVALS = {"hour": 1, "day": 24}
# API field -> stored dimension, in the order the answer lists them.
BREAKDOWNS = {
    "referrers": "referrer",
    "countries": "country",
    "browsers": "browser",
    "os": "os",
    "devices": "device",
}


@dataclass(frozen=True, slots=True)
class StatsRange:
    start: datetime
    end: datetime
    interval: str

    @property
    def bucket_hours(self) -> int:
        return INTERVALS[self.interval]

    @property
    def first_bucket(self) -> int:
        """Buckets are numbered from the epoch, so they start on UTC hours or midnights."""
        return int(self.start.timestamp() // (self.bucket_hours * 3600))

    @property
    def buckets(self) -> int:
        size = self.bucket_hours * 3600
        return -(-int(self.end.timestamp() - self.first_bucket * size) // size)


def parse_range(query: Mapping[str, str], now: datetime) -> StatsRange:
    """from, to and interval of the query; a 400 naming every bad field."""
    errors: list[FieldError] = []
    end = _moment(query, "to", errors)
    start = _moment(query, "from", errors)
    interval = query.get("interval", "day")
    if interval not in INTERVALS:
        errors.append(FieldError("interval", "must be hour or day"))
    if errors:
        raise validation_failed(errors)
    end = end or now
    if start is None:
        try:
            start = end - DEFAULT_RANGE
        except OverflowError:
            start = datetime.min.replace(tzinfo=UTC)
    if end <= start:
        raise validation_failed([FieldError("to", "must be after from")])
    found = StatsRange(start, end, interval)
    if found.buckets > MAX_BUCKETS:
        raise validation_failed(
            [
                FieldError(
                    "interval",
                    f"the range holds {found.buckets} {interval}s; at most {MAX_BUCKETS} "
                    "buckets: ask for a shorter range or a longer interval",
                )
            ]
        )
    return found


def _moment(query: Mapping[str, str], name: str, errors: list[FieldError]) -> datetime | None:
    raw = query.get(name)
    if raw is None:
        return None
    # An unencoded "+" of an offset arrives as a space.
    try:
        return parse_moment(name, raw[:11] + raw[11:].replace(" ", "+"))
    except Problem as problem:
        errors.extend(problem.errors)
        return None


async def build_report(store: Store, link: Link, wanted: StatsRange) -> dict[str, Any]:
    hours = wanted.bucket_hours
    first_hour = wanted.first_bucket * hours
    end_hour = first_hour + wanted.buckets * hours
    series = [[0, 0] for _ in range(wanted.buckets)]
    for bucket, kind, count in await store.visit_series(link.id, first_hour, end_hour, hours):
        series[bucket - wanted.first_bucket][0 if kind == "visits" else 1] += count
    breakdowns: dict[str, dict[str, int]] = {dimension: {} for dimension in BREAKDOWNS.values()}
    for dimension, value, count in await store.visit_breakdowns(link.id, first_hour, end_hour):
        if dimension in breakdowns:
            breakdowns[dimension][value] = count
    return {
        "code": link.code,
        "from": wanted.start,
        "to": wanted.end,
        "interval": wanted.interval,
        "visits": sum(visits for visits, _ in series),
        "bots": sum(bots for _, bots in series),
        "series": [
            {
                "start": datetime.fromtimestamp((wanted.first_bucket + index) * hours * 3600, UTC),
                "visits": visits,
                "bots": bots,
            }
            for index, (visits, bots) in enumerate(series)
        ],
        **{field: _top(breakdowns[dimension]) for field, dimension in BREAKDOWNS.items()},
    }


def _top(counts: dict[str, int]) -> list[dict[str, Any]]:
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    rows = [{"value": value, "visits": count} for value, count in ranked[:TOP_ROWS]]
    rest = sum(count for _, count in ranked[TOP_ROWS:])
    if rest:
        rows.append({"value": OTHER, "visits": rest})
    return rows
