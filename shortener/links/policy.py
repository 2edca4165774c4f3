"""Where links may point: no blocked domain, and no private network unless allowed."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from shortener.config import normalise_domain
from shortener.errors import Problem, invalid
from shortener.links.hosts import is_private_host
from shortener.store import Store


def private_target() -> Problem:
    return invalid("url", "must not point at a private or local network address")


def blocked_target() -> Problem:
    return invalid("url", "points at a blocked domain")


class DestinationPolicy:
    def __init__(self, store: Store, blocked: Iterable[str], private_targets: str) -> None:
        self._store = store
        self._blocked = frozenset(normalise_domain(domain) for domain in blocked)
        self._private_targets = private_targets

    async def check(self, url: str, keyless: bool) -> None:
        """Raises a validation problem on `url` unless the policy lets a link point there."""
        problem = (await self.check_many([url], keyless))[0]
        if problem is not None:
            raise problem

    def check_here(self, url: str, keyless: bool) -> list[str]:
        """What the policy can check without the store: raises a validation problem, or
        returns the domains the store's blocklist must not hold (for the store to check in
        the statement that writes the link)."""
        host = _host(url)
        if self._denies_private(keyless) and is_private_host(host):
            raise private_target()
        domains = domain_suffixes(host)
        if self._blocked.intersection(domains):
            raise blocked_target()
        return domains

    async def check_many(self, urls: list[str], keyless: bool) -> list[Problem | None]:
        """For each url, the problem that keeps a link from pointing there, or None; the
        blocklist in the store is asked once for them all."""
        suffixes = [domain_suffixes(_host(url)) for url in urls]
        wanted = sorted({suffix for each in suffixes for suffix in each} - self._blocked)
        blocked = self._blocked | (await self._store.blocked_among(wanted) if wanted else set())
        denies_private = self._denies_private(keyless)
        problems: list[Problem | None] = []
        for url, domains in zip(urls, suffixes, strict=True):
            if denies_private and is_private_host(_host(url)):
                problems.append(private_target())
            elif blocked.intersection(domains):
                problems.append(blocked_target())
            else:
                problems.append(None)
        return problems

    def _denies_private(self, keyless: bool) -> bool:
        return self._private_targets == "deny" or (
            self._private_targets == "deny-keyless" and keyless
        )


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").rstrip(".").lower()


def domain_suffixes(host: str) -> list[str]:
    """a.b.example.com -> [a.b.example.com, b.example.com, example.com, com]."""
    labels = host.split(".")
    return [".".join(labels[index:]) for index in range(len(labels))]
