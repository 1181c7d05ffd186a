"""The page's in-browser time per clip, shared by the benchmarks (no main block; bench/export.py
reports it beside ONNX Runtime and PyTorch).

:func:`browser_seconds_per_clip` does what a visitor of the client-side page does, in headless
Chromium (Debian's ``chromium`` and ``chromium-driver``, driven through Selenium) with the vendored
onnxruntime-web (``make vendor``; WebAssembly): the static page of the ONNX file
(``ast_audio.serve.web.write_site``) is served from a temporary folder on 127.0.0.1 (with the
cross-origin isolation headers ``serve --client-side`` sends, so the runtime may use threads: half
the machine's cores, at most 4; ``isolated=False``: a plain static host, one thread), and once it
has loaded the model (not timed), each clip is decoded and resampled by WebAudio and scored by the
model over its windows, as the page's top labels are (``ClientModel.decode`` then ``predict``).
The page's timeline (a model window every 0.1 s) is left out: the figure compares with one
forward pass per clip elsewhere. One clip is run first to warm up; the median of the clips is
returned.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import statistics
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from ast_audio.serve.web import ISOLATION_HEADERS, write_site

# The page's model and the clip's timing; `client` is the page's promise of its ClientModel.
_TIME_CLIP = """
const [url, done] = [arguments[0], arguments[arguments.length - 1]];
(async () => {
  const model = await client;
  const blob = await (await fetch(url)).blob();
  const started = performance.now();
  const samples = await model.decode(blob);
  await model.predict(samples);
  done((performance.now() - started) / 1000);
})().catch((e) => done(`error: ${e.message}`));
"""


def _chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver):
        raise RuntimeError("chromium and chromedriver are not on PATH: `make install` installs them")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    chrome = webdriver.Chrome(options=options, service=Service(driver))
    chrome.set_page_load_timeout(600)
    chrome.set_script_timeout(600)
    return chrome


def _quiet_handler(folder: Path, isolated: bool):
    class Handler(http.server.SimpleHTTPRequestHandler):
        def end_headers(self):
            if isolated:
                for name, value in ISOLATION_HEADERS.items():
                    self.send_header(name, value)
            super().end_headers()

        def log_message(self, *args):
            pass

    return functools.partial(Handler, directory=str(folder))


def browser_seconds_per_clip(onnx_path: str | Path, wav_paths: Sequence[str | Path], *, isolated: bool = True) -> float:
    """Median seconds the client-side page takes to tag one of ``wav_paths`` with the waveform-in
    ONNX file ``onnx_path`` in headless Chromium (decode, resample, the model), page load excluded;
    ``isolated``: served with the cross-origin isolation headers (threads), else as a plain host."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    if not wav_paths:
        raise ValueError("no clips to time")
    with tempfile.TemporaryDirectory(prefix="ast-audio-webpage-") as tmp:
        site = write_site(Path(tmp) / "site", onnx=onnx_path)
        clips = site / "clips"
        clips.mkdir()
        names = []
        for i, path in enumerate(wav_paths):
            names.append(f"clips/{i}{Path(path).suffix}")
            shutil.copyfile(path, site / names[-1])
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _quiet_handler(site, isolated))
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        chrome = _chromium()
        try:
            chrome.get(f"http://127.0.0.1:{httpd.server_address[1]}/")
            WebDriverWait(chrome, 600).until(
                lambda c: "labels" in c.find_element(By.ID, "model").text or c.find_element(By.ID, "error").text
            )
            if chrome.find_element(By.ID, "error").text:
                raise RuntimeError(f"the page did not load the model: {chrome.find_element(By.ID, 'error').text}")
            times = []
            for name in [names[0], *names]:  # the first clip once more, untimed: warm-up
                seconds = chrome.execute_async_script(_TIME_CLIP, name)
                if isinstance(seconds, str):
                    raise RuntimeError(f"{name}: {seconds}")
                times.append(float(seconds))
            return statistics.median(times[1:])
        finally:
            chrome.quit()
            httpd.shutdown()
            httpd.server_close()
