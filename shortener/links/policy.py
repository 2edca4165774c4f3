"""Where links may point: no blocked domain, and no private network unless allowed."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from shortener.config import normalise_domain
from shortener.errors import invalid
from shortener.links.hosts import is_private_host
from shortener.store import Store


class DestinationPolicy:
    def __init__(self, store: Store, blocked: Iterable[str], private_targets: str) -> None:
        self._store = store
        self._blocked = frozenset(normalise_domain(domain) for domain in blocked)
        self._private_targets = private_targets

    async def check(self, url: str, keyless: bool) -> None:
        """Raises a validation problem on `url` unless the policy lets a link point there."""
        host = (urlsplit(url).hostname or "").rstrip(".").lower()
        if self._denies_private(keyless) and is_private_host(host):
            raise invalid("url", "must not point at a private or local network address")
        suffixes = domain_suffixes(host)
        if self._blocked.intersection(suffixes) or await self._store.blocked_among(suffixes):
            raise invalid("url", "points at a blocked domain")

    def _denies_private(self, keyless: bool) -> bool:
        return self._private_targets == "deny" or (
            self._private_targets == "deny-keyless" and keyless
        )


def domain_suffixes(host: str) -> list[str]:
    """a.b.example.com -> [a.b.example.com, b.example.com, example.com, com]."""
    labels = host.split(".")
    return [".".join(labels[index:]) for index in range(len(labels))]
