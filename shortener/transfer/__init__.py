"""Links in and out of the store as files: this service's own formats and other shorteners'.

Each format is one module with `read(stream) -> Iterator[Row]` (and, for this service's own
formats, `write(links, stream)`); `importer.py` applies the service's rules to the rows and
writes them, `exporter.py` reads every link back out. The CLI only picks a format and shows
progress.
"""

from __future__ import annotations

from dataclasses import dataclass

from shortener.links.model import Link


@dataclass(frozen=True, slots=True)
class Row:
    """One record of a file: a link to import, or the reason it cannot be one."""

    line: int
    link: Link | None
    reason: str = ""


def rejected(line: int, reason: str) -> Row:
    return Row(line, None, reason)
