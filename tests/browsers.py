"""Headless Chromium for the tests of the page (Debian's ``chromium`` and ``chromium-driver``,
which ``make install`` puts in place), driven through Selenium, and what those tests wait on:
an ``ast-audio serve`` subprocess answering ``/healthz``, a static folder over HTTP.

The browser records nothing of its own: its microphone is Chromium's fake device playing a WAV
(``--use-file-for-fake-audio-capture``).
"""

from __future__ import annotations

import functools
import http.server
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import LocalServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float = 60, what: str = "the page"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not appear within {timeout} s")
        time.sleep(0.1)


def text_of(chrome, css: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text for e in chrome.find_elements(By.CSS_SELECTOR, css)]


def chromium(mic: Path):
    """Headless Chromium whose microphone plays ``mic`` (a WAV), at 900 x 1100 CSS pixels."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver):
        pytest.fail("chromium and chromedriver are not on PATH: `make install` installs them (Debian's "
                    "chromium and chromium-driver packages)")  # fmt: skip
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-audio-capture={mic}", "--autoplay-policy=no-user-gesture-required",
                 "--window-size=900,1100"):  # fmt: skip
        options.add_argument(flag)
    chrome = webdriver.Chrome(options=options, service=Service(driver))
    chrome.set_page_load_timeout(60)
    return chrome


def wait_until_served(proc: subprocess.Popen, url: str, timeout: float = 120) -> None:
    """Poll ``url/healthz`` until it answers 200; fail the test if ``proc`` ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            pytest.fail(f"ast-audio serve ended (exit {proc.returncode}):\n{proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"ast-audio serve did not answer /healthz within {timeout:g} s")
        time.sleep(0.2)


class StaticFolder(LocalServer):
    """``folder`` served over HTTP on 127.0.0.1 by the standard library's file server, as any
    static host would; ``requests`` lists the paths asked for."""

    def __init__(self, folder: Path):
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                outer.requests.append(self.path)

        self._serve(functools.partial(Handler, directory=str(folder)))
