"""The HTML report in a real browser: self-contained, images load, verdict on top."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists() and not os.environ.get("CI"),
        reason="needs Debian's chromium at /usr/bin/chromium (scripts/install_browser.sh)",
    ),
]


def test_report_renders_offline_with_the_verdict_on_top(shortcut_audit, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    report = shortcut_audit.report_path
    outside_requests: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on(
                "request",
                lambda request: (
                    outside_requests.append(request.url)
                    if not request.url.startswith(("file:", "data:"))
                    else None
                ),
            )
            page.goto(report.as_uri())
            page.wait_for_load_state("load")
            verdict = page.locator("#verdict")
            assert verdict.is_visible()
            assert "HIGH RISK" in verdict.inner_text()
            assert "top-left" in verdict.inner_text()
            assert verdict.bounding_box()["y"] < 250  # the first thing a reader sees
            images = page.evaluate(
                "Array.from(document.images).map(i => [i.complete, i.naturalWidth])"
            )
            assert len(images) > 20
            assert all(done and width > 0 for done, width in images)
            for section in ("#groups", "#top-attention", "#misclassified", "#accuracy", "#spray"):
                assert page.locator(section).count() == 1, section
            tiles = page.locator("#top-attention figure.tile")
            assert tiles.count() >= 4
            box = tiles.first.bounding_box()
            assert 200 <= box["width"] <= 450  # a readable grid, not one huge column
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 50_000
        finally:
            browser.close()
    assert outside_requests == []
