"""Headless Chromium from Debian's packages (`chromium`, `chromium-driver`), driven by
Selenium, for the browser tests, the page benchmark and the README's screenshots.

The browser and its driver are named by path, so Selenium Manager (which would look
for, and download, a browser and a driver of its own) never runs; SE_OFFLINE makes sure
of it."""

from __future__ import annotations

import os
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-screenshots"


def chromium(width: int = 1440, height: int = 900):
    """A new headless Chromium (the caller quits it), its console log kept for reading."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        raise RuntimeError(
            f"{', '.join(missing)} missing: run `make servers` "
            "(Debian: apt-get install chromium chromium-driver)"
        )
    os.environ.setdefault("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # as root, as in CI
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER))
    return webdriver.Chrome(options=options, service=service)
