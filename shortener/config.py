"""Every setting, typed, read once from the environment and validated at start-up."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import SplitResult, unquote, urlsplit

T = TypeVar("T")

DEFAULT_SQLITE_URL = "sqlite:///shortener.db"
# Links to private and local network addresses: allowed, denied without an API key, denied.
PRIVATE_TARGET_MODES = ("allow", "deny-keyless", "deny")


class ConfigError(Exception):
    """A bad setting; its message is one line that names the variable."""


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = DEFAULT_SQLITE_URL
    redis_url: str | None = None
    base_url: str = "http://127.0.0.1:8080"
    public_create: bool = False
    # Per client address, for keyless creation: a burst of this many, refilled per minute.
    public_create_per_minute: int = 10
    # Creates per API key per minute, and 404s per client address per minute (a scanner
    # walking random codes is slowed, then refused), shared through Redis when it is up.
    creates_per_key_per_minute: int = 600
    not_found_per_minute: int = 120
    # Domains no link may point at (a file, one a line), besides those added through the API.
    blocklist: tuple[str, ...] = ()
    # allow | deny-keyless | deny: links to private and local network addresses.
    private_targets: str = "deny-keyless"
    # A client that takes longer than this to send its body gets 408.
    body_timeout: float = 10.0
    l1_ttl: float = 30.0
    l1_size: int = 100_000
    # Unknown codes are remembered for less time than links, so a new alias shows up quickly.
    l1_negative_ttl: float = 5.0
    # Redis keeps links longer than a worker does. Writes replace entries in place (a new
    # alias replaces the cached "unknown"), so unknown codes can be kept as long as links.
    l2_ttl: float = 300.0
    l2_negative_ttl: float = 300.0
    click_flush_interval: float = 1.0
    # Counts kept for codes while the store is down; beyond this they are dropped and counted.
    click_buffer_max_codes: int = 100_000
    # Visit analytics (off: clicks only), a MaxMind-format country database (unset: every
    # country unknown), how long hourly counts are kept, and how many counts a worker holds
    # while the store is down.
    analytics: bool = True
    geoip_db: str | None = None
    visits_retention_days: int = 400
    visits_buffer_max_rows: int = 200_000
    db_pool_min: int = 2
    db_pool_max: int = 10
    db_connect_timeout: float = 1.0
    db_statement_timeout: float = 1.0
    # The database URL is PgBouncer in transaction pooling mode: no session state survives a
    # transaction, so no prepared statement cache and no statement_timeout at connection start.
    db_transaction_pooling: bool = False
    redis_timeout: float = 0.05
    trusted_proxies: tuple[IPNetwork, ...] = field(default_factory=tuple)
    keepalive_timeout: float = 75.0
    # Connections the kernel queues for accept() per listening socket (gunicorn's default):
    # a burst after a stall waits there instead of being refused.
    backlog: int = 2048
    # Per-request latency metrics; off only to measure what they cost.
    metrics: bool = True
    workers: int = 1
    log_level: str = "info"

    @property
    def base_host(self) -> str:
        return (urlsplit(self.base_url).hostname or "").lower()

    def short_url(self, code: str) -> str:
        return f"{self.base_url}/{code}"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite:")

    @property
    def sqlite_path(self) -> str:
        return self.database_url.removeprefix("sqlite://").removeprefix("/") or "shortener.db"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        reader = _Reader(env)
        defaults = cls()
        return cls(
            database_url=reader.read(
                "SHORTENER_DATABASE_URL", _database_url, defaults.database_url
            ),
            redis_url=reader.read("SHORTENER_REDIS_URL", _redis_url, None),
            base_url=reader.read("SHORTENER_BASE_URL", _base_url, defaults.base_url),
            public_create=reader.read("SHORTENER_PUBLIC_CREATE", _boolean, False),
            public_create_per_minute=reader.read(
                "SHORTENER_PUBLIC_CREATE_PER_MINUTE",
                _positive_int,
                defaults.public_create_per_minute,
            ),
            creates_per_key_per_minute=reader.read(
                "SHORTENER_CREATES_PER_KEY_PER_MINUTE",
                _positive_int,
                defaults.creates_per_key_per_minute,
            ),
            not_found_per_minute=reader.read(
                "SHORTENER_NOT_FOUND_PER_MINUTE", _positive_int, defaults.not_found_per_minute
            ),
            blocklist=reader.read("SHORTENER_BLOCKLIST_FILE", _blocklist_file, ()),
            private_targets=reader.read(
                "SHORTENER_PRIVATE_TARGETS", _private_targets, defaults.private_targets
            ),
            body_timeout=reader.read(
                "SHORTENER_BODY_TIMEOUT", _positive_float, defaults.body_timeout
            ),
            l1_ttl=reader.read("SHORTENER_L1_TTL", _non_negative_float, defaults.l1_ttl),
            l1_size=reader.read("SHORTENER_L1_SIZE", _non_negative_int, defaults.l1_size),
            l1_negative_ttl=reader.read(
                "SHORTENER_L1_NEGATIVE_TTL", _non_negative_float, defaults.l1_negative_ttl
            ),
            l2_ttl=reader.read("SHORTENER_L2_TTL", _positive_float, defaults.l2_ttl),
            l2_negative_ttl=reader.read(
                "SHORTENER_L2_NEGATIVE_TTL", _positive_float, defaults.l2_negative_ttl
            ),
            click_flush_interval=reader.read(
                "SHORTENER_CLICK_FLUSH_INTERVAL", _positive_float, defaults.click_flush_interval
            ),
            click_buffer_max_codes=reader.read(
                "SHORTENER_CLICK_BUFFER_MAX_CODES", _positive_int, defaults.click_buffer_max_codes
            ),
            analytics=reader.read("SHORTENER_ANALYTICS", _boolean, True),
            geoip_db=reader.read("SHORTENER_GEOIP_DB", _geoip_db, None),
            visits_retention_days=reader.read(
                "SHORTENER_VISITS_RETENTION_DAYS", _positive_int, defaults.visits_retention_days
            ),
            visits_buffer_max_rows=reader.read(
                "SHORTENER_VISITS_BUFFER_MAX_ROWS", _positive_int, defaults.visits_buffer_max_rows
            ),
            db_pool_min=reader.read("SHORTENER_DB_POOL_MIN", _non_negative_int, 2),
            db_pool_max=reader.read("SHORTENER_DB_POOL_MAX", _positive_int, 10),
            db_connect_timeout=reader.read(
                "SHORTENER_DB_CONNECT_TIMEOUT", _positive_float, defaults.db_connect_timeout
            ),
            db_statement_timeout=reader.read(
                "SHORTENER_DB_STATEMENT_TIMEOUT", _positive_float, defaults.db_statement_timeout
            ),
            db_transaction_pooling=reader.read("SHORTENER_DB_TRANSACTION_POOLING", _boolean, False),
            redis_timeout=reader.read(
                "SHORTENER_REDIS_TIMEOUT", _positive_float, defaults.redis_timeout
            ),
            trusted_proxies=reader.read("SHORTENER_TRUSTED_PROXIES", _networks, ()),
            keepalive_timeout=reader.read(
                "SHORTENER_KEEPALIVE_TIMEOUT", _positive_float, defaults.keepalive_timeout
            ),
            backlog=reader.read("SHORTENER_BACKLOG", _positive_int, defaults.backlog),
            metrics=reader.read("SHORTENER_METRICS", _boolean, True),
            workers=reader.read("SHORTENER_WORKERS", _positive_int, 1),
            log_level=reader.read("SHORTENER_LOG_LEVEL", _log_level, "info"),
        ).checked()

    def checked(self) -> Settings:
        if self.db_pool_min > self.db_pool_max:
            raise ConfigError(
                f"SHORTENER_DB_POOL_MIN: {self.db_pool_min} is above "
                f"SHORTENER_DB_POOL_MAX {self.db_pool_max}"
            )
        return self


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def read(self, name: str, parse: Callable[[str], T], default: T) -> T:
        raw = self._env.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return parse(raw.strip())
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc} (got {raw!r})") from None


def _boolean(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be true or false")


def _number(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("must be a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("must be a finite number")
    return value


def _non_negative_float(raw: str) -> float:
    value = _number(raw)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _positive_float(raw: str) -> float:
    value = _number(raw)
    if value <= 0:
        raise ValueError("must be above zero")
    return value


def _integer(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("must be a whole number") from None


def _non_negative_int(raw: str) -> int:
    value = _integer(raw)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _positive_int(raw: str) -> int:
    value = _integer(raw)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _database_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme == "sqlite":
        path = raw.removeprefix("sqlite://")
        if not path.startswith("/") or path == "/":
            raise ValueError("must look like sqlite:///relative/path or sqlite:////absolute/path")
        return raw
    if parts.scheme in {"postgresql", "postgres"}:
        # The multi-host form (host1:5432,host2:5432) names a primary and its standbys.
        hosts = parts.netloc.rpartition("@")[2]
        if not hosts and "host=" not in parts.query:
            raise ValueError("must name a host, as in postgresql://user@host:5432/db")
        for host in hosts.split(",") if hosts else ():
            _host_and_port(host, default_port=5432)
        return raw
    raise ValueError("must start with postgresql:// or sqlite:///")


@dataclass(frozen=True, slots=True)
class SentinelUrl:
    """``redis+sentinel://[:password@]host:port[,host:port...]/primary-name[/db]``: the
    Sentinels to ask for the current primary of ``primary``; the password is the servers'."""

    sentinels: tuple[tuple[str, int], ...]
    primary: str
    db: int = 0
    password: str | None = None


SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379


def parse_sentinel_url(raw: str) -> SentinelUrl:
    scheme, _, rest = raw.partition("://")
    if scheme != SENTINEL_SCHEME:
        raise ValueError(f"must start with {SENTINEL_SCHEME}://")
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    password = unquote(userinfo.partition(":")[2]) or None
    if not hosts:
        raise ValueError("must name at least one Sentinel, as in redis+sentinel://host:26379/name")
    sentinels = tuple(_host_and_port(host, SENTINEL_PORT) for host in hosts.split(","))
    primary, _, db = path.partition("/")
    if not primary:
        raise ValueError("must name the primary after the Sentinels, as in .../mymaster/0")
    db = db.rstrip("/")
    if db and not db.isdigit():
        raise ValueError("has a bad database number")
    return SentinelUrl(sentinels, unquote(primary), int(db or 0), password)


def _host_and_port(raw: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    if raw.startswith("["):
        host, _, port = raw[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = raw.partition(":")
    if not host:
        raise ValueError(f"names an empty host in {raw!r}")
    if not port:
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("has a bad port")
    return host, int(port)


def _redis_url(raw: str) -> str:
    if raw.startswith(f"{SENTINEL_SCHEME}://"):
        parse_sentinel_url(raw)
        return raw
    parts = urlsplit(raw)
    if parts.scheme not in {"redis", "rediss", "unix"}:
        raise ValueError("must start with redis://, rediss://, unix:// or redis+sentinel://")
    _check_port(parts)
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError("must name a host, as in redis://host:6379/0")
    return raw


def _check_port(parts: SplitResult) -> None:
    try:
        parts.port  # noqa: B018 - urllib parses the port lazily; reading it is the check
    except ValueError:
        raise ValueError("has a bad port") from None


def _base_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("must be an absolute http or https URL such as https://sho.rt")
    _check_port(parts)
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    return raw.rstrip("/")


def _networks(raw: str) -> tuple[IPNetwork, ...]:
    networks = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
    return tuple(networks)


def normalise_domain(raw: str) -> str:
    """A domain as the blocklist keeps it: trimmed, lower case, no trailing dot."""
    domain = raw.strip().rstrip(".").lower()
    if not domain or any(char.isspace() or char in "/:@" for char in domain):
        raise ValueError(f"{raw!r} is not a domain name")
    return domain


def load_blocklist(path: str) -> list[str]:
    """One domain a line; blank lines and # comments are skipped."""
    lines = Path(path).read_text("utf-8").splitlines()
    entries = (line.split("#", 1)[0].strip() for line in lines)
    return [normalise_domain(entry) for entry in entries if entry]


def _blocklist_file(raw: str) -> tuple[str, ...]:
    try:
        return tuple(load_blocklist(raw))
    except OSError as exc:
        raise ValueError(f"cannot read the file: {exc.strerror}") from None


def _geoip_db(raw: str) -> str:
    import maxminddb

    try:
        maxminddb.open_database(raw).close()
    except OSError as exc:
        raise ValueError(f"cannot read the file: {exc.strerror}") from None
    except maxminddb.InvalidDatabaseError:
        raise ValueError("is not a MaxMind DB (.mmdb) file") from None
    return raw


def _private_targets(raw: str) -> str:
    if raw not in PRIVATE_TARGET_MODES:
        raise ValueError(f"must be one of {', '.join(PRIVATE_TARGET_MODES)}")
    return raw


def _log_level(raw: str) -> str:
    lowered = raw.lower()
    if lowered not in {"debug", "info", "warning", "error"}:
        raise ValueError("must be one of debug, info, warning, error")
    return lowered
