"""What a URL's host means: an address in any form a browser reads, or a name.

Names are never resolved: DNS can point a public name at a private address at any moment,
so a check at creation could promise nothing. Names that announce a private address (by
suffix, or by carrying an IP literal in their labels) are recognised by their text.
"""

from __future__ import annotations

import functools
import ipaddress
import re

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Names that only ever mean something inside a private network.
_PRIVATE_SUFFIXES = (
    ".localhost",
    ".localdomain",
    ".local",
    ".internal",
    ".lan",
    ".home.arpa",
    ".intranet",
)
_LOOPBACK_NAMES = ("localhost", "localhost.localdomain")
_THIS_MACHINE = frozenset(
    ipaddress.ip_address(text) for text in ("127.0.0.1", "::1", "0.0.0.0", "::")
)
# Deprecated IPv4-compatible addresses (::a.b.c.d): no public target uses them.
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
# The NAT64 well-known prefix: 64:ff9b::a.b.c.d reaches a.b.c.d through a NAT64 gateway.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# An IPv4 literal spelled inside a label, as wildcard DNS services (nip.io, sslip.io) answer
# it: 10-0-0-1.example or app-127-0-0-1.example.
# A part of a browser's IPv4 host: hexadecimal, octal or decimal.
_NUMBER = re.compile(r"0[xX][0-9a-fA-F]*|0[0-7]+|[0-9]+")
_DASHED_IPV4 = re.compile(r"(?:^|-)(\d{1,3}-\d{1,3}-\d{1,3}-\d{1,3})$")


def normalise_host(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


def as_ip(host: str) -> IPAddress | None:
    """The address `host` means to a browser, or None for a name."""
    host = normalise_host(host)
    if ":" not in host and not _is_number(host.rsplit(".", 1)[-1]):
        # A name: only IPv6 has colons, and every IPv4 spelling ends in a number. Most
        # hosts are names, and asking ipaddress costs two exceptions.
        return None
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    return _whatwg_ipv4(host)


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries and reaches (mapped, compatible, NAT64,
    6to4), or None."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_private_host(host: str) -> bool:
    host = normalise_host(host)
    address = as_ip(host)
    if address is not None:
        return _is_private_address(address)
    if host in _LOOPBACK_NAMES or host.endswith(_PRIVATE_SUFFIXES) or "." not in host:
        return True
    return any(_is_private_address(embedded) for embedded in _ipv4_in_labels(host))


def is_same_host(host: str, own_host: str) -> bool:
    """Whether `host` reaches the service at `own_host`: the same name, the same address in
    any spelling, or this machine in any spelling when the service is on it."""
    own_name, own_address, own_is_this_machine = _own_host(own_host)
    host = normalise_host(host)
    if host == own_name:
        return True
    address = as_ip(host)
    if address is None:
        return own_is_this_machine and _is_loopback_name(host)
    canonical = _canonical(address)
    if canonical == own_address:
        return True
    return own_is_this_machine and canonical in _THIS_MACHINE


@functools.lru_cache(maxsize=8)
def _own_host(own_host: str) -> tuple[str, IPAddress | None, bool]:
    """The service's host, read once (it is the same for every create): its normalised
    name, its canonical address if it is one, and whether it is this machine."""
    name = normalise_host(own_host)
    address = as_ip(name)
    return name, _canonical(address) if address is not None else None, _is_this_machine(name)


def _is_private_address(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address in _IPV4_COMPATIBLE:
        return True
    embedded = embedded_ipv4(address)
    return not (embedded or address).is_global


def _canonical(address: IPAddress) -> IPAddress:
    return embedded_ipv4(address) or address


def _is_this_machine(host: str) -> bool:
    """The names and addresses that mean "this machine" wherever it is asked: localhost
    resolves to 127.0.0.1 and ::1, and 0.0.0.0 or :: connect to whatever listens locally.
    Other loopback addresses (127.0.0.2) are hosts of their own."""
    address = as_ip(host)
    if address is None:
        return _is_loopback_name(host)
    return _canonical(address) in _THIS_MACHINE


def _is_loopback_name(host: str) -> bool:
    return host in _LOOPBACK_NAMES or host.endswith(".localhost")


def _ipv4_in_labels(name: str) -> list[ipaddress.IPv4Address]:
    """IPv4 literals a name spells out: four numeric labels in a row (127.0.0.1.nip.io) or
    one dashed label (127-0-0-1.sslip.io)."""
    labels = name.split(".")
    found = []
    for index in range(len(labels) - 3):
        quad = ".".join(labels[index : index + 4])
        if all(label.isdigit() for label in labels[index : index + 4]):
            found.extend(_strict_ipv4(quad))
    for label in labels:
        match = _DASHED_IPV4.search(label)
        if match:
            found.extend(_strict_ipv4(match[1].replace("-", ".")))
    return found


def _strict_ipv4(text: str) -> list[ipaddress.IPv4Address]:
    try:
        return [ipaddress.IPv4Address(text)]
    except ValueError:
        return []


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
    return _NUMBER.fullmatch(part) is not None


def _parse_number(part: str) -> int:
    if _NUMBER.fullmatch(part) is None:
        raise ValueError(part)
    if part[:2].lower() == "0x":
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part.startswith("0"):
        return int(part[1:], 8)
    return int(part)
