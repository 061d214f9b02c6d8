"""A real headless Chromium for the web pages' tests, driven by Selenium.

`chrome` (session-scoped) starts Debian's `chromium` through `chromedriver`, 1280x900, with
the browser console captured (`goog:loggingPrefs`), so a test can read CSP violations and
script errors with `console_errors(driver)`. When the two programs are missing and the tests
run as root, the fixture installs them with apt-get (`chromium chromium-driver`) rather than
skipping, so the README's test command works on a fresh machine; otherwise it fails with a
message saying what to install. Import the fixture into a test module to use it.

`screenshots_dir()` is where the pages' screenshots go: a temporary directory, or the
repository's docs/ (the pictures the README and docs/ show) when TOLLBOOTH_UPDATE_SCREENSHOTS=1, so
a test run
leaves the checkout as it found it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

PACKAGES = ("chromium", "chromium-driver")


def screenshots_dir() -> Path:
    if os.environ.get("TOLLBOOTH_UPDATE_SCREENSHOTS") == "1":
        return Path(__file__).resolve().parent.parent / "docs"
    return Path(tempfile.mkdtemp(prefix="tollbooth-screenshots-"))


def _programs() -> tuple[str | None, str | None]:
    return shutil.which("chromium"), shutil.which("chromedriver")


def _install() -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", *PACKAGES]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True)
        subprocess.run(install, env=env, check=True, capture_output=True)


def find_browser() -> tuple[str, str]:
    browser, driver = _programs()
    if (browser is None or driver is None) and hasattr(os, "geteuid") and os.geteuid() == 0:
        _install()
        browser, driver = _programs()
    if browser is None or driver is None:
        pytest.fail(
            "the browser tests need Chromium and its driver: "
            "apt-get install -y chromium chromium-driver (as root)",
            pytrace=False,
        )
    return browser, driver


@pytest.fixture(scope="session")
def chrome() -> Iterator[webdriver.Chrome]:
    browser, driver_path = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        "--lang=en-US",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    """The console's errors and warnings since the last call (CSP violations included)."""
    entries: list[dict[str, Any]] = driver.get_log("browser")
    return [e for e in entries if e.get("level") in ("SEVERE", "WARNING")]
