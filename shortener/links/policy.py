"""Where links may point: no blocked domain, and no private network unless allowed."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from shortener.config import normalise_domain
from shortener.errors import invalid
from shortener.store import Store

# Names that only ever mean something inside a private network.
_PRIVATE_SUFFIXES = (".localhost", ".local", ".internal", ".lan", ".home.arpa", ".intranet")


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


def is_private_host(host: str) -> bool:
    address = _as_ip(host)
    if address is not None:
        return not address.is_global
    return host == "localhost" or host.endswith(_PRIVATE_SUFFIXES) or "." not in host


def _as_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    return _whatwg_ipv4(host)


def _whatwg_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """Hosts that browsers read as IPv4 though they are not dotted quads: 2130706433,
    0x7f.1, 0177.0.0.1 all mean 127.0.0.1 to a browser's URL parser."""
    parts = host.split(".")
    if parts[-1] == "":
        parts.pop()
    if not parts or len(parts) > 4 or not _is_number(parts[-1]):
        return None
    try:
        numbers = [_parse_number(part) for part in parts]
    except ValueError:
        return None
    if any(number > 255 for number in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        return None
    value = numbers[-1]
    for index, number in enumerate(numbers[:-1]):
        value += number * 256 ** (3 - index)
    return ipaddress.IPv4Address(value)


def _is_number(part: str) -> bool:
    try:
        _parse_number(part)
    except ValueError:
        return False
    return True


def _parse_number(part: str) -> int:
    if part.lower().startswith("0x"):
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part.startswith("0"):
        return int(part[1:], 8)
    if not part.isdigit():
        raise ValueError(part)
    return int(part)
