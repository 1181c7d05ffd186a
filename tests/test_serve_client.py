"""The page's client-side mode for real: the model runs in headless Chromium with the vendored
onnxruntime-web (``make vendor``), served by ``ast-audio serve --client-side`` (a subprocess) and
as the static folder of ``ast-audio export --format web`` (the standard library's file server).

Tagged in the browser means: the page's scores equal the service's ``/api/predict`` for the same
file within 1e-3 (a file at the model's rate, so only the in-graph features could differ) and its
events are the service's timeline with the model's length as the window; the service counts no
request to its prediction API and the browser made none. A 44.1 kHz file (resampled by WebAudio
in the page) gets the service's top label, and so does a recording from the fake microphone.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time

import httpx
import pytest
from browsers import StaticFolder, chromium, free_port, text_of, wait_for, wait_until_served
from conftest import run_main, start_cli
from factories import SR, toy_sequence, write_audio, write_text_as_audio

from ast_audio.audio.io import resample
from ast_audio.infer import AudioTagger
from ast_audio.serve import web

pytestmark = pytest.mark.usefixtures("one_thread")

LOW, HIGH, NOISE = 0, 1, 2


class Running:
    def __init__(self, proc: subprocess.Popen, url: str):
        self.proc, self.url = proc, url


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    root = tmp_path_factory.mktemp("client-audio")
    noise = toy_sequence([NOISE], 3.0, seed=11)
    return {
        "mixed": write_audio(root / "low-noise-high.wav", toy_sequence([LOW, NOISE, HIGH], 2.0, seed=7), SR,
                             subtype="PCM_16"),  # fmt: skip
        "cd": write_audio(root / "noise-44k.wav", resample(noise, SR, 44100).numpy(), 44100, subtype="PCM_16"),
        "mic": write_audio(root / "mic.wav", toy_sequence([NOISE], 4.0, seed=8), SR, subtype="PCM_16"),
        "text": write_text_as_audio(root / "notes.wav"),
    }


@pytest.fixture(scope="module")
def server(toy_model, tmp_path_factory):
    """``serve --client-side``: the checkpoint exported once into this module's cache folder."""
    port = free_port()
    home = tmp_path_factory.mktemp("client-home")
    proc = start_cli("serve", "--checkpoint", toy_model, "--client-side", "--port", port, "--max-wait-ms", 10,
                     AST_AUDIO_HOME=home)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_until_served(proc, url, timeout=300)
    yield Running(proc, url)
    proc.terminate()
    proc.wait(timeout=60)


@pytest.fixture(scope="module")
def site(toy_model, tmp_path_factory):
    """``export --format web`` of the toy model, once for the module (tests that change it copy it)."""
    out = tmp_path_factory.mktemp("client-site") / "site"
    run = run_main("export", "--checkpoint", toy_model, "--format", "web", "--out", out)
    assert run.returncode == 0, run.stderr
    return out


@pytest.fixture(scope="module")
def browser(audio):
    chrome = chromium(audio["mic"])
    yield chrome
    chrome.quit()


def open_page(chrome, url: str) -> None:
    from selenium.webdriver.common.by import By

    chrome.get(url)
    model = wait_for(lambda: re.search(r"labels|could not", chrome.find_element(By.ID, "model").text),
                     what="the model loaded in the browser")  # fmt: skip
    assert model.group(0) == "labels", chrome.find_element(By.ID, "error").text


def tag_in_page(chrome, path) -> dict:
    """Choose ``path`` with the file input; the labels (full-precision scores), events and status."""
    from selenium.webdriver.common.by import By

    chrome.find_element(By.ID, "file").send_keys(str(path))
    status = wait_for(lambda: re.fullmatch(rf"{re.escape(path.name)}: .* event\(s\)", chrome.find_element(By.ID, "status").text)
                      or chrome.find_element(By.ID, "error").is_displayed(), what="the tagged file")  # fmt: skip
    assert status is not True, chrome.find_element(By.ID, "error").text
    rows = chrome.find_elements(By.CSS_SELECTOR, "#labels .row")
    labels = {r.find_element(By.CSS_SELECTOR, ".name").text: float(r.find_element(By.CSS_SELECTOR, ".score").get_attribute("data-score"))
              for r in rows}  # fmt: skip
    return {"labels": labels, "events": text_of(chrome, "#events li"), "status": status.group(0)}


def api_requests(url: str) -> dict[str, int]:
    """Requests the service answered, by route (its Prometheus counters)."""
    counts: dict[str, int] = {}
    for route, n in re.findall(r'^ast_audio_requests_total\{method="\w+",route="([^"]+)",status="\d+"\} (\d+)$',
                               httpx.get(url + "/metrics").text, re.M):  # fmt: skip
        counts[route] = counts.get(route, 0) + int(n)
    return counts


def fetched_by_page(chrome) -> list[str]:
    return chrome.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")


def test_a_file_is_tagged_in_the_browser_as_the_service_tags_it(server, browser, audio):
    open_page(browser, server.url + "/")
    # the service isolates the page (COOP/COEP), so onnxruntime-web may use the machine's threads
    threads = min(4, -(-browser.execute_script("return navigator.hardwareConcurrency") // 2))  # the runtime's choice
    assert browser.execute_script("return crossOriginIsolated") is True
    assert browser.find_element("id", "model").text.endswith(f"(WebAssembly, {threads} thread{'s' * (threads > 1)})")
    assert not browser.find_element("id", "live").is_displayed()  # live streams to the service: not here
    page = tag_in_page(browser, audio["mixed"])
    assert api_requests(server.url).get("/api/predict", 0) == 0  # the service saw no prediction request
    fetched = fetched_by_page(browser)
    assert not [u for u in fetched if "/api/" in u] and any(u.endswith("/model.onnx") for u in fetched)
    assert all(u.startswith(server.url + "/") for u in fetched)  # nothing from elsewhere (no CDN)
    assert any(u.endswith("/static/vendor/ort/ort-wasm-simd-threaded.wasm") for u in fetched)

    body = audio["mixed"].read_bytes()
    served = httpx.post(server.url + "/api/predict?top_k=3", content=body, timeout=120).json()
    expected = {x["label"]: x["score"] for x in served["labels"]}
    assert page["labels"].keys() == expected.keys() == {"low tone", "high tone", "noise"}
    assert max(abs(page["labels"][k] - expected[k]) for k in expected) < 1e-3, (page["labels"], expected)
    # the timeline: the service's frames and post-processing, each frame seen by a model-length window
    window = httpx.get(server.url + "/api/info").json()["window_seconds"]
    timeline = httpx.post(server.url + f"/api/predict?timeline=true&window={window}", content=body, timeout=120).json()
    assert page["events"] == [f"{e['label']}: {e['start']:.2f}–{e['end']:.2f} s (peak {e['peak']:.2f})"
                              for e in timeline["events"]]  # fmt: skip
    assert {e["label"] for e in timeline["events"]} == {"low tone", "noise", "high tone"}
    assert page["status"] == f"low-noise-high.wav: 6.00 s, {len(timeline['windows'])} frame(s), " \
                             f"{len(timeline['events'])} event(s)"  # fmt: skip


def test_a_44k_file_is_resampled_in_the_page_and_gets_the_services_top_label(server, browser, audio):
    open_page(browser, server.url + "/")
    page = tag_in_page(browser, audio["cd"])
    served = httpx.post(server.url + "/api/predict?top_k=3", content=audio["cd"].read_bytes(), timeout=120).json()
    top = max(page["labels"], key=page["labels"].get)
    assert top == served["labels"][0]["label"] == "noise"
    assert not [u for u in fetched_by_page(browser) if "/api/" in u]


def test_a_recording_is_tagged_in_the_browser(server, browser):
    from selenium.webdriver.common.by import By

    before = api_requests(server.url).get("/api/predict", 0)
    open_page(browser, server.url + "/")
    browser.find_element(By.ID, "record").click()
    wait_for(lambda: browser.find_element(By.ID, "status").text == "recording…", what="the recording state")
    time.sleep(1.5)  # what the fake microphone plays meanwhile (noise) is recorded
    browser.find_element(By.ID, "record").click()
    wait_for(lambda: re.fullmatch(r"recording\.wav: .* event\(s\)", browser.find_element(By.ID, "status").text),
             what="the tagged recording")  # fmt: skip
    assert text_of(browser, "#labels .name")[0] == "noise"
    assert api_requests(server.url).get("/api/predict", 0) == before
    assert not [u for u in fetched_by_page(browser) if "/api/" in u]


def test_an_undecodable_file_is_one_line_in_the_page(server, browser, audio):
    from selenium.webdriver.common.by import By

    open_page(browser, server.url + "/")
    browser.find_element(By.ID, "file").send_keys(str(audio["text"]))
    error = browser.find_element(By.ID, "error")
    wait_for(error.is_displayed, what="the error")
    assert error.text.startswith("notes.wav: this browser cannot decode it (") and "\n" not in error.text


def test_the_static_folder_tags_audio_in_the_browser(site, toy_model, browser, audio, tmp_path):
    assert {p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()} == {
        "index.html", "model.onnx", "static/app.js", "static/client.js", "static/style.css",
        *(f"static/vendor/ort/{name}" for name in (*web.RUNTIME_FILES, "VERSION")),
    }  # fmt: skip
    assert web.read_metadata(site / "model.onnx")["labels"] == ["low tone", "high tone", "noise"]
    expected = AudioTagger(toy_model, device="cpu", precision="fp32").predict(audio["mixed"], top_k=3)
    with StaticFolder(site) as host:  # a plain static host: no isolation headers, one thread
        open_page(browser, host.url + "/")
        assert browser.execute_script("return crossOriginIsolated") is False
        assert browser.find_element("id", "model").text.endswith("(WebAssembly, 1 thread)")
        page = tag_in_page(browser, audio["mixed"])
        assert not [p for p in host.requests if "/api/" in p]
    assert max(abs(page["labels"][name] - score) for name, score in expected.labels) < 1e-3

    # without the vendored runtime the page says so in one line
    bare = shutil.copytree(site, tmp_path / "bare")
    shutil.rmtree(bare / "static" / "vendor")
    with StaticFolder(bare) as host:
        browser.get(host.url + "/")
        error = browser.find_element("id", "error")
        wait_for(error.is_displayed, what="the missing runtime")
        assert error.text == ("static/vendor/ort/ort.wasm.min.js is missing: the in-browser runtime (onnxruntime-web) "
                              "is put there at build time by `make vendor`")  # fmt: skip


# ------------------------------------------------------------------ the commands, without a browser


def test_export_web_replaces_its_own_folder_and_refuses_others(site, toy_model, tmp_path):
    old = shutil.copytree(site, tmp_path / "site")
    (old / "model.onnx").write_bytes(b"stale")
    (old / "static" / "stale.js").write_text("")
    out = run_main("export", "--checkpoint", toy_model, "--format", "web", "--out", old)
    assert out.returncode == 0, out.stderr
    assert web.read_metadata(old / "model.onnx")["input"] == "waveform"  # rewritten whole
    assert not (old / "static" / "stale.js").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["site"]  # no temporary folder left beside it
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    out = run_main("export", "--checkpoint", toy_model, "--format", "web", "--out", other)
    assert out.returncode == 2 and (other / "todo.txt").read_text() == "keep me"
    assert out.stderr.strip().splitlines() == [f"ast-audio: error: {other}: is a folder that holds other files; give a "
                                               "new or empty folder (or one written by `export --format web`, which "
                                               "is replaced)"]  # fmt: skip


@pytest.mark.parametrize("command", ["serve", "export"])
def test_without_the_vendored_runtime_client_side_is_refused_in_one_line(command, toy_model, tmp_path, monkeypatch):
    monkeypatch.setattr(web, "RUNTIME", tmp_path / "vendor" / "ort")
    args = ["--client-side", "--port", free_port()] if command == "serve" else ["--format", "web", "--out", tmp_path / "site"]
    out = run_main(command, "--checkpoint", toy_model, *args)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"ast-audio: error: {tmp_path}/vendor/ort/ort.wasm.min.js: missing: "
                                               "the in-browser runtime (onnxruntime-web) is fetched from the npm "
                                               "registry at build time by `make vendor`"]  # fmt: skip
    assert not (tmp_path / "site").exists()


def test_serve_client_side_takes_one_checkpoint_and_a_waveform_model_only(toy_model, tmp_path):
    fbank_onnx = tmp_path / "fbank.onnx"
    assert run_main("export", "--checkpoint", toy_model, "--out", fbank_onnx, "--no-verify").returncode == 0
    text = write_text_as_audio(tmp_path / "notes.onnx")
    for bad, reason in [(fbank_onnx, "not a waveform-in ONNX model of ast-audio (its metadata has no \"ast_audio\" "
                                     "entry with input \"waveform\"): write one with `ast-audio export --format onnx "
                                     "--input waveform`"),
                        (text, "not an ONNX model file"), (tmp_path / "none.onnx", "no such file")]:  # fmt: skip
        out = run_main("serve", "--checkpoint", toy_model, "--client-side", "--onnx", bad, "--port", free_port())
        assert (out.returncode, out.stderr.strip().splitlines()) == (2, [f"ast-audio: error: {bad}: {reason}"])
    out = run_main("serve", "--checkpoint", toy_model, toy_model, "--client-side", "--port", free_port())
    assert (out.returncode, out.stderr.strip()) == (2, "ast-audio: error: --client-side runs one checkpoint in the "
                                                       "browser; got 2")  # fmt: skip
    out = run_main("serve", "--checkpoint", toy_model, "--onnx", fbank_onnx, "--port", free_port())
    assert (out.returncode, out.stderr.strip()) == (2, "ast-audio: error: --onnx is the model of the client-side page: "
                                                       "it needs --client-side")  # fmt: skip


def test_serve_onnx_of_another_checkpoints_labels_is_refused(toy_model, checkpoints, tmp_path):
    other = web.cached_model(str(checkpoints["multi"]), tmp_path)  # a waveform model with other labels
    out = run_main("serve", "--checkpoint", toy_model, "--client-side", "--onnx", other, "--port", free_port())
    assert (out.returncode, out.stderr.strip()) == (2, f"ast-audio: error: {other}: its labels are not the "
                                                       "checkpoint's (the page and the API would disagree); export it "
                                                       "from this checkpoint, or leave --onnx out")  # fmt: skip


def test_serve_onnx_serves_the_given_waveform_model(toy_model, tmp_path):
    model = tmp_path / "toy-waveform.onnx"
    out = run_main("export", "--checkpoint", toy_model, "--format", "onnx", "--input", "waveform", "--out", model)
    assert out.returncode == 0, out.stderr
    port = free_port()
    proc = start_cli("serve", "--checkpoint", toy_model, "--client-side", "--onnx", model, "--port", port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_served(proc, url, timeout=300)
        served = httpx.get(url + "/model.onnx")
        assert served.content == model.read_bytes() and served.headers["cache-control"] == "no-cache"
        settings = re.search(r'<meta name="ast-audio-client" content="([^"]+)">', httpx.get(url + "/").text)
        assert json.loads(settings.group(1).replace("&quot;", '"')) == web.client_settings()
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_the_model_is_exported_once_per_checkpoint(toy_model, tmp_path):
    checkpoint = tmp_path / "toy.safetensors"
    shutil.copyfile(toy_model, checkpoint)
    first = web.cached_model(str(checkpoint), tmp_path / "cache")
    stamp = first.stat().st_mtime_ns
    assert web.cached_model(str(checkpoint), tmp_path / "cache") == first and first.stat().st_mtime_ns == stamp
    checkpoint.touch()  # a changed checkpoint is exported again
    again = web.cached_model(str(checkpoint), tmp_path / "cache")
    assert again != first and web.read_metadata(again)["labels"] == web.read_metadata(first)["labels"]


def test_read_metadata_equals_onnx_own_reading(site):
    import onnx

    proto = onnx.load(str(site / "model.onnx"), load_external_data=False)
    stored = {p.key: p.value for p in proto.metadata_props}
    assert web.read_metadata(site / "model.onnx") == json.loads(stored["ast_audio"])
    assert [i.name for i in proto.graph.input] == ["waveform"] and [o.name for o in proto.graph.output] == ["probabilities"]
