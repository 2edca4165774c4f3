"""Settings: defaults, parsing, and one clear line for every bad value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shortener.config import (
    DEFAULT_SQLITE_URL,
    ConfigError,
    SentinelUrl,
    Settings,
    parse_sentinel_url,
)

_COVERAGE = {name: value for name, value in os.environ.items() if name.startswith("COVERAGE_")}


def test_defaults_are_the_embedded_setup() -> None:
    settings = Settings.from_env({})
    assert settings.database_url == DEFAULT_SQLITE_URL and settings.is_sqlite
    assert settings.redis_url is None
    assert settings.base_url == "http://127.0.0.1:8080"
    assert settings.public_create is False


def test_values_are_parsed() -> None:
    settings = Settings.from_env(
        {
            "SHORTENER_DATABASE_URL": "postgresql://u:p@db:5432/links",
            "SHORTENER_REDIS_URL": "redis://cache:6379/0",
            "SHORTENER_BASE_URL": "https://Sho.rt/",
            "SHORTENER_PUBLIC_CREATE": "TRUE",
            "SHORTENER_L1_TTL": "2.5",
            "SHORTENER_L1_SIZE": "0",
            "SHORTENER_TRUSTED_PROXIES": "10.0.0.0/8, ::1",
        }
    )
    assert settings.base_url == "https://Sho.rt" and settings.base_host == "sho.rt"
    assert settings.public_create is True
    assert settings.l1_ttl == 2.5 and settings.l1_size == 0
    assert len(settings.trusted_proxies) == 2
    assert not settings.is_sqlite


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SHORTENER_DATABASE_URL", "mysql://db/links"),
        ("SHORTENER_DATABASE_URL", "postgresql://db:notaport/links"),
        ("SHORTENER_DATABASE_URL", "postgresql:///links"),
        ("SHORTENER_DATABASE_URL", "sqlite://relative.db"),
        ("SHORTENER_REDIS_URL", "http://cache:6379"),
        ("SHORTENER_REDIS_URL", "redis://:99999999"),
        ("SHORTENER_REDIS_URL", "redis+sentinel://s1:26379"),
        ("SHORTENER_REDIS_URL", "redis+sentinel:///mymaster"),
        ("SHORTENER_REDIS_URL", "redis+sentinel://s1:26379,s2:x/mymaster"),
        ("SHORTENER_REDIS_URL", "redis+sentinel://s1/mymaster/zero"),
        ("SHORTENER_DATABASE_URL", "postgresql://u@db1:5432,db2:nope/links"),
        ("SHORTENER_DATABASE_URL", "postgresql://u@db1:5432,/links"),
        ("SHORTENER_DB_TRANSACTION_POOLING", "sometimes"),
        ("SHORTENER_BASE_URL", "sho.rt"),
        ("SHORTENER_BASE_URL", "ftp://sho.rt"),
        ("SHORTENER_PUBLIC_CREATE", "maybe"),
        ("SHORTENER_L1_TTL", "-1"),
        ("SHORTENER_L1_TTL", "soon"),
        ("SHORTENER_L1_TTL", "nan"),
        ("SHORTENER_L1_SIZE", "1.5"),
        ("SHORTENER_L1_SIZE", "-3"),
        ("SHORTENER_CLICK_FLUSH_INTERVAL", "0"),
        ("SHORTENER_ANALYTICS", "sometimes"),
        ("SHORTENER_VISITS_RETENTION_DAYS", "0"),
        ("SHORTENER_VISITS_BUFFER_MAX_ROWS", "many"),
        ("SHORTENER_GEOIP_DB", "/nonexistent/countries.mmdb"),
        ("SHORTENER_DB_POOL_MAX", "0"),
        ("SHORTENER_TRUSTED_PROXIES", "10.0.0.0/8,nonsense"),
        ("SHORTENER_WORKERS", "0"),
        ("SHORTENER_LOG_LEVEL", "loud"),
    ],
)
def test_bad_setting_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({name: value})
    message = str(raised.value)
    assert message.startswith(f"{name}: ")
    assert "\n" not in message


def test_high_availability_urls_are_accepted() -> None:
    settings = Settings.from_env(
        {
            "SHORTENER_DATABASE_URL": "postgresql://u@db1:5432,db2:5433/links"
            "?target_session_attrs=read-write",
            "SHORTENER_REDIS_URL": "redis+sentinel://:s%40cret@s1:26379,[::1]:26380,s3/mymaster/2",
            "SHORTENER_DB_TRANSACTION_POOLING": "true",
        }
    )
    assert settings.db_transaction_pooling is True
    assert settings.redis_url is not None
    assert parse_sentinel_url(settings.redis_url) == SentinelUrl(
        sentinels=(("s1", 26379), ("::1", 26380), ("s3", 26379)),
        primary="mymaster",
        db=2,
        password="s@cret",
    )
    assert parse_sentinel_url("redis+sentinel://s1/mymaster") == SentinelUrl(
        (("s1", 26379),), "mymaster"
    )


def test_pool_min_above_max_is_refused() -> None:
    with pytest.raises(ConfigError, match="SHORTENER_DB_POOL_MIN"):
        Settings.from_env({"SHORTENER_DB_POOL_MIN": "5", "SHORTENER_DB_POOL_MAX": "2"})


@pytest.mark.parametrize(
    ("name", "value"),
    [("SHORTENER_L1_TTL", "-1"), ("SHORTENER_DATABASE_URL", "postgres://db:x/y")],
)
def test_serve_stops_with_one_line_naming_the_bad_setting(name: str, value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shortener", "serve", "--port", "1"],
        # A bare environment but for coverage's own variables, so the test command measures it.
        env={"PATH": "/usr/bin:/bin", **_COVERAGE, name: value},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0]
    assert result.stdout == ""


def test_settings_import_nothing_of_the_application(tmp_path: Path) -> None:
    blocklist = tmp_path / "blocklist.txt"
    blocklist.write_text("Evil.example.\n# a comment\n")
    script = (
        "import sys\n"
        "from shortener.config import Settings\n"
        "settings = Settings.from_env({'SHORTENER_BLOCKLIST_FILE': sys.argv[1],"
        " 'SHORTENER_PRIVATE_TARGETS': 'deny'})\n"
        "print(*settings.blocklist, *(m for m in sys.modules if m.startswith('shortener')))\n"
    )
    printed = subprocess.run(
        [sys.executable, "-c", script, str(blocklist)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert printed[0] == "evil.example"
    assert sorted(printed[1:]) == ["shortener", "shortener.config"]
