"""The write path: create, read, change, delete and list links, owner by owner."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from shortener.cache.tiered import TieredCache
from shortener.errors import CodeTaken, DomainBlocked, Problem, conflict, not_found, unavailable
from shortener.links import codes
from shortener.links.grouping import CreateGroups
from shortener.links.model import ApiKey, Link, LinkChanges, LinkFilter, NewLink
from shortener.links.policy import DestinationPolicy, blocked_target
from shortener.store import Inserted, Store

# Collisions among 62**7 codes are rare; a few retries, then a longer code, always terminate.
_ATTEMPTS_PER_LENGTH = 3


class LinkService:
    def __init__(self, store: Store, cache: TieredCache, policy: DestinationPolicy) -> None:
        self._store = store
        self._cache = cache
        self._policy = policy
        self._groups = CreateGroups(self._store_one, self._store_many, self._cache.changed_many)

    async def create(self, new: NewLink, owner: ApiKey | None) -> Link:
        """One link; creates that arrive while others are written are written together,
        as create_many() would (grouping.py)."""
        return await self._groups.create(new, owner)

    async def _store_one(self, new: NewLink, owner: ApiKey | None) -> Link:
        """create() but for the caches: the link written to the store."""
        # The store checks its blocklist in the statement that writes the link.
        domains = self._policy.check_here(new.url, keyless=owner is None)
        owner_id = owner.id if owner else None
        now = datetime.now(UTC)
        try:
            if new.alias is not None:
                try:
                    link = await self._store.insert_link(new.alias, new, owner_id, now, domains)
                except CodeTaken:
                    raise _taken(new.alias) from None
            else:
                link = await self._insert_generated(new, owner_id, now, domains)
        except DomainBlocked:
            raise blocked_target() from None
        return link

    async def create_many(
        self, items: list[NewLink | Problem], owner: ApiKey | None
    ) -> list[Link | Problem]:
        """Creates each valid item as create() would, the blocklist read and every link
        written in one store round trip (a generated code that collides is retried on its
        own); a problem item stays as it is."""
        results = await self._store_many(items, owner)
        # Lookups of these codes may have been cached as unknown.
        await self._cache.changed_many([link for link in results if isinstance(link, Link)])
        return results

    async def _store_many(
        self, items: list[NewLink | Problem], owner: ApiKey | None
    ) -> list[Link | Problem]:
        """create_many() but for the caches."""
        results: dict[int, Link | Problem] = {
            index: item for index, item in enumerate(items) if isinstance(item, Problem)
        }
        rows: dict[str, tuple[int, NewLink, list[str]]] = {}
        generated = []
        for index, new in enumerate(items):
            if not isinstance(new, NewLink):
                continue
            try:
                domains = self._policy.check_here(new.url, keyless=owner is None)
            except Problem as problem:
                results[index] = problem
                continue
            if new.alias is None:
                generated.append((index, new, domains))
            elif new.alias in rows:
                results[index] = _taken(new.alias)
            else:
                rows[new.alias] = (index, new, domains)
        for index, new, domains in generated:
            rows[_fresh_code(rows)] = (index, new, domains)
        owner_id = owner.id if owner else None
        now = datetime.now(UTC)
        in_order = sorted(rows.items(), key=lambda row: row[1][0])
        inserted = Inserted({}, set())
        if in_order:
            inserted = await self._store.insert_links(
                [(code, new) for code, (_, new, _) in in_order],
                owner_id,
                now,
                [domains for _, (_, _, domains) in in_order],
            )
        for code, (index, new, domains) in in_order:
            link = inserted.made.get(code)
            if link is not None:
                results[index] = link
            elif code in inserted.blocked:
                results[index] = blocked_target()
            elif new.alias is not None:
                results[index] = _taken(code)
            else:
                try:
                    results[index] = await self._insert_generated(new, owner_id, now, domains)
                except DomainBlocked:
                    results[index] = blocked_target()
                except Problem as problem:
                    results[index] = problem
        return [results[index] for index in range(len(items))]

    async def _insert_generated(
        self, new: NewLink, owner_id: int | None, now: datetime, unless_blocked: Sequence[str] = ()
    ) -> Link:
        for length in range(codes.GENERATED_LENGTH, codes.GENERATED_LENGTH + 4):
            for _ in range(_ATTEMPTS_PER_LENGTH):
                code = codes.generate(length)
                try:
                    return await self._store.insert_link(code, new, owner_id, now, unless_blocked)
                except CodeTaken:
                    continue
        raise unavailable("Could not find a free code; try again.")

    async def get(self, code: str, caller: ApiKey) -> Link:
        link = await self._store.get_link(code) if codes.is_code(code) else None
        if link is None or link.deleted or not _may_see(caller, link):
            raise not_found()
        return link

    async def update(self, code: str, changes: LinkChanges, caller: ApiKey) -> Link:
        await self.get(code, caller)
        url = changes.values.get("url")
        if isinstance(url, str):
            await self._policy.check(url, keyless=False)
        link = await self._store.update_link(code, changes, datetime.now(UTC))
        if link is None:
            raise not_found()
        await self._cache.changed(link)
        return link

    async def delete(self, code: str, caller: ApiKey) -> None:
        await self.get(code, caller)
        link = await self._store.delete_link(code, datetime.now(UTC))
        if link is None:
            raise not_found()
        await self._cache.changed(link)

    async def list(
        self, caller: ApiKey, limit: int, before_id: int | None, where: LinkFilter
    ) -> list[Link]:
        owner_id = None if caller.admin else caller.id
        return await self._store.list_links(owner_id, before_id, limit, where)


def _taken(alias: str) -> Problem:
    return conflict(f"The alias {alias!r} is taken.")


def _fresh_code(used: Mapping[str, object]) -> str:
    while True:
        code = codes.generate()
        if code not in used:
            return code


def _may_see(caller: ApiKey, link: Link) -> bool:
    return caller.admin or link.owner_id == caller.id
