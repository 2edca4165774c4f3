"""The web page as a person uses it: headless Chromium against the app running as a process.

Playwright drives Debian's /usr/bin/chromium (never a downloaded browser) on loopback only.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import threading
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
from playwright.sync_api import ConsoleMessage, Page, expect, sync_playwright

import devservices.app
from tests import services
from tests.services import PROJECT_ROOT, AppInstance, AppInstanceFactory, keys_create

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Kept out of git (results/ is ignored): docs/screenshots/ holds the reviewed copy.
SCREENSHOT = PROJECT_ROOT / "results" / "screenshots" / "main-page.png"
# Another loopback address: the app refuses targets on its own host, whatever the port.
TARGET_HOST = "127.0.0.2"
LANDING = b"<!doctype html><title>Landing page</title><h1>You have arrived</h1>"


class _Landing(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(LANDING)))
        self.end_headers()
        self.wfile.write(LANDING)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def target_site() -> Iterator[str]:
    """A small page on loopback for short links to point at."""
    server = ThreadingHTTPServer((TARGET_HOST, 0), _Landing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{TARGET_HOST}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def chromium() -> str:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing; install it with `apt-get install chromium`")
    return CHROMIUM


@pytest.fixture
def app(
    app_instance_factory: AppInstanceFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AppInstance:
    # Short URLs must point at the app itself, so its port is chosen before it starts.
    port = services.free_port()
    ports = iter([port])
    monkeypatch.setattr(devservices.app, "free_port", lambda: next(ports))
    instance = app_instance_factory(
        {
            "SHORTENER_DATABASE_URL": f"sqlite:///{tmp_path / 'shortener.db'}",
            "SHORTENER_BASE_URL": f"http://127.0.0.1:{port}",
            "SHORTENER_CLICK_FLUSH_INTERVAL": "0.2",
        }
    )
    assert instance.port == port
    return instance


def api_status(app: AppInstance, key: str, path: str) -> int:
    request = urllib.request.Request(app.url + path, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def create_link(app: AppInstance, key: str, body: dict[str, str]) -> None:
    request = urllib.request.Request(
        app.url + "/api/v1/links",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201


# What Chromium logs for each request the page makes that the server refuses with a 4xx.
_REFUSED = re.compile(r"Failed to load resource: the server responded with a status of 4\d\d\b")


def console_problems(problems: list[str]) -> Callable[[ConsoleMessage], None]:
    """A console listener that keeps errors and warnings, but not the 4xx answers that
    Chromium logs for every refused request the page makes (a 5xx is kept)."""

    def on_console(message: ConsoleMessage) -> None:
        expected = _REFUSED.match(message.text) is not None
        if message.type in {"error", "warning"} and not expected:
            problems.append(message.text)

    return on_console


def shorten(page: Page, url: str) -> None:
    page.get_by_label("Long URL").fill(url)
    page.get_by_role("button", name="Shorten", exact=True).click()


def test_a_person_shortens_copies_scans_follows_and_deletes(
    chromium: str, app: AppInstance, target_site: str, tmp_path: Path
) -> None:
    key = keys_create(app.env, "browser")
    problems: list[str] = []
    # Chromium logs every 4xx the page asks for; the test provokes a 401 and a 400.
    on_console = console_problems(problems)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1180, "height": 900})
            context.grant_permissions(["clipboard-read", "clipboard-write"], origin=app.url)
            page = context.new_page()
            page.on("console", on_console)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.goto(app.url + "/")
            expect(page.locator("#links-status")).to_have_text(
                "Save your API key to see and manage your links."
            )

            # Without a key (public creation is off) the page says a key is needed.
            shorten(page, f"{target_site}/first")
            expect(page.get_by_role("alert")).to_contain_text("needs an API key")

            page.get_by_role("textbox", name="API key").fill(key)
            page.get_by_role("button", name="Save key").click()
            expect(page.locator("#key-saved")).to_be_visible()
            expect(page.locator("#key-end")).to_have_text(key[-4:])
            assert page.evaluate("localStorage.getItem('shortener.apiKey')") == key

            shorten(page, f"{target_site}/docs/getting-started?utm_source=newsletter")
            expect(page.locator("#result")).to_be_visible()
            page.get_by_label("Long URL").fill(f"{target_site}/pricing")
            page.get_by_text("More options").click()
            page.get_by_label("Custom alias").fill("pricing")
            page.get_by_label("Visit limit").fill("500")
            page.get_by_role("button", name="Shorten", exact=True).click()
            expect(page.locator("#result-link")).to_have_text(f"{app.url}/pricing")
            shorten(page, f"{target_site}/landing")
            # The target first: the previous result's code, `pricing`, also has 7 letters.
            expect(page.locator("#result-target")).to_have_text(f"{target_site}/landing")
            link = page.locator("#result-link")
            expect(link).to_have_text(re.compile(re.escape(app.url) + r"/[A-Za-z0-9]{7}$"))
            short_url = link.inner_text()
            code = short_url.rsplit("/", 1)[1]
            assert code != "pricing"
            rows = page.locator("#links-body tr")
            expect(rows).to_have_count(3)
            expect(rows.first).to_have_attribute("data-code", code)

            qr = page.locator("#qr")
            expect(qr).to_be_visible()
            assert qr.get_attribute("src", timeout=5000).startswith("blob:")  # type: ignore[union-attr]
            assert qr.evaluate("img => img.decode().then(() => img.naturalWidth)") > 0

            page.get_by_role("button", name="Copy", exact=True).click()
            expect(page.locator("#copy-status")).to_have_text("Copied to the clipboard.")
            assert page.evaluate("navigator.clipboard.readText()") == short_url

            page.screenshot(path=str(tmp_path / "main-page.png"), full_page=True)
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tmp_path / "main-page.png", SCREENSHOT)

            # The API's field error appears next to the field, tied to it for screen readers.
            shorten(page, "javascript:alert(1)")
            url_field = page.get_by_label("Long URL")
            error = page.locator("#url-error")
            expect(error).to_have_text("The URL must be an absolute http or https URL.")
            expect(url_field).to_have_attribute("aria-invalid", "true")
            expect(url_field).to_have_attribute("aria-describedby", re.compile(r"\burl-error\b"))
            assert page.evaluate("document.activeElement.id") == "url"
            page.screenshot(path=str(tmp_path / "field-error.png"))

            # The short link leads to the target.
            page.get_by_label("Long URL").fill("")
            page.goto(short_url)
            page.wait_for_url(f"{target_site}/landing")
            expect(page.get_by_role("heading")).to_have_text("You have arrived")

            page.goto(app.url + "/")
            row = page.locator(f'#links-body tr[data-code="{code}"]')
            expect(row).to_be_visible()
            page.once("dialog", lambda dialog: dialog.accept())
            row.get_by_role("button", name=f"Delete {code}").click()
            expect(row).to_have_count(0)
            expect(page.locator("#links-status")).to_have_text(f"{code} was deleted.")
            expect(rows).to_have_count(2)
            assert api_status(app, key, f"/api/v1/links/{code}") == 404

            # Forgetting the key removes it from the browser.
            page.get_by_role("button", name="Forget key").click()
            expect(page.get_by_role("textbox", name="API key")).to_be_visible()
            assert page.evaluate("localStorage.getItem('shortener.apiKey')") is None
        finally:
            browser.close()
    assert problems == [], json.dumps(problems, indent=2)
    assert SCREENSHOT.stat().st_size > 0


def test_a_gone_link_shows_the_styled_page_without_details(
    chromium: str, app: AppInstance, target_site: str, tmp_path: Path
) -> None:
    key = keys_create(app.env, "browser")
    create_link(app, key, {"url": f"{target_site}/secret-plan", "alias": "launch"})
    delete = urllib.request.Request(
        app.url + "/api/v1/links/launch",
        method="DELETE",
        headers={"Authorization": f"Bearer {key}"},
    )
    with urllib.request.urlopen(delete, timeout=10) as response:
        assert response.status == 204
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 600})
            response = page.goto(app.url + "/launch")
            assert response is not None and response.status == 410
            expect(page.get_by_role("heading", level=1)).to_have_text("Link gone")
            assert "launch" not in page.content() and "secret-plan" not in page.content()
            # The page's style sheet loaded under the CSP: the card has its background.
            background = page.eval_on_selector(
                ".card", "node => getComputedStyle(node).backgroundColor"
            )
            assert background == "rgb(255, 255, 255)"
            page.screenshot(path=str(tmp_path / "gone.png"))
        finally:
            browser.close()


# The reviewed copy of this one is docs/screenshots/link-stats.png.
STATS_SCREENSHOT = PROJECT_ROOT / "results" / "screenshots" / "link-stats.png"
VISITORS = [
    # (User-Agent, Referer, visits)
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0.0.0 Safari/537.36",
        "https://news.ycombinator.com/item?id=1",
        5,
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
        "https://t.co/x",
        3,
    ),
    ("Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0", None, 2),
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", None, 2),
]


def follow(app: AppInstance, code: str, user_agent: str, referer: str | None) -> int:
    connection = http.client.HTTPConnection(app.host, app.port, timeout=10)
    try:
        headers = {"User-Agent": user_agent}
        if referer is not None:
            headers["Referer"] = referer
        connection.request("GET", f"/{code}", headers=headers)
        return connection.getresponse().status
    finally:
        connection.close()


def test_a_person_sees_the_visits_of_a_link(
    chromium: str, app: AppInstance, tmp_path: Path
) -> None:
    key = keys_create(app.env, "browser")
    # Nobody follows the redirects here, so the target need not exist.
    create_link(app, key, {"url": "https://example.com/launch", "alias": "launch"})
    for user_agent, referer, times in VISITORS:
        for _ in range(times):
            assert follow(app, "launch", user_agent, referer) == 302
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1180, "height": 900})
            page.on(
                "console",
                lambda message: (
                    problems.append(message.text) if message.type in {"error", "warning"} else None
                ),
            )
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.goto(app.url + "/")
            page.get_by_role("textbox", name="API key").fill(key)
            page.get_by_role("button", name="Save key").click()
            row = page.locator('#links-body tr[data-code="launch"]')
            expect(row).to_be_visible()
            row.get_by_role("button", name="Stats of launch").click()

            stats = page.locator("#stats")
            expect(stats).to_be_visible()
            expect(page.locator("#stats-code")).to_have_text("launch")
            expect(page.locator("#stats-visits")).to_have_text("10")
            expect(page.locator("#stats-bots")).to_have_text("2")
            # uPlot drew the series into a canvas, under the page's CSP.
            canvas = page.locator("#stats-chart canvas")
            expect(canvas).to_have_count(1)
            assert canvas.evaluate("node => node.width") > 200
            expect(page.locator("#stats-chart .u-legend")).to_contain_text("Visits")
            referrers = stats.locator(".breakdown").filter(has_text="Referrers")
            expect(referrers.locator("tbody tr")).to_have_count(3)
            expect(referrers.locator("tbody tr").first).to_contain_text("news.ycombinator.com5")
            devices = stats.locator(".breakdown").filter(has_text="Devices")
            expect(devices).to_contain_text("desktop7")
            expect(devices).to_contain_text("mobile3")
            expect(stats.locator(".breakdown").filter(has_text="Browsers")).to_contain_text(
                "Mobile Safari3"
            )

            page.select_option("#stats-range", "48h")
            expect(page.locator("#stats-visits")).to_have_text("10")
            expect(page.locator("#stats-chart canvas")).to_have_count(1)
            stats.screenshot(path=str(tmp_path / "link-stats.png"))
            STATS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tmp_path / "link-stats.png", STATS_SCREENSHOT)

            page.get_by_role("button", name="Close", exact=True).click()
            expect(stats).to_be_hidden()
        finally:
            browser.close()
    assert problems == [], json.dumps(problems, indent=2)


def link_json(app: AppInstance, key: str, code: str) -> dict[str, object]:
    request = urllib.request.Request(
        f"{app.url}/api/v1/links/{code}", headers={"Authorization": f"Bearer {key}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        result: dict[str, object] = json.load(response)
    return result


UPLOAD = (
    "url,alias,title,tags\n"
    'https://example.com/spring,spring,"Spring sale, 2030",shop|Sale\n'
    "https://example.com/docs,,Getting started,docs\n"
    "javascript:alert(1),,Bad one,\n"
    "https://example.com/autumn,autumn,,shop\n"
)


def test_a_person_uploads_searches_filters_and_edits_links(
    chromium: str, app: AppInstance, tmp_path: Path
) -> None:
    key = keys_create(app.env, "browser")
    create_link(app, key, {"url": "https://example.org/older", "alias": "older"})
    problems: list[str] = []
    on_console = console_problems(problems)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1180, "height": 900})
            page.on("console", on_console)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.goto(app.url + "/")
            page.get_by_role("textbox", name="API key").fill(key)
            page.get_by_role("button", name="Save key").click()
            rows = page.locator("#links-body tr:not(.edit-row)")
            expect(rows).to_have_count(1)

            # A title and tags on a single link, from the form's options.
            page.get_by_label("Long URL").fill("https://example.net/launch")
            page.get_by_text("More options").click()
            page.get_by_role("textbox", name="Title optional").fill("Launch day")
            page.get_by_role("textbox", name="Tags optional").fill("News, launch")
            page.get_by_role("button", name="Shorten", exact=True).click()
            expect(rows).to_have_count(2)
            expect(rows.first).to_contain_text("Launch day")

            # A file of links goes through the batch API; the bad row is named by its line.
            page.get_by_label("File of links").set_input_files(
                files=[{"name": "links.csv", "mimeType": "text/csv", "buffer": UPLOAD.encode()}]
            )
            page.get_by_role("button", name="Upload").click()
            expect(page.locator("#upload-status")).to_have_text("3 links created, 1 refused.")
            expect(page.locator("#upload-problems li")).to_have_text(
                ["Line 4: The URL must be an absolute http or https URL."]
            )
            expect(rows).to_have_count(5)
            assert link_json(app, key, "spring")["tags"] == ["shop", "sale"]

            # Search over code, url and title; tag filter by typing or by a tag's button.
            page.get_by_role("searchbox", name="Search").fill("SALE")
            page.get_by_role("button", name="Search", exact=True).click()
            expect(rows).to_have_count(1)
            expect(rows.first).to_have_attribute("data-code", "spring")
            page.get_by_role("button", name="Clear").click()
            expect(rows).to_have_count(5)
            page.locator('#links-body tr[data-code="autumn"]').get_by_role(
                "button", name="Show links tagged shop"
            ).click()
            expect(page.get_by_role("textbox", name="Tags", exact=True)).to_have_value("shop")
            expect(rows).to_have_count(2)
            page.get_by_role("searchbox", name="Search").fill("nothing-like-this")
            page.get_by_role("button", name="Search", exact=True).click()
            expect(page.locator("#links-status")).to_have_text("No links match.")
            page.get_by_role("button", name="Clear").click()
            expect(rows).to_have_count(5)

            # Editing a title and tags in place; a bad tag is explained next to the form.
            row = page.locator('#links-body tr[data-code="older"]')
            row.get_by_role("button", name="Edit title and tags of older").click()
            page.get_by_label("Title of older", exact=True).fill("An older page")
            page.get_by_label("Tags of older", exact=True).fill("bad tag")
            page.get_by_role("button", name="Save").click()
            expect(page.locator(".edit-row [role=alert]")).to_contain_text("The tags")
            page.get_by_label("Tags of older", exact=True).fill("archive, Old")
            page.get_by_role("button", name="Save").click()
            expect(page.locator("#links-status")).to_have_text("older was saved.")
            expect(row).to_contain_text("An older page")
            saved = link_json(app, key, "older")
            assert saved["title"] == "An older page" and saved["tags"] == ["archive", "old"]
            page.screenshot(path=str(tmp_path / "many-links.png"), full_page=True)
        finally:
            browser.close()
    assert problems == [], json.dumps(problems, indent=2)


def test_the_console_listener_lets_only_4xx_load_failures_pass() -> None:
    problems: list[str] = []
    listen = console_problems(problems)
    refused = "Failed to load resource: the server responded with a status of 404 (Not Found)"
    broken = "Failed to load resource: the server responded with a status of 503 (Unavailable)"
    for text in (refused, broken):
        listen(SimpleNamespace(type="error", text=text))  # type: ignore[arg-type]
    assert problems == [broken]
