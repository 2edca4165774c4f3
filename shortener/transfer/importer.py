"""Rows into the store: each judged by the service's rules, written in chunks that are each
one statement (all of a chunk or none of it), codes kept, a second run changing nothing."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice

from shortener.cache.tiered import TieredCache
from shortener.errors import Problem
from shortener.links.codes import is_code, is_reserved
from shortener.links.model import Link
from shortener.links.policy import DestinationPolicy
from shortener.links.rules import (
    parse_max_visits,
    parse_redirect_status,
    parse_tags,
    parse_title,
    parse_url,
)
from shortener.store import Store
from shortener.transfer import Row

CHUNK = 500


@dataclass
class Report:
    imported: int = 0
    unchanged: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)
    last_line: int = 0


class Importer:
    def __init__(
        self,
        store: Store,
        policy: DestinationPolicy,
        own_host: str,
        cache: TieredCache | None = None,
    ) -> None:
        self._store = store
        self._policy = policy
        self._own_host = own_host
        self._cache = cache

    async def run(
        self,
        rows: Iterable[Row],
        owner_id: int,
        progress: Callable[[Report], None] = lambda _: None,
    ) -> Report:
        report = Report()
        source = iter(rows)
        while chunk := list(islice(source, CHUNK)):
            await self._chunk(chunk, owner_id, report)
            report.last_line = chunk[-1].line
            progress(report)
        report.rejected.sort()
        return report

    async def _chunk(self, chunk: list[Row], owner_id: int, report: Report) -> None:
        lines: dict[str, int] = {}
        candidates: list[tuple[int, Link]] = []
        for row in chunk:
            if row.link is None:
                report.rejected.append((row.line, row.reason))
                continue
            try:
                link = self._judged(row.link)
            except ValueError as exc:
                report.rejected.append((row.line, str(exc)))
                continue
            if link.code in lines:
                report.rejected.append(
                    (row.line, f"code {link.code!r} is already on line {lines[link.code]}")
                )
                continue
            lines[link.code] = row.line
            candidates.append((row.line, link))
        checks = await self._policy.check_many([link.url for _, link in candidates], False)
        allowed = []
        for (line, link), problem in zip(candidates, checks, strict=True):
            if problem is not None:
                report.rejected.append((line, _reason(problem)))
            else:
                allowed.append((line, link))
        if not allowed:
            return
        made = await self._store.import_links([link for _, link in allowed], owner_id)
        report.imported += len(made)
        if self._cache is not None:
            await self._cache.changed_many(list(made.values()))
        left = [(line, link) for line, link in allowed if link.code not in made]
        existing = await self._store.links_by_code([link.code for _, link in left]) if left else {}
        for line, link in left:
            there = existing.get(link.code)
            if there is not None and there.owner_id == owner_id and there.url == link.url:
                report.unchanged += 1
            else:
                report.rejected.append((line, f"code {link.code!r} is taken by another link"))

    def _judged(self, link: Link) -> Link:
        """The link as the service's rules have it, or ValueError naming what is wrong."""
        if not is_code(link.code) or is_reserved(link.code):
            raise ValueError(f"code {link.code[:70]!r} cannot be a short code here")
        if link.clicks < 0:
            raise ValueError("clicks must not be negative")
        try:
            return dataclasses.replace(
                link,
                url=parse_url(link.url, self._own_host),
                title=parse_title(link.title) if link.title is not None else None,
                tags=parse_tags(list(link.tags)),
                max_visits=(
                    parse_max_visits(link.max_visits) if link.max_visits is not None else None
                ),
                redirect_status=parse_redirect_status(link.redirect_status),
            )
        except Problem as problem:
            raise ValueError(_reason(problem)) from None


def _reason(problem: Problem) -> str:
    return "; ".join(f"{error.field}: {error.message}" for error in problem.errors) or (
        problem.detail
    )
