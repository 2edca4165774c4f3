"""Import progress: a bar on a terminal (rich), plain lines on standard error otherwise."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shortener.transfer.importer import Report


@contextmanager
def progress_for(total_lines: int) -> Iterator[Callable[[Report], None]]:
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import Progress

        with Progress(console=Console(stderr=True), transient=False) as bar:
            task = bar.add_task("importing", total=total_lines)

            def advance(report: Report) -> None:
                bar.update(task, completed=report.last_line)

            yield advance
        return

    def lines(report: Report) -> None:
        print(
            f"import: line {report.last_line} of {total_lines}: {report.imported} imported, "
            f"{report.unchanged} unchanged, {len(report.rejected)} rejected",
            file=sys.stderr,
            flush=True,
        )

    yield lines
