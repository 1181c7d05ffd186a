"""``ast-audio serve`` for real: a uvicorn server started as a subprocess on 127.0.0.1, driven
by headless Chromium (:mod:`browsers`: Debian's ``chromium`` and ``chromium-driver``, which
``make install`` puts in place) through Selenium, and loaded by 32 concurrent clients.

The browser uploads real files and records nothing of its own: its microphone is Chromium's
fake device playing a WAV of noise (``--use-file-for-fake-audio-capture``), which live mode
streams over the WebSocket. The page is checked at a phone's size. The upload test saves a
screenshot; with ``AST_AUDIO_SCREENSHOT=path`` it is also copied there (``docs/serve.png``
in the README comes from it).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import time

import httpx
import pytest
from browsers import chromium, free_port, text_of, wait_for, wait_until_served
from conftest import start_cli
from factories import SR, toy_sequence, write_audio, write_text_as_audio

from ast_audio.infer import AudioTagger

pytestmark = pytest.mark.usefixtures("one_thread")

LOW, HIGH, NOISE = 0, 1, 2
PHONE = (412, 915)  # CSS pixels of a common phone screen


class Running:
    """The server subprocess and its address."""

    def __init__(self, proc: subprocess.Popen, url: str):
        self.proc, self.url = proc, url


@pytest.fixture(scope="module")
def server(toy_model):
    """The command on a free port, for the whole module (the last test stops it with SIGTERM)."""
    port = free_port()
    proc = start_cli("serve", "--checkpoint", toy_model, "--port", port, "--max-wait-ms", 10)
    url = f"http://127.0.0.1:{port}"
    wait_until_served(proc, url)
    yield Running(proc, url)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser-audio")
    return {
        "mixed": write_audio(root / "low-noise-high.wav", toy_sequence([LOW, NOISE, HIGH], 2.0, seed=7), SR,
                             subtype="PCM_16"),  # fmt: skip
        "mic": write_audio(root / "mic.wav", toy_sequence([NOISE], 4.0, seed=8), SR, subtype="PCM_16"),
        "text": write_text_as_audio(root / "notes.wav"),
        "low": write_audio(root / "low.wav", toy_sequence([LOW], 1.0, seed=9), SR, subtype="PCM_16"),
        "long": write_audio(root / "long.wav", toy_sequence([NOISE], 40.0, seed=10), SR, subtype="PCM_16"),
    }


@pytest.fixture(scope="module")
def browser(audio):
    chrome = chromium(audio["mic"])
    yield chrome
    chrome.quit()


def test_an_uploaded_file_shows_its_top_label_and_timeline(server, browser, audio, toy_model, tmp_path):
    from selenium.webdriver.common.by import By

    expected = AudioTagger(toy_model, device="cpu").timeline(audio["mixed"], top_k=5)  # the defaults, as the page asks
    top = max(range(3), key=lambda i: expected.scores[:, i].max())
    browser.get(server.url + "/")
    wait_for(lambda: "labels" in browser.find_element(By.ID, "model").text, what="the model description")
    browser.find_element(By.ID, "attention-on").click()
    browser.find_element(By.ID, "file").send_keys(str(audio["mixed"]))
    names = wait_for(lambda: text_of(browser, "#labels .name"), what="the top labels")
    assert names[0] == expected.labels[top] == "noise"
    events = wait_for(lambda: text_of(browser, "#events li"), what="the timeline")
    assert {e.split(":")[0] for e in events} == {e.label for e in expected.events} >= {"low tone", "noise", "high tone"}
    assert "low-noise-high.wav: 6.00 s" in browser.find_element(By.ID, "status").text
    assert not browser.find_element(By.ID, "error").is_displayed()
    image = browser.find_element(By.ID, "attention")
    wait_for(lambda: browser.execute_script("return arguments[0].naturalWidth", image) > 0, what="the attention map")
    shot = tmp_path / "serve.png"
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(900, height + 150)  # the whole page in the screenshot
    try:
        assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        browser.set_window_size(900, 1100)
    if os.environ.get("AST_AUDIO_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["AST_AUDIO_SCREENSHOT"])


def test_a_bad_upload_is_shown_as_text(server, browser, audio):
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    browser.find_element(By.ID, "file").send_keys(str(audio["text"]))
    error = browser.find_element(By.ID, "error")
    wait_for(error.is_displayed, what="the error")
    assert error.text == "415: notes.wav: not a decodable audio file (Format not recognised)"


def test_live_mode_streams_the_microphone_and_shows_the_event(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    wait_for(lambda: "labels" in browser.find_element(By.ID, "model").text, what="the model description")
    browser.find_element(By.ID, "live").click()
    started = wait_for(lambda: [t for t in text_of(browser, "#live-events li.active") if t.startswith("noise")],
                       what="the live noise event")  # fmt: skip
    assert re.fullmatch(r"noise: started at \d+\.\d\d s", started[0])
    assert text_of(browser, "#labels .name")[0] == "noise"
    browser.find_element(By.ID, "live").click()  # stop: the open event ends
    ended = wait_for(lambda: [t for t in text_of(browser, "#live-events li:not(.active)") if t.startswith("noise")],
                     what="the end of the live event")  # fmt: skip
    assert re.fullmatch(r"noise: \d+\.\d\d–\d+\.\d\d s \(peak \d\.\d\d\)", ended[0])
    assert not browser.find_element(By.ID, "error").is_displayed()


def test_a_recording_from_the_microphone_is_tagged(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    wait_for(lambda: "labels" in browser.find_element(By.ID, "model").text, what="the model description")
    browser.find_element(By.ID, "record").click()
    wait_for(lambda: browser.find_element(By.ID, "status").text == "recording…", what="the recording state")
    time.sleep(1.5)  # what the fake microphone plays meanwhile (noise) is recorded
    browser.find_element(By.ID, "record").click()
    status = wait_for(lambda: re.fullmatch(r"recording\.wav: (\d+\.\d\d) s, .*", browser.find_element(By.ID, "status").text),
                      what="the tagged recording")  # fmt: skip
    assert float(status.group(1)) >= 1.0
    assert text_of(browser, "#labels .name")[0] == "noise"
    assert not browser.find_element(By.ID, "error").is_displayed()


def test_the_page_fits_a_phone_screen_with_the_attention_map(server, browser, audio):
    from selenium.webdriver.common.by import By

    browser.set_window_size(*PHONE)
    try:
        browser.get(server.url + "/")
        browser.find_element(By.ID, "attention-on").click()
        browser.find_element(By.ID, "file").send_keys(str(audio["mixed"]))
        wait_for(lambda: text_of(browser, "#events li"), what="the timeline")
        image = browser.find_element(By.ID, "attention")
        wait_for(lambda: browser.execute_script("return arguments[0].naturalWidth", image) > 0, what="the attention map")
        assert image.is_displayed() and image.size["width"] <= PHONE[0]
        overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0
        buttons = browser.find_elements(By.CSS_SELECTOR, "button")
        assert all(b.is_displayed() and b.size["height"] >= 32 for b in buttons)
    finally:
        browser.set_window_size(900, 1100)


def test_32_concurrent_clients_are_all_answered(server, audio):
    body = audio["low"].read_bytes()
    clients, per_client = 32, 3

    async def client(http: httpx.AsyncClient) -> list[tuple[int, str]]:
        out = []
        for _ in range(per_client):
            r = await http.post(server.url + "/api/predict?top_k=1", content=body)
            out.append((r.status_code, r.json()["labels"][0]["label"] if r.status_code == 200 else r.text))
        return out

    async def load():
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(timeout=120, limits=limits) as http:
            return await asyncio.gather(*(client(http) for _ in range(clients)))

    answers = [a for per in asyncio.run(load()) for a in per]
    assert answers == [(200, "low tone")] * (clients * per_client)
    metrics = httpx.get(server.url + "/metrics").text
    count = int(re.search(r"^ast_audio_batch_requests_count (\d+)$", metrics, re.M).group(1))
    served = float(re.search(r"^ast_audio_batch_requests_sum (\S+)$", metrics, re.M).group(1))
    alone = int(re.search(r'^ast_audio_batch_requests_bucket\{le="1"\} (\d+)$', metrics, re.M).group(1))
    assert served >= clients * per_client and alone < count  # some engine calls served several requests


def test_sigterm_finishes_the_requests_in_flight_then_stops(server, audio):
    """Runs last: it stops the module's server."""
    body, n = audio["long"].read_bytes(), 4

    def in_flight() -> int:
        text = httpx.get(server.url + "/metrics").text
        return int(re.search(r"^ast_audio_requests_in_flight (\d+)$", text, re.M).group(1)) - 1  # not this one

    async def scenario():
        async with httpx.AsyncClient(timeout=120) as http:
            requests = [asyncio.create_task(http.post(server.url + "/api/predict", content=body)) for _ in range(n)]
            while await asyncio.to_thread(in_flight) < n and not all(r.done() for r in requests):
                await asyncio.sleep(0.02)
            server.proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*requests)

    answers = asyncio.run(scenario())
    assert [(r.status_code, r.json()["labels"][0]["label"]) for r in answers] == [(200, "noise")] * n
    code = server.proc.wait(timeout=60)
    stderr = server.proc.stderr.read()
    assert code in (0, -signal.SIGTERM) and "Traceback" not in stderr, stderr[-3000:]  # uvicorn re-raises the signal
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/healthz")
