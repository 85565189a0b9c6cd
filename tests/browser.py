"""A headless Chromium for browser tests (Debian's package, installed with apt-get when we
are root, as engage/stack/redis_server.py does for redis-server; never a downloaded browser),
and a uvicorn server in a thread on a free loopback port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]  # fmt: skip


def find_chromium() -> tuple[str, str] | None:
    """(chromium, chromedriver) paths, installing Debian's packages if missing; else None."""

    def found() -> tuple[str, str] | None:
        browser = shutil.which("chromium") or shutil.which("chromium-browser")
        driver = shutil.which("chromedriver")
        return (browser, driver) if browser and driver else None

    if found() is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"],
                       check=False, env=env, capture_output=True)  # fmt: skip
    return found()


@contextmanager
def chrome(width: int = 1400, height: int = 900) -> Iterator[object]:
    """A Selenium WebDriver on the system Chromium with a fresh profile (quit at the end)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    paths = find_chromium()
    if paths is None:
        raise RuntimeError("chromium/chromedriver not installed (apt-get install chromium "
                           "chromium-driver)")  # fmt: skip
    browser, driver_path = paths
    profile = tempfile.mkdtemp(prefix="engage-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in [*CHROMIUM_ARGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"]:
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_in_thread(app: object, port: int | None = None) -> Iterator[str]:
    """Run `app` under uvicorn on 127.0.0.1 in a thread; yields the base URL; stops it."""
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            access_log=False, timeout_graceful_shutdown=2)  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
