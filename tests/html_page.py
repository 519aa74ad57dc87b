"""A local HTML file opened in the system Chromium (Playwright), for the report tests that check
what a reader's browser shows."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from playwright.sync_api import sync_playwright

from broker_proxy.devtools.browser import find_chromium

if TYPE_CHECKING:
    from playwright.sync_api import Page


@contextlib.contextmanager
def opened_html(path: Path, problems: list[str]) -> Iterator[Page]:
    """``path`` loaded in headless Chromium at 1100x900; console errors and warnings and page
    errors go to ``problems`` (so a test asserts it empty); the browser is closed on the way out."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=find_chromium(), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.on("console", lambda message: problems.append(message.text)
                    if message.type in ("error", "warning") else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.goto(path.as_uri())
            page.wait_for_load_state("load")
            yield page
        finally:
            browser.close()
