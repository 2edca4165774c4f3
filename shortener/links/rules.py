"""Input models for creating and changing links: they own every input rule of the contract."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import idna

from shortener.errors import FieldError, Problem, invalid, validation_failed
from shortener.links.codes import MAX_CODE_LENGTH, is_code, is_reserved
from shortener.links.hosts import is_same_host
from shortener.links.model import LinkChanges, LinkFilter, NewLink

MAX_URL_LENGTH = 2048
REDIRECT_STATUSES = frozenset({301, 302, 307, 308})
DEFAULT_REDIRECT_STATUS = 302
# JSON numbers above this lose precision in JavaScript clients.
MAX_VISITS_LIMIT = 2**53 - 1
MAX_TITLE_LENGTH = 512
MAX_TAGS = 10
MAX_TAG_LENGTH = 64
MAX_QUERY_LENGTH = MAX_URL_LENGTH

_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})"
)
_HOST_LABELS = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?")
_IP_LITERAL = re.compile(r"\[[0-9a-fA-F:.]+\]")
_TAG = re.compile(r"[A-Za-z0-9_-]{1,64}")


class _Collector:
    """Collects the errors of one body so that a response names every bad field at once."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    def check(self, parse: Callable[[Any], Any], raw: Any) -> Any:
        try:
            return parse(raw)
        except Problem as problem:
            self.errors.extend(problem.errors)
            return None

    def optional(self, parse: Callable[[Any], Any], raw: Any) -> Any:
        """check() for a field that may be absent or null: None then."""
        return None if raw is None else self.check(parse, raw)


def parse_new_link(body: object, own_host: str) -> NewLink:
    fields = _object(
        body, {"url", "alias", "expires_at", "max_visits", "redirect_status", "title", "tags"}
    )
    collector = _Collector()
    url = None
    if "url" in fields:
        url = collector.check(lambda raw: parse_url(raw, own_host), fields["url"])
    else:
        collector.errors.append(FieldError("url", "is required"))
    alias = collector.optional(parse_alias, fields.get("alias"))
    expires_at = collector.optional(parse_expires_at, fields.get("expires_at"))
    max_visits = collector.optional(parse_max_visits, fields.get("max_visits"))
    status = collector.optional(parse_redirect_status, fields.get("redirect_status"))
    title = collector.optional(parse_title, fields.get("title"))
    tags = collector.check(parse_tags, fields["tags"]) if "tags" in fields else ()
    if collector.errors or url is None:
        raise validation_failed(collector.errors)
    return NewLink(
        url=url,
        alias=alias,
        expires_at=expires_at,
        max_visits=max_visits,
        redirect_status=status or DEFAULT_REDIRECT_STATUS,
        title=title,
        tags=tags,
    )


def parse_link_changes(body: object, own_host: str) -> LinkChanges:
    parsers: dict[str, Callable[[Any], Any]] = {
        "url": lambda raw: parse_url(raw, own_host),
        "expires_at": _optional(parse_expires_at),
        "max_visits": _optional(parse_max_visits),
        "redirect_status": parse_redirect_status,
        "disabled": parse_disabled,
        "title": _optional(parse_title),
        "tags": parse_tags,
    }
    fields = _object(body, set(parsers))
    collector = _Collector()
    values = {name: collector.check(parsers[name], raw) for name, raw in fields.items()}
    if collector.errors:
        raise validation_failed(collector.errors)
    return LinkChanges(values)


def _object(body: object, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise Problem(400, "bad-request", "Bad request", "The body must be a JSON object.")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise validation_failed([FieldError(name, "is not a known field") for name in unknown])
    return body


def _optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def parse_or_none(raw: Any) -> Any:
        return None if raw is None else parse(raw)

    return parse_or_none


def parse_url(raw: object, own_host: str) -> str:
    if not isinstance(raw, str):
        raise invalid("url", "must be a string")
    if len(raw) > MAX_URL_LENGTH:
        raise invalid("url", f"must be at most {MAX_URL_LENGTH} characters")
    if _has_space_or_control(raw):
        raise invalid("url", "must not contain whitespace or control characters")
    if "\\" in raw:
        raise invalid("url", "must not contain backslashes")
    try:
        parts = urlsplit(raw)
    except ValueError:  # an unclosed or invalid bracketed host: http://[::1, http://[1.2.3.4]/
        raise invalid("url", "has a host that is not a valid address or name") from None
    if parts.scheme.lower() not in {"http", "https"}:
        raise invalid("url", "must be an absolute http or https URL")
    if not raw[len(parts.scheme) :].startswith("://") or not parts.netloc:
        raise invalid("url", "must be an absolute http or https URL with a host")
    if "@" in parts.netloc:
        raise invalid("url", "must not contain user info (user:password@)")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port == -1 or port == 0:
        raise invalid("url", "has an invalid port")
    host = parts.hostname or ""
    ascii_host = _ascii_host(host)
    if is_same_host(ascii_host, own_host):
        raise invalid("url", "must not point at this service (it would loop)")
    netloc = parts.netloc
    if ascii_host != host:
        netloc = ascii_host + (f":{port}" if port is not None else "")
    # The rest is kept exactly as sent; only characters a Location header cannot carry are
    # percent-encoded as UTF-8, as a browser would send them.
    rest = raw[len(parts.scheme) + 3 + len(parts.netloc) :]
    scheme = raw[: len(parts.scheme)]
    url = f"{scheme}://{netloc}{_percent_encode_non_ascii(rest)}"
    if len(url) > MAX_URL_LENGTH:
        raise invalid("url", f"must be at most {MAX_URL_LENGTH} characters once encoded")
    return url


def _has_space_or_control(raw: str) -> bool:
    if raw.isascii():  # the same test, without a lookup per character
        return " " in raw or not raw.isprintable()
    return any(char.isspace() or unicodedata.category(char) in {"Cc", "Cf"} for char in raw)


def _ascii_host(host: str) -> str:
    if not host:
        raise invalid("url", "must have a host")
    if host.isascii():
        lowered = host.lower()
        if _IP_LITERAL.fullmatch(f"[{lowered}]"):
            return host
        if not _HOST_LABELS.fullmatch(lowered):
            raise invalid("url", "has a host with characters a host name cannot have")
        if "xn--" in lowered:
            try:
                idna.decode(lowered.rstrip("."))
            except idna.IDNAError:
                raise invalid("url", "has a punycode host name that is not valid") from None
        return host
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError:
        raise invalid("url", "has an internationalised host name that is not valid") from None


def _percent_encode_non_ascii(text: str) -> str:
    if text.isascii():
        return text
    return "".join(
        char if char.isascii() else "".join(f"%{byte:02X}" for byte in char.encode("utf-8"))
        for char in text
    )


def parse_alias(raw: object) -> str:
    if not isinstance(raw, str):
        raise invalid("alias", "must be a string")
    if not 1 <= len(raw) <= MAX_CODE_LENGTH:
        raise invalid("alias", f"must be 1 to {MAX_CODE_LENGTH} characters")
    if not is_code(raw):
        raise invalid("alias", "may use only A-Z a-z 0-9 _ - and must not start with _ or -")
    if is_reserved(raw):
        raise invalid("alias", "is a path the service uses itself")
    return raw


def parse_expires_at(raw: object) -> datetime:
    moment = parse_moment("expires_at", raw)
    if moment <= datetime.now(UTC):
        raise invalid("expires_at", "must be in the future")
    return moment


def parse_moment(field_name: str, raw: object) -> datetime:
    """An RFC 3339 date-time with an offset, in UTC."""
    if not isinstance(raw, str):
        raise invalid(field_name, "must be an RFC 3339 date-time string")
    if not _RFC3339.fullmatch(raw):
        raise invalid(
            field_name, "must be an RFC 3339 date-time with an offset, like 2030-01-01T00:00:00Z"
        )
    try:
        return datetime.fromisoformat(raw.upper().replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        raise invalid(field_name, "is not a real date and time") from None
    except OverflowError:  # 9999-12-31T23:59:59-23:59 is past the year 9999 in UTC
        raise invalid(field_name, "must fall within the years 1 to 9999 in UTC") from None


def _whole_number(raw: object) -> int | None:
    """A JSON integer, and 3.0 as well: JSON Schema, and so the OpenAPI document, calls it one."""
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    return None


def parse_max_visits(raw: object) -> int:
    number = _whole_number(raw)
    if number is None:
        raise invalid("max_visits", "must be an integer")
    if number < 1:
        raise invalid("max_visits", "must be at least 1")
    if number > MAX_VISITS_LIMIT:
        raise invalid("max_visits", f"must be at most {MAX_VISITS_LIMIT}")
    return number


def parse_redirect_status(raw: object) -> int:
    status = _whole_number(raw)
    if status not in REDIRECT_STATUSES:
        raise invalid("redirect_status", "must be one of 301, 302, 307, 308")
    return status


def parse_disabled(raw: object) -> bool:
    if not isinstance(raw, bool):
        raise invalid("disabled", "must be true or false")
    return raw


def parse_title(raw: object) -> str:
    if not isinstance(raw, str):
        raise invalid("title", "must be a string or null")
    if len(raw) > MAX_TITLE_LENGTH:
        raise invalid("title", f"must be at most {MAX_TITLE_LENGTH} characters")
    return raw


def parse_tags(raw: object) -> tuple[str, ...]:
    """Tags in lower case, duplicates dropped, in the order first given."""
    if not isinstance(raw, list):
        raise invalid("tags", "must be a list of strings")
    # Counted as given, duplicates too: the OpenAPI document's maxItems says so.
    if len(raw) > MAX_TAGS:
        raise invalid("tags", f"must hold at most {MAX_TAGS} tags")
    return tuple(dict.fromkeys(parse_tag(item, "tags") for item in raw))


def parse_tag(raw: object, field: str) -> str:
    if not isinstance(raw, str) or not _TAG.fullmatch(raw):
        raise invalid(
            field, f"each tag must be 1 to {MAX_TAG_LENGTH} characters of a-z 0-9 _ - (any case)"
        )
    return raw.lower()


def _parse_tag_parameter(raw: str) -> str:
    return parse_tag(raw, "tag")


def parse_filter(text: str | None, tags: list[str]) -> LinkFilter:
    """The `q` and `tag` query parameters of a listing."""
    collector = _Collector()
    if text is not None:
        if len(text) > MAX_QUERY_LENGTH:
            collector.errors.append(
                FieldError("q", f"must be at most {MAX_QUERY_LENGTH} characters")
            )
        elif any(unicodedata.category(char) == "Cc" for char in text):
            collector.errors.append(FieldError("q", "must not contain control characters"))
    wanted = tuple(dict.fromkeys(collector.check(_parse_tag_parameter, raw) for raw in tags))
    if len(tags) > MAX_TAGS:
        collector.errors.append(FieldError("tag", f"at most {MAX_TAGS} tags"))
    if collector.errors:
        raise validation_failed(collector.errors)
    return LinkFilter(text=text or None, tags=wanted)
