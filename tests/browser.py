"""Headless Chromium, driven by Playwright, for the tests (and the README's screenshots) that look at the real UIs.

The browser is Debian's `chromium` package (Playwright never downloads one here): found on PATH, or installed with
apt-get where this process may (root with apt-get); `find_chromium` otherwise says why not, for a skip reason.
Every page gets a fresh profile and HOME in a temporary folder (nothing is written to ~) and flags that keep the
browser off the network: it only loads the 127.0.0.1 pages it is sent to.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
_INSTALL_TIMEOUT_S = 900


def find_chromium() -> tuple[str | None, str]:
    """(path of chromium, "") or (None, why there is none), installing Debian's package where possible."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return None, "playwright is not installed (pip install -e '.[test]')"
    found = shutil.which("chromium")
    if found:
        return found, ""
    if not shutil.which("apt-get"):
        return None, "chromium is not installed and there is no apt-get to install Debian's chromium package"
    if os.geteuid() != 0:
        return None, "chromium is not installed and installing it with apt-get needs root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    for command in (install, ["apt-get", "update", "-q"], install):  # the package lists only when a plain install fails
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=_INSTALL_TIMEOUT_S)
        if command is install and done.returncode == 0 and shutil.which("chromium"):
            return shutil.which("chromium"), ""
    return None, f"apt-get could not install chromium: {(done.stderr or done.stdout).strip()[-300:]}"


@contextmanager
def chromium_page(binary: str, size: tuple[int, int] = (1400, 900)) -> Iterator:
    """A Playwright page of headless `binary` with a fresh profile; closed (browser and driver) on exit."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="chromium-") as home, sync_playwright() as driver:
        context = driver.chromium.launch_persistent_context(
            f"{home}/profile", executable_path=binary, headless=True, args=FLAGS,
            env={**os.environ, "HOME": home, "XDG_CONFIG_HOME": home, "XDG_CACHE_HOME": home},
            viewport={"width": size[0], "height": size[1]})
        try:
            context.set_default_timeout(60_000)
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def open_mlflow(page, url: str, shown: str) -> None:
    """Open an MLflow UI page in its training view, wait until `shown` (a text) is on it, and close the assistant
    panel that MLflow opens on a first visit (it would cover a third of the page)."""
    from tasks.tracking import TRAINING_VIEW

    page.goto(url if TRAINING_VIEW in url else f"{url}{'&' if '?' in url else '?'}{TRAINING_VIEW}")
    page.get_by_text(shown, exact=True).first.wait_for()
    close = page.get_by_role("button", name="Close")
    if close.count():
        close.first.click()
