"""Input rules as pure functions, plus a fuzz of the URL and alias validators."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shortener.errors import Problem
from shortener.links import codes
from shortener.links.rules import parse_alias, parse_expires_at, parse_url
from shortener.web.api import MAX_LINK_ID, decode_cursor, encode_cursor

OWN = "sho.rt"


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("https://example.com", "https://example.com"),
        ("HTTPS://Example.COM/Path?Q=1#Frag", "HTTPS://Example.COM/Path?Q=1#Frag"),
        ("http://example.com:8080/a%20b", "http://example.com:8080/a%20b"),
        ("http://[2001:db8::1]:8080/x", "http://[2001:db8::1]:8080/x"),
        ("http://192.0.2.1/", "http://192.0.2.1/"),
        ("https://münchen.example:444/ä", "https://xn--mnchen-3ya.example:444/%C3%A4"),
        (
            "https://example.com/?next=https://other.example/",
            "https://example.com/?next=https://other.example/",
        ),
        ("https://sho.rt.example.com/", "https://sho.rt.example.com/"),
    ],
)
def test_urls_are_kept_as_sent_but_for_idna_and_non_ascii(raw: str, stored: str) -> None:
    assert parse_url(raw, OWN) == stored


@pytest.mark.parametrize(
    "raw",
    [
        "https://ex ample.com",
        "https://example.com\\@evil.example/",
        "https://evil.example\\.example.com/",
        "http://exa<mple.com/",
        "https://xn--.example/",
        "https://\u0430\u0440\u0440\u04cf\u0435.com\u200b/",
        "https://sho.rt./",
        "http://127.0.0.1:0/",
    ],
)
def test_hostile_urls_are_refused(raw: str) -> None:
    with pytest.raises(Problem) as raised:
        parse_url(raw, OWN)
    assert raised.value.status == 400
    assert raised.value.errors[0].field == "url"


def test_homograph_host_is_kept_in_punycode() -> None:
    stored = parse_url("https://\u0430\u0440\u0440\u04cf\u0435.com/", OWN)
    assert stored == "https://xn--80ak6aa92e.com/"


def test_a_generated_reserved_word_is_drawn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CSPRNG spells "HealthZ" first (a reserved path in any case), then "abc1234".
    draws = iter(
        [bytes(codes.ALPHABET.index(char) for char in code) for code in ("HealthZ", "abc1234")]
    )
    monkeypatch.setattr(codes.secrets, "token_bytes", lambda size: next(draws))
    assert codes.is_reserved("HealthZ")
    assert codes.generate() == "abc1234"
    assert next(draws, None) is None


def test_generated_characters_are_drawn_evenly(monkeypatch: pytest.MonkeyPatch) -> None:
    # Bytes from 248 up would favour the first 8 characters: they are drawn again.
    # Byte n below 248 is character n % 62: 0 and 62 are "a", 61, 247 and 123 are "9".
    draws = iter([bytes([248, 255, 0, 61, 62, 247, 123, 249, 1]), bytes([2, 250, 3])])
    monkeypatch.setattr(codes.secrets, "token_bytes", lambda size: next(draws))
    assert codes.generate() == "a9a99bc"
    assert next(draws, None) is None


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300))
def test_url_validator_never_crashes(raw: str) -> None:
    try:
        url = parse_url(raw, OWN)
    except Problem as problem:
        assert problem.status == 400
    else:
        assert url.isascii()
        assert not any(char in url for char in "\r\n\t ")


@settings(max_examples=300, deadline=None)
@given(
    st.from_regex(
        r"https?://[a-zA-Z0-9.\-\u00e0-\u00ff]{1,30}(:[0-9]{1,5})?/[ -~\u00a0-\u00ff]{0,40}"
    )
)
def test_url_validator_never_crashes_on_url_shaped_text(raw: str) -> None:
    try:
        url = parse_url(raw, OWN)
    except Problem as problem:
        assert problem.status == 400
    else:
        assert url.isascii() and url.startswith("http")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_alias_validator_never_crashes(raw: str) -> None:
    try:
        alias = parse_alias(raw)
    except Problem as problem:
        assert problem.status == 400
    else:
        assert codes.is_code(alias) and not codes.is_reserved(alias)


# Hosts in brackets, well formed or not: IPv6, IPv4, mixed, unclosed, with ports.
_BRACKETED = st.builds(
    lambda inside, close, port, path: f"http://[{inside}{close}{port}/{path}",
    st.from_regex(r"[0-9a-fA-F:.%]{0,40}", fullmatch=True),
    st.sampled_from(["]", "", "]]", "[]"]),
    st.sampled_from(["", ":80", ":0", ":99999", ":"]),
    st.text(alphabet="abc/?#", max_size=5),
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_BRACKETED, st.ip_addresses().map(lambda ip: f"http://[{ip}]/")))
def test_url_validator_never_crashes_on_bracketed_hosts(raw: str) -> None:
    try:
        url = parse_url(raw, OWN)
    except Problem as problem:
        assert problem.status == 400
    else:
        assert url.isascii() and url.startswith("http://[")


@settings(max_examples=300, deadline=None)
@given(
    # Any date, and the first and last days a datetime holds, where an offset overflows.
    st.one_of(
        st.datetimes(),
        st.datetimes(min_value=datetime(9999, 12, 31)),
        st.datetimes(max_value=datetime(1, 1, 1, 23, 59, 59)),
    ),
    st.one_of(
        st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1),
        st.sampled_from([-(24 * 60 - 1), 24 * 60 - 1]),
    ),
    st.sampled_from(["T", "t", " "]),
)
def test_expiry_validator_never_crashes_at_extreme_offsets(
    moment: datetime, offset_minutes: int, separator: str
) -> None:
    sign = "-" if offset_minutes < 0 else "+"
    hours, minutes = divmod(abs(offset_minutes), 60)
    raw = f"{moment:%Y-%m-%d}{separator}{moment:%H:%M:%S}{sign}{hours:02d}:{minutes:02d}"
    try:
        parse_expires_at(raw)
    except Problem as problem:
        assert problem.status == 400


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.integers(min_value=0, max_value=10**25).map(encode_cursor),
        # Around the largest id the stores hold, where 19 digits no longer fit 64 bits.
        st.integers(min_value=MAX_LINK_ID - 10**6, max_value=10**19).map(encode_cursor),
        st.text(max_size=40),
    )
)
def test_cursor_decoder_never_passes_an_id_the_stores_cannot_hold(raw: str) -> None:
    try:
        link_id = decode_cursor(raw)
    except Problem as problem:
        assert problem.status == 400
    else:
        assert 0 <= link_id <= MAX_LINK_ID


@pytest.mark.parametrize("char", [chr(code) for code in [*range(0x21), 0x7F, 0x85, 0xA0, 0x200B]])
def test_whitespace_and_control_characters_anywhere_are_refused(char: str) -> None:
    for raw in (f"https://example.com/a{char}b", f"https://example.com/?q={char}"):
        with pytest.raises(Problem) as raised:
            parse_url(raw, OWN)
        assert raised.value.errors[0].message == "must not contain whitespace or control characters"


def test_every_other_printable_ascii_character_is_kept_in_a_path() -> None:
    chars = "".join(chr(code) for code in range(0x21, 0x7F) if chr(code) not in "\\#?")
    assert parse_url(f"https://example.com/{chars}", OWN) == f"https://example.com/{chars}"
