"""Headless Chromium for tests, benchmarks and the loop demo: Debian's ``/usr/bin/chromium`` driven by
Playwright (never ``playwright install``: nothing is downloaded).

The flags keep Chromium off the network (this machine has none but the package registries) and run it
as root in a sandbox-less container.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

CHROMIUM = os.environ.get("DANGOL_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_missing() -> str | None:
    """A message saying how to install Chromium, or None when it is there."""
    if shutil.which(CHROMIUM) or Path(CHROMIUM).exists():
        return None
    return f"Chromium not found at {CHROMIUM}: apt-get install chromium (scripts/setup does)"


def launch(playwright):
    """Launch headless Chromium from a ``sync_playwright()`` context; returns the Browser."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
