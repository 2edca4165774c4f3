"""The web page, its static files, the browser security headers and the QR code endpoint."""

from __future__ import annotations

import gzip
import hashlib
import re
import struct
import zlib
from typing import Any

import pytest
import segno

from shortener.web import qr
from shortener.web.page import CONTENT_SECURITY_POLICY
from tests.conftest import Keys
from tests.contract import ContractClient

LINKS = "/api/v1/links"
HTML = {"Accept": "text/html,application/xhtml+xml"}
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
ASSET_URL = re.compile(r'"(/static/[A-Za-z0-9_.-]+)"')
QUIET_ZONE = 4


async def create(client: ContractClient, key: str, **body: Any) -> dict[str, Any]:
    reply = await client.post(LINKS, json=body, headers={"Authorization": f"Bearer {key}"})
    assert reply.status == 201, reply.body
    result: dict[str, Any] = reply.json()
    return result


def assert_security_headers(headers: Any) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == value, name


def test_csp_is_the_strict_policy_of_the_issue() -> None:
    assert CONTENT_SECURITY_POLICY == (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )


async def test_page_is_html_revalidated_each_visit_with_security_headers(
    client: ContractClient,
) -> None:
    reply = await client.get("/", headers=HTML)
    assert reply.status == 200
    assert reply.content_type == "text/html"
    assert reply.headers["Cache-Control"] == "no-cache"
    assert_security_headers(reply.headers)
    page = reply.body.decode()
    # Under the CSP nothing inline would run or apply anyway; the page must not rely on it.
    for tag in re.findall(r"<script\b[^>]*>", page):
        assert 'src="/static/' in tag, tag
    assert "<style" not in page and " style=" not in page
    assert not re.search(r"\son[a-z]+=", page), "inline event handler"
    assert re.search(r'<script type="module" src="/static/app\.[0-9a-f]{10}\.js">', page)
    assert re.search(r'<link rel="stylesheet" href="/static/app\.[0-9a-f]{10}\.css">', page)

    again = await client.get("/", headers={"If-None-Match": reply.headers["ETag"]})
    assert again.status == 304 and again.body == b""


async def test_static_files_have_hashed_names_and_are_immutable(client: ContractClient) -> None:
    page = (await client.get("/")).body.decode()
    urls = set(ASSET_URL.findall(page))
    assert {url.split(".")[0] for url in urls} == {
        "/static/app",
        "/static/icon",
        "/static/stats",
        "/static/uplot",
    }
    types = {"css": "text/css", "js": "text/javascript", "svg": "image/svg+xml"}
    for url in urls:
        # The contract client's templates only know {code}: the raw client fetches files.
        async with client.raw.get(url, headers={"Accept-Encoding": "identity"}) as response:
            body = await response.read()
            assert response.status == 200, url
            assert response.content_type == types[url.rsplit(".", 1)[1]]
            assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
            assert_security_headers(response.headers)
        assert url.split(".")[1] == hashlib.sha256(body).hexdigest()[:10]
        async with client.raw.get(
            url, headers={"Accept-Encoding": "gzip"}, auto_decompress=False
        ) as response:
            assert response.headers["Content-Encoding"] == "gzip"
            assert gzip.decompress(await response.read()) == body


async def test_static_names_without_the_current_hash_are_not_found(
    client: ContractClient,
) -> None:
    for name in ("app.css", "app.0000000000.css", "index.html", "..%2Fpage.py"):
        async with client.raw.get(f"/static/{name}") as response:
            assert response.status == 404, name
            assert response.content_type == "application/problem+json"


async def test_api_answers_carry_security_headers(client: ContractClient, keys: Keys) -> None:
    assert_security_headers((await client.get(LINKS, headers=keys.of(keys.alice))).headers)
    assert_security_headers((await client.get(LINKS)).headers)


async def test_redirects_stay_bare_of_page_headers(client: ContractClient, keys: Keys) -> None:
    link = await create(client, keys.alice, url="https://example.com/landing")
    reply = await client.get(f"/{link['code']}")
    assert reply.status == 302
    assert not set(SECURITY_HEADERS) & set(reply.headers)


@pytest.mark.parametrize("gone", [False, True])
async def test_miss_pages_share_the_look_and_leak_nothing(
    client: ContractClient, keys: Keys, gone: bool
) -> None:
    code = "secret-campaign"
    target = "https://private.example.org/confidential/plan"
    if gone:
        await create(client, keys.alice, url=target, alias=code)
        assert (await client.delete(f"{LINKS}/{code}", headers=keys.of(keys.alice))).status == 204
    reply = await client.get(f"/{code}", headers=HTML)
    assert reply.status == (410 if gone else 404)
    assert reply.content_type == "text/html"
    assert_security_headers(reply.headers)
    page = reply.body.decode()
    assert code not in page and "private.example.org" not in page and "confidential" not in page
    stylesheet = re.search(r'href="(/static/app\.[0-9a-f]{10}\.css)"', page)
    assert stylesheet is not None
    async with client.raw.get(stylesheet.group(1)) as response:
        assert response.status == 200


def svg_dark_modules(svg: bytes) -> set[tuple[int, int]]:
    """The dark modules that segno's SVG path draws: M/m move, h draws a run of modules."""
    path = re.search(rb' d="([^"]+)"', svg)
    assert path is not None
    x = y = 0.0
    dark = set()
    for command, arguments in re.findall(r"([Mmh])([-0-9. ]+)", path.group(1).decode()):
        numbers = [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", arguments)]
        if command == "M":
            x, y = numbers
        elif command == "m":
            x, y = x + numbers[0], y + numbers[1]
        else:
            dark |= {(int(y) - QUIET_ZONE, int(x) - QUIET_ZONE + i) for i in range(int(numbers[0]))}
            x += numbers[0]
    return dark


def png_pixels(png: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and rows (one byte a pixel) of a 1-bit greyscale PNG, in pure Python."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    chunks: dict[bytes, bytes] = {}
    position = 8
    while position < len(png):
        (length,) = struct.unpack(">I", png[position : position + 4])
        kind = png[position + 4 : position + 8]
        data = png[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", png[position + 8 + length : position + 12 + length])
        assert zlib.crc32(kind + data) == crc, kind
        chunks[kind] = chunks.get(kind, b"") + data
        position += 12 + length
    kinds = list(chunks)
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (depth, colour, interlace) == (1, 0, 0)
    raw = zlib.decompress(chunks[b"IDAT"])
    stride = (width + 7) // 8
    previous = bytearray(stride)
    rows = []
    for y in range(height):
        kind, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for i in range(stride):
            if kind == 1:  # Sub
                line[i] = (line[i] + (line[i - 1] if i else 0)) & 0xFF
            elif kind == 2:  # Up
                line[i] = (line[i] + previous[i]) & 0xFF
            else:
                assert kind == 0, f"PNG filter {kind}"
        previous = line
        rows.append(bytes((line[x // 8] >> (7 - x % 8)) & 1 for x in range(width)))
    return width, height, rows


def expected_dark_modules(short_url: str) -> set[tuple[int, int]]:
    matrix = segno.make(short_url, error="m", micro=False).matrix
    return {(r, c) for r, row in enumerate(matrix) for c, bit in enumerate(row) if bit}


async def test_qr_svg_encodes_the_short_url(client: ContractClient, keys: Keys) -> None:
    link = await create(client, keys.alice, url="https://example.com/qr")
    reply = await client.get(f"{LINKS}/{link['code']}/qr", headers=keys.of(keys.alice))
    assert reply.status == 200 and reply.content_type == "image/svg+xml"
    assert reply.headers["Cache-Control"] == "private, max-age=3600"
    assert_security_headers(reply.headers)
    assert svg_dark_modules(reply.body) == expected_dark_modules(link["short_url"])
    size = segno.make(link["short_url"], error="m").symbol_size(scale=4)
    assert f'viewBox="0 0 {size[0]} {size[1]}"'.encode() in reply.body
    assert b"<script" not in reply.body


async def test_qr_png_decodes_to_the_short_urls_modules(client: ContractClient, keys: Keys) -> None:
    link = await create(client, keys.alice, url="https://example.com/png", alias="printed")
    for scale in (None, 3):
        query = "?format=png" + (f"&scale={scale}" if scale else "")
        reply = await client.get(f"{LINKS}/printed/qr{query}", headers=keys.of(keys.alice))
        assert reply.status == 200 and reply.content_type == "image/png"
        width, height, rows = png_pixels(reply.body)
        expected = expected_dark_modules(link["short_url"])
        modules = max(c for _, c in expected) + 1 + 2 * QUIET_ZONE
        module_px = scale or qr.DEFAULT_SCALE["png"]
        assert width == height == modules * module_px
        centre = module_px // 2
        dark = {
            (r - QUIET_ZONE, c - QUIET_ZONE)
            for r in range(modules)
            for c in range(modules)
            if rows[r * module_px + centre][c * module_px + centre] == 0
        }
        assert dark == expected


async def test_qr_follows_the_links_visibility_rules(client: ContractClient, keys: Keys) -> None:
    link = await create(client, keys.alice, url="https://example.com/mine")
    path = f"{LINKS}/{link['code']}/qr"
    assert (await client.get(path)).status == 401
    assert (await client.get(path, headers={"Authorization": "Bearer sk_wrong"})).status == 401
    assert (await client.get(path, headers=keys.of(keys.bob))).status == 404
    assert (await client.get(path, headers=keys.of(keys.admin))).status == 200
    assert (await client.get(path, headers={"X-API-Key": keys.alice})).status == 200
    assert (await client.get(f"{LINKS}/nosuchcode/qr", headers=keys.of(keys.alice))).status == 404
    assert (
        await client.delete(f"{LINKS}/{link['code']}", headers=keys.of(keys.alice))
    ).status == 204
    assert (await client.get(path, headers=keys.of(keys.alice))).status == 404


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("format=gif", "format"),
        ("format=", "format"),
        ("format=SVG", "format"),
        ("scale=0", "scale"),
        ("scale=33", "scale"),
        ("scale=2.5", "scale"),
        ("scale=" + "9" * 5000, "scale"),
        ("format=png&scale=-1", "scale"),
    ],
)
async def test_qr_bad_query_is_a_400_naming_the_field(
    client: ContractClient, keys: Keys, query: str, field: str
) -> None:
    link = await create(client, keys.alice, url="https://example.com/q")
    reply = await client.get(f"{LINKS}/{link['code']}/qr?{query}", headers=keys.of(keys.alice))
    assert reply.status == 400
    assert [error["field"] for error in reply.json()["errors"]] == [field]


async def test_qr_renders_each_url_format_and_scale_once(
    client: ContractClient, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered: list[tuple[str, str, int]] = []
    real_render = qr.render

    def counting_render(short_url: str, fmt: str, scale: int) -> bytes:
        rendered.append((short_url, fmt, scale))
        return real_render(short_url, fmt, scale)

    monkeypatch.setattr(qr, "render", counting_render)
    link = await create(client, keys.alice, url="https://example.com/cached")
    path = f"{LINKS}/{link['code']}/qr"
    bodies = set()
    for query in ("", "?format=svg", "?format=png", "", "?format=png", "?format=png&scale=8"):
        reply = await client.get(path + query, headers=keys.of(keys.alice))
        assert reply.status == 200
        bodies.add(reply.body)
    assert rendered == [(link["short_url"], "svg", 4), (link["short_url"], "png", 8)]
    assert len(bodies) == 2
