"""Script injection: payloads in every field a data set controls (file names, labels, class
names, groups) never run in the report or in the app's audit browser (headless Chromium).

Each payload would set ``window.__pwned`` or the page title; after the page has loaded and
shown the hostile rows, neither has happened and the payloads are shown as text.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from shortcut_detect.app import free_port, make_explorer, start_app

pytestmark = [
    pytest.mark.browser,
    pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*"),
]

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--no-first-run"]  # fmt: skip
NOT_PWNED = "() => window.__pwned === undefined && document.title !== 'pwned'"


@pytest.fixture(scope="module")
def browser():
    executable = (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else shutil.which("chromium")
    )
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is required in CI (apt-get install chromium)")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _assert_not_pwned(page) -> None:
    page.wait_for_timeout(500)  # let error handlers of broken images fire
    assert page.evaluate(NOT_PWNED), (page.evaluate("window.__pwned"), page.title())


def test_the_report_shows_payloads_as_text(browser, hostile_audit, payloads):
    page = browser.new_page()
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto((hostile_audit / "report.html").as_uri())
    page.wait_for_load_state("load")
    _assert_not_pwned(page)
    text = page.inner_text("body")
    assert payloads["labels"][0] in text or payloads["labels"][1] in text
    assert payloads["groups"][0] in text
    assert dialogs == []
    page.close()


def test_the_audit_browser_shows_payloads_as_text(browser, hostile_audit, payloads):
    running = start_app(explorer=make_explorer(audit=hostile_audit), port=free_port())
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        page.set_default_timeout(30_000)
        page.goto(running.url)
        page.get_by_role("tab", name="Audit results").click()
        page.wait_for_selector("#audit-table [data-testid=cell-0-0]")
        table = page.inner_text("#audit-table")
        assert "onerror" in table and any(group in table for group in payloads["groups"])
        cell = page.locator("#audit-table [data-testid=cell-0-0]")
        cell.click()
        page.click("#audit-open")
        page.wait_for_function(
            "() => (document.querySelector('#status') || {}).innerText?.includes('Heatmap of')"
        )
        _assert_not_pwned(page)
        status = page.inner_text("#status")
        assert "<script>" in status or "onerror" in status, status
        page.close()
    finally:
        running.close()
