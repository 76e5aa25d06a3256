"""The pages in a real browser: headless Chromium, driven by Playwright, against hypercorn.

Chromium is the machine's own (Debian's `chromium`, which `scripts/dev.py test` installs), found
through `CHROMIUM`. A screenshot of the finished result page is kept in `test-artifacts/`
(or `$TEST_ARTIFACTS`) for a person to look at, as is one of a finished workflow's page.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright
from quart_celery.testing import ProcessWorker

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts"))
# Without the networking flags Chromium keeps trying to reach Google's hosts, which a closed
# network refuses; as root it needs --no-sandbox.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """A headless Chromium for this module's tests."""
    executable = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if executable is None:
        pytest.skip("no Chromium: set CHROMIUM, or install Debian's chromium package")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page (own cookies) that gives up on any step after 30 s."""
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    yield context.new_page()
    context.close()


def test_the_result_page_follows_the_task_live(
    page: Page, server_url: str, process_worker: ProcessWorker
) -> None:
    page.goto(f"{server_url}/")
    page.fill("#message", "hello from Chromium")
    page.click("button[type=submit]")
    page.click("#submitted a")

    # No worker runs yet: the page shows the queued task, with its websocket open.
    expect(page.locator("#state")).to_have_text("PENDING")
    expect(page.locator("#live")).to_be_visible()
    expect(page.locator("#progress")).to_have_attribute("value", "0")
    page.evaluate("window.notReloaded = true")

    process_worker()
    expect(page.locator("#state")).to_have_text("SUCCESS")
    expect(page.locator("#progress")).to_have_js_property("value", 100)
    expect(page.locator("#percent")).to_have_text("100%")
    expect(page.locator("#result")).to_contain_text("hello from Chromium")
    assert page.evaluate("window.notReloaded") is True  # pushed, not reloaded

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / "result-page.png", full_page=True)


def test_the_result_page_shows_the_words_as_they_stream(
    page: Page, server_url: str, process_worker: ProcessWorker
) -> None:
    page.goto(f"{server_url}/")
    page.fill("#message", "the quick brown fox jumps")
    page.click("button[name=stream]")
    page.click("#submitted a")
    expect(page.locator("#state")).to_have_text("PENDING")
    expect(page.locator("#live")).to_be_visible()
    # Every text the streamed words take on the page, as the page changes.
    page.evaluate(
        """() => {
            const stream = document.getElementById("stream");
            window.seen = [];
            new MutationObserver(() => window.seen.push(stream.textContent))
                .observe(stream, {childList: true, characterData: true, subtree: true});
        }"""
    )

    process_worker()
    expect(page.locator("#state")).to_have_text("SUCCESS")
    expect(page.locator("#stream")).to_have_text("the quick brown fox jumps")
    expect(page.locator("#result")).to_contain_text("the quick brown fox jumps")
    # One word at a time, each while the task still ran (`stream_text` waits between words).
    assert page.evaluate("window.seen") == [
        "the",
        "the quick",
        "the quick brown",
        "the quick brown fox",
        "the quick brown fox jumps",
    ]

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / "streamed-result-page.png", full_page=True)


def test_the_workflow_page_follows_every_task_of_the_chord_live(
    page: Page, server_url: str, process_worker: ProcessWorker
) -> None:
    page.goto(f"{server_url}/")
    page.fill("#chord-count", "5")
    page.click("form[action='/workflows'] button[type=submit]")
    page.click("#workflow-submitted a")

    # No worker runs yet: the five squares and their total wait, with the websocket open.
    expect(page.locator("#state")).to_have_text("PENDING")
    expect(page.locator("#live")).to_be_visible()
    expect(page.locator("#tasks .state")).to_have_text(["PENDING"] * 6)
    page.evaluate("window.notReloaded = true")

    process_worker()
    expect(page.locator("#state")).to_have_text("SUCCESS")
    expect(page.locator("#done")).to_have_text("6")
    expect(page.locator("#total")).to_have_text("6")
    expect(page.locator("#failed")).to_have_text("0")
    expect(page.locator("#progress")).to_have_js_property("value", 6)
    expect(page.locator("#result")).to_have_text("55")  # 1 + 4 + 9 + 16 + 25
    expect(page.locator("#tasks .state")).to_have_text(["SUCCESS"] * 6)
    assert page.evaluate("window.notReloaded") is True  # pushed, not reloaded

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / "workflow-page.png", full_page=True)


def test_the_api_docs_render_offline(page: Page, server_url: str) -> None:
    elsewhere: list[str] = []

    def only_the_server(route: Route) -> None:
        if route.request.url.startswith(server_url):
            route.continue_()
        else:  # as a machine without internet, or a strict CSP, would
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_server)
    page.goto(f"{server_url}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("quart_app")
    expect(
        page.locator(".opblock-summary-path").filter(has_text="/api/tasks").first
    ).to_be_visible()
    # One POST operation per path: tasks, and workflows of them.
    for path in ("/api/tasks", "/api/workflows"):
        expect(page.locator(".opblock-post").filter(has_text=path).first).to_be_visible()
    assert elsewhere == [], elsewhere

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / "docs-page.png", full_page=True)
