"""Concurrent creates written together: while one group of creates is being written to the
store, the creates that arrive wait and are then written as the next group, in one store
statement and one Redis call. Under load a create then costs a share of a round trip,
not one; alone it is written at once, as it would be on its own.

A group is done with the store once its links are in it: while the caches hear of them (the
new answers into Redis, the invalidation out to every worker), the next group is already
being stored. Each create still answers only once the caches have heard of its link.

A create never waits longer than one write would: when the store fails a write (it does
not answer within its timeout, or its breaker is open), the creates that arrived while it
was being written fail with it, rather than wait a second timeout for their own group.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from shortener.errors import Problem, StoreUnavailable
from shortener.links.model import ApiKey, Link, NewLink

# Creates written in one statement at most; more wait for the next.
MAX_GROUP = 100

StoreOne = Callable[[NewLink, ApiKey | None], Awaitable[Link]]
StoreMany = Callable[[list[NewLink | Problem], ApiKey | None], Awaitable[list[Link | Problem]]]
Publish = Callable[[list[Link]], Awaitable[None]]
_Waiting = tuple[NewLink, ApiKey | None, "asyncio.Future[Link]"]


class CreateGroups:
    def __init__(self, store_one: StoreOne, store_many: StoreMany, publish: Publish) -> None:
        self._store_one = store_one
        self._store_many = store_many
        self._publish = publish
        self._waiting: list[_Waiting] = []
        self._writer: asyncio.Task[None] | None = None
        # Groups stored whose links the caches are hearing of.
        self._publishing: set[asyncio.Task[None]] = set()

    async def create(self, new: NewLink, owner: ApiKey | None) -> Link:
        """The link, written with whichever creates arrive meanwhile and published to the
        caches; raises as store_one."""
        made: asyncio.Future[Link] = asyncio.get_running_loop().create_future()
        self._waiting.append((new, owner, made))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_groups())
        return await made

    async def _write_groups(self) -> None:
        try:
            while self._waiting:
                taken, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
                by_owner: dict[int | None, list[_Waiting]] = {}
                for waiting in taken:
                    owner = waiting[1]
                    by_owner.setdefault(owner.id if owner else None, []).append(waiting)
                failures = await asyncio.gather(
                    *(self._write(group) for group in by_owner.values())
                )
                failed = next((f for f in failures if f is not None), None)
                if failed is not None:
                    # They waited as long as a write takes already: they answer now.
                    self._fail_waiting(failed)
        finally:
            self._writer = None
            # Cancelled (the app is stopping): nobody may wait for a write that never comes.
            for _, _, made in self._waiting:
                made.cancel()
            self._waiting = []

    def _fail_waiting(self, exc: StoreUnavailable) -> None:
        waiting, self._waiting = self._waiting, []
        _fail(waiting, exc)

    async def _write(self, group: list[_Waiting]) -> StoreUnavailable | None:
        """Stores one owner's group, then leaves the caches to hear of it and its creates
        to be answered; returns the store's failure, if that is what the write ended with."""
        owner = group[0][1]
        try:
            if len(group) == 1:
                outcomes: list[Link | Problem] = [await self._store_one(group[0][0], owner)]
            else:
                outcomes = await self._store_many([new for new, _, _ in group], owner)
        except asyncio.CancelledError:
            for _, _, made in group:
                made.cancel()
            raise
        except Exception as exc:  # each create of the group answers with it
            _fail(group, exc)
            return exc if isinstance(exc, StoreUnavailable) else None
        publishing = asyncio.create_task(self._publish_and_answer(group, outcomes))
        self._publishing.add(publishing)
        publishing.add_done_callback(self._publishing.discard)
        return None

    async def _publish_and_answer(
        self, group: list[_Waiting], outcomes: list[Link | Problem]
    ) -> None:
        try:
            # Lookups of these codes may have been cached as unknown.
            await self._publish([link for link in outcomes if isinstance(link, Link)])
        except asyncio.CancelledError:
            for _, _, made in group:
                made.cancel()
            raise
        except Exception as exc:  # the caches never fail a write, but if they did: say so
            _fail(group, exc)
            return
        for (_, _, made), outcome in zip(group, outcomes, strict=True):
            if made.done():  # its request gave up
                continue
            if isinstance(outcome, Problem):
                made.set_exception(outcome)
            else:
                made.set_result(outcome)


def _fail(waiting: list[_Waiting], exc: BaseException) -> None:
    """Answers each create still waiting with `exc`."""
    for _, _, made in waiting:
        if not made.done():
            made.set_exception(exc)
