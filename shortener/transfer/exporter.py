"""Every link out of the store, oldest first, a page at a time."""

from __future__ import annotations

from collections.abc import AsyncIterator

from shortener.links.model import Link
from shortener.store import Store

PAGE = 1000


async def every_link(store: Store) -> AsyncIterator[list[Link]]:
    after = 0
    while page := await store.export_links(after, PAGE):
        yield page
        after = page[-1].id
