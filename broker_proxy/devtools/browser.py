"""Where the Chromium that the browser tests drive is, on any machine.

Playwright is only ever pointed at a browser that is already installed (it never downloads one
here), so the tests and `scripts/test-prereqs` look in the same places in the same order:
`$BROKER_PROXY_CHROMIUM`, then the names distributions give it on PATH, then Debian's path.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ENV_VAR = "BROKER_PROXY_CHROMIUM"
PATH_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DEBIAN_PATH = Path("/usr/bin/chromium")
WHAT_TO_INSTALL = (
    "the browser tests need Chromium or Chrome: install it (Debian/Ubuntu: apt-get install -y "
    f"chromium) or set {ENV_VAR}=/path/to/chrome"
)


class BrowserNotFound(RuntimeError):
    """No Chromium where the tests look; the message says what to install."""


def find_chromium() -> str:
    """The path of a Chromium or Chrome executable, or BrowserNotFound saying what to do."""
    chosen = os.environ.get(ENV_VAR, "").strip()
    if chosen:
        if os.path.isfile(chosen) and os.access(chosen, os.X_OK):
            return chosen
        raise BrowserNotFound(f"{ENV_VAR}={chosen} is not an executable file")
    for name in PATH_NAMES:
        found = shutil.which(name)
        if found:
            return found
    if DEBIAN_PATH.exists():
        return str(DEBIAN_PATH)
    raise BrowserNotFound(WHAT_TO_INSTALL)
