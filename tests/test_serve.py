"""The service in-process (FastAPI's TestClient, lifespan included): every endpoint, every bad
input, the batching queue, the live seam and the command's own errors.

The model is the trained toy model (``toy_model``: low tone, high tone, noise), so answers
are checked against what the tagger says of the same audio and against the class played.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import tempfile
import threading

import numpy as np
import pytest
import soundfile
import torch
from conftest import run_main
from factories import SR, toy_sequence, write_audio, write_truncated_wav
from fastapi.testclient import TestClient

from ast_audio.errors import AstAudioError
from ast_audio.infer import AudioTagger, FrameScores, PostProcessing
from ast_audio.serve import ServeSettings, create_app
from ast_audio.serve.batching import Batcher, Job
from ast_audio.serve.stream import live_updates

pytestmark = pytest.mark.usefixtures("one_thread")

LOW, HIGH, NOISE = 0, 1, 2


@pytest.fixture(scope="module")
def tagger(toy_model):
    # fp32: the service's answers are compared with the tagger's at near-exact tolerances, and
    # the service batches requests together (precision.BATCH_MATES)
    return AudioTagger(toy_model, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("serve-audio")
    return {
        "noise": write_audio(root / "noise.wav", toy_sequence([NOISE], 3.0, seed=1), SR, subtype="PCM_16"),
        "low": write_audio(root / "low.flac", toy_sequence([LOW], 1.0, seed=2), SR),
        "mixed": write_audio(root / "mixed.wav", toy_sequence([LOW, NOISE], 2.0, seed=3), SR, subtype="PCM_16"),
    }


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """The folder uploads are decoded in, for this test: it must be empty afterwards."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def client(tagger, **settings) -> TestClient:
    return TestClient(create_app(tagger, ServeSettings(**settings)))


def top(answer: dict) -> str:
    return answer["labels"][0]["label"]


def test_predict_answers_as_the_tagger_for_a_raw_body_and_a_multipart_file(tagger, clips, private_tmp):
    with client(tagger) as c:
        raw = c.post("/api/predict?top_k=2", content=clips["noise"].read_bytes())
        form = c.post("/api/predict", files={"file": ("folder/low.flac", clips["low"].read_bytes())})
    assert raw.status_code == 200 and form.status_code == 200, (raw.text, form.text)
    expected = tagger.predict(clips["noise"], top_k=2).to_json()
    assert raw.json() == {**expected, "path": "upload"}  # the CLI's JSON object, path as named by the client
    assert top(raw.json()) == "noise" and len(raw.json()["labels"]) == 2
    assert form.json() == {**tagger.predict(clips["low"]).to_json(), "path": "low.flac"}  # no folder kept
    assert top(form.json()) == "low tone"
    assert not list(private_tmp.iterdir())


def test_timeline_has_the_clis_windows_and_events(tagger, clips):
    with client(tagger) as c:
        answer = c.post("/api/predict?timeline=true&window=1&hop=0.5&threshold=0.5&top_k=3",
                        files={"file": ("mixed.wav", clips["mixed"].read_bytes())}).json()  # fmt: skip
    expected = tagger.timeline(clips["mixed"], 1.0, 0.5, threshold=0.5, top_k=3)
    assert {k: answer[k] for k in ("duration", "windows", "events")} == {
        k: v for k, v in expected.to_json().items() if k != "path"
    }
    events = {e["label"]: e for e in answer["events"]}
    assert events["low tone"]["start"] == 0.0 and events["low tone"]["end"] <= 2.5
    assert 1.5 <= events["noise"]["start"] and events["noise"]["end"] == 4.0
    assert answer["labels"][0]["score"] == pytest.approx(expected.scores.max(), abs=1e-6)


def test_embed_as_json_and_npy(tagger, clips):
    expected = tagger.embed(clips["noise"]).embedding
    with client(tagger) as c:
        as_json = c.post("/api/embed", content=clips["noise"].read_bytes()).json()
        as_npy = c.post("/api/embed?format=npy", files={"file": ("noise.wav", clips["noise"].read_bytes())})
    assert as_json["dim"] == expected.shape[0] and as_json["windows"] == 5 and as_json["duration"] == 3.0
    np.testing.assert_allclose(as_json["embedding"], expected, atol=1e-5)
    assert as_npy.headers["content-type"] == "application/x-npy"
    np.testing.assert_allclose(np.load(io.BytesIO(as_npy.content)), expected, atol=1e-6)


def test_attention_map_as_png(tagger, clips, private_tmp):
    with client(tagger) as c:
        png = c.post("/api/attention?method=last&top_k=3", files={"file": ("mixed.wav", clips["mixed"].read_bytes())})
        bad = c.post("/api/attention?method=gradcam", content=clips["low"].read_bytes())
        late = c.post("/api/attention?start=3.5", content=clips["noise"].read_bytes())
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n" and len(png.content) > 10_000
    assert bad.status_code == 422 and late.status_code == 200  # a start past the end: the last samples' window
    assert not list(private_tmp.iterdir())


def test_info_health_metrics_and_openapi(tagger, clips):
    with client(tagger, max_upload_mb=7) as c:
        info = c.get("/api/info").json()
        assert c.get("/healthz").json() == {"status": "ok", "precision": "fp32", "precision_reason": "asked for"}
        c.post("/api/predict", content=clips["low"].read_bytes())
        c.post("/api/predict", content=b"not audio at all")
        metrics = c.get("/metrics")
        spec = c.get("/openapi.json").json()
        page = c.get("/")
        script = c.get("/static/app.js")
    contract = tagger.members[0].features.to_dict()
    assert info["labels"] == ["low tone", "high tone", "noise"] and info["multilabel"] is False
    assert info["input_contract"] == json.loads(json.dumps(contract)) and info["sample_rate"] == contract["sample_rate"]
    assert info["limits"]["max_upload_mb"] == 7 and info["checkpoints"] == ["best_audio_model.safetensors"]
    d, grid = PostProcessing(), tagger.frame_grid()
    assert info["timeline"] == {"hop": grid.hop, "window": grid.window, "off_ratio": d.off_ratio, "median": d.median,
                                "min_duration": d.min_duration, "min_gap": d.min_gap}  # fmt: skip
    text = metrics.text
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'ast_audio_requests_total{method="POST",route="/api/predict",status="200"} 1' in text
    assert 'ast_audio_errors_total{route="/api/predict",status="415"} 1' in text
    assert re.search(r'ast_audio_request_seconds_count\{route="/api/predict"\} 2\n', text)
    assert "ast_audio_batch_requests_count 1\n" in text  # the failed upload never reached the model
    assert {"/api/predict", "/api/embed", "/api/attention", "/api/info", "/healthz", "/metrics"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert page.status_code == 200 and 'id="labels"' in page.text and "static/app.js" in page.text
    assert script.status_code == 200 and "api/predict" in script.text
    assert "http" not in re.sub(r"https?://\$\{|location\.protocol === \"https:\"", "", script.text)  # nothing from elsewhere


def test_bad_input_is_answered_with_its_reason_and_leaves_nothing_behind(tagger, clips, tmp_path, private_tmp):
    x = toy_sequence([NOISE], 1.0)
    nan = write_audio(tmp_path / "nan.wav", np.where(np.arange(x.size) == 100, np.nan, x), SR, subtype="FLOAT")
    cut = write_truncated_wav(tmp_path / "cut.wav", x, SR)
    with client(tagger, max_upload_mb=0.25, max_duration=2.0) as c:
        answers = {
            "text": c.post("/api/predict", files={"file": ("notes.wav", b"this is not audio\n" * 10)}),
            "empty": c.post("/api/predict", content=b""),
            "no file field": c.post("/api/predict", files={"other": ("a.wav", clips["low"].read_bytes())}),
            "truncated": c.post("/api/predict", content=cut.read_bytes()),
            "nan": c.post("/api/embed", content=nan.read_bytes()),
            "too long": c.post("/api/predict", content=clips["noise"].read_bytes()),  # 3 s > 2 s
            "too large": c.post("/api/predict", content=b"\0" * 300_000),  # announced by Content-Length
            "too large, chunked": c.post("/api/predict", content=(b"\0" * 65536 for _ in range(8))),
            "top_k": c.post("/api/predict?top_k=0", content=clips["low"].read_bytes()),
            "aggregate": c.post("/api/predict?aggregate=median", content=clips["low"].read_bytes()),
            "window": c.post("/api/predict?timeline=true&window=-1", content=clips["low"].read_bytes()),
            "windows": c.post("/api/predict?timeline=true&hop=0.00001", content=clips["low"].read_bytes()),
            "window inf": c.post("/api/predict?timeline=true&window=inf", content=clips["low"].read_bytes()),
            "threshold nan": c.post("/api/predict?timeline=true&threshold=nan", content=clips["low"].read_bytes()),
            "start inf": c.post("/api/attention?start=inf", content=clips["low"].read_bytes()),
            "off_ratio": c.post("/api/predict?timeline=true&off_ratio=2", content=clips["low"].read_bytes()),
            "median": c.post("/api/predict?timeline=true&median=-1", content=clips["low"].read_bytes()),
            "format": c.post("/api/embed?format=pickle", content=clips["low"].read_bytes()),
        }
        still_fine = c.post("/api/predict", content=clips["low"].read_bytes())
    status = {name: a.status_code for name, a in answers.items()}
    assert status == {"text": 415, "empty": 422, "no file field": 422, "truncated": 422, "nan": 422, "too long": 422,
                      "too large": 413, "too large, chunked": 413, "top_k": 422, "aggregate": 422, "window": 422,
                      "windows": 422, "window inf": 422, "threshold nan": 422, "start inf": 422, "off_ratio": 422,
                      "median": 422, "format": 422}  # fmt: skip
    detail = {name: str(a.json()["detail"]) for name, a in answers.items()}
    assert detail["text"] == "notes.wav: not a decodable audio file (Format not recognised)"
    assert detail["truncated"].startswith("upload: truncated file")
    assert detail["nan"] == "upload: contains NaN or Inf samples"
    assert detail["too long"] == "upload: 3.0 s of audio; this service takes at most 2 s (--max-duration)"
    assert detail["too large"] == detail["too large, chunked"] == "request body over the limit of 0.25 MB (--max-upload-mb)"
    assert "file" in detail["no file field"] and "empty body" in detail["empty"]
    assert detail["windows"] == "hop must be at least 0.01 seconds, got 1e-05"  # the library's floor, as the CLI's
    assert detail["window inf"] == "window must be a finite number, got inf"
    assert detail["start inf"] == "start must be a finite number, got inf"
    # FastAPI's own validation errors in the service's one-line format, not its list of objects
    assert detail["top_k"] == "top_k: Input should be greater than or equal to 1, got '0'"
    assert detail["format"].startswith("format: Input should be 'json' or 'npy'")
    assert detail["threshold nan"].startswith("threshold: ")
    assert detail["off_ratio"] == "off_ratio must be in (0, 1], got 2.0"  # PostProcessing's own rules, as the CLI's
    assert detail["median"] == "median, min_duration and min_gap must not be negative"
    assert still_fine.status_code == 200 and top(still_fine.json()) == "low tone"
    assert not list(private_tmp.iterdir())  # every upload's temporary file was removed


def test_a_timeline_of_too_many_windows_is_refused_before_the_model_runs(tagger, monkeypatch):
    long = io.BytesIO()
    soundfile.write(long, np.zeros(SR * 101, dtype=np.float32), SR, format="WAV", subtype="PCM_16")  # 101 s
    monkeypatch.setattr(tagger, "timeline", lambda *a, **k: pytest.fail("the model ran"))
    with client(tagger) as c:
        answer = c.post("/api/predict?timeline=true&hop=0.01", content=long.getvalue())
    assert answer.status_code == 422
    assert answer.json()["detail"] == "upload: a timeline of 10100 windows; at most 10000 (choose a longer hop)"


def test_a_request_not_answered_in_time_gets_503_and_the_service_goes_on(tagger, clips, monkeypatch):
    release = threading.Event()
    original = tagger.predict

    def stuck(*args, **kwargs):
        release.wait(30)
        return original(*args, **kwargs)

    monkeypatch.setattr(tagger, "predict", stuck)
    with client(tagger, timeout=0.2) as c:
        late = c.post("/api/predict", content=clips["low"].read_bytes())
        release.set()
        monkeypatch.setattr(tagger, "predict", original)
        after = c.post("/api/predict", content=clips["low"].read_bytes())
    assert late.status_code == 503 and late.json()["detail"] == "not answered within 0.2 s (--timeout)"
    assert after.status_code == 200 and top(after.json()) == "low tone"


def test_the_queue_shares_engine_calls_and_finishes_what_is_queued_when_stopped(tagger):
    waves = [torch.from_numpy(toy_sequence([i % 3], 1.0, seed=i)) for i in range(20)]

    async def scenario():
        batcher = Batcher(tagger, max_batch=8, max_wait=0.01)
        await batcher.start()
        tasks = [asyncio.create_task(batcher.submit(Job("predict", w, ("max",), top_k=1))) for w in waves]
        tasks.append(asyncio.create_task(batcher.submit(Job("embed", waves[0]))))
        await asyncio.sleep(0)  # every job queued
        await batcher.stop()  # returns once every queued job is answered
        assert all(t.done() for t in tasks)
        return [t.result() for t in tasks], batcher.metrics

    results, metrics = asyncio.run(scenario())
    for wave, got in zip(waves, results[:-1], strict=True):
        alone = tagger.predict(wave, sample_rate=SR, top_k=1)
        assert got.labels[0][0] == alone.labels[0][0]
        np.testing.assert_allclose(got.scores, alone.scores, atol=1e-5)
    np.testing.assert_allclose(results[-1].embedding, tagger.embed(waves[0], sample_rate=SR).embedding, atol=1e-5)
    # 21 jobs in batches of at most 8 requests: 8 + 8 + (4 predict + 1 embed: two calls of one kind each)
    assert metrics.batches.total == 4 and metrics.batches.sum == 21


def test_timelines_of_one_engine_call_keep_each_requests_post_processing(tagger):
    wave = torch.from_numpy(toy_sequence([LOW, NOISE, LOW], 2.0, seed=4))
    posts = [PostProcessing(), PostProcessing(min_duration=2.5), PostProcessing(threshold=0.9, median=0)]

    async def scenario():
        batcher = Batcher(tagger, max_batch=8)
        await batcher.start()
        tasks = [asyncio.create_task(batcher.submit(Job("timeline", wave, (None, None, "max"), 3, post)))
                 for post in posts]  # fmt: skip
        answers = await asyncio.gather(*tasks)
        await batcher.stop()
        return answers, batcher.metrics

    answers, metrics = asyncio.run(scenario())
    assert metrics.batches.total == 1  # one engine call for the three requests
    expected = [tagger.timeline(wave, sample_rate=SR, post=post, top_k=3).events for post in posts]
    assert [a.events for a in answers] == expected
    assert expected[0] != expected[1] and expected[0] != expected[2]


def test_a_failing_request_does_not_fail_the_others_of_its_batch(tagger):
    good = [torch.from_numpy(toy_sequence([LOW], 1.0, seed=i)) for i in range(3)]
    bad = good[0].clone()
    bad[10] = float("nan")

    async def scenario():
        batcher = Batcher(tagger, max_batch=8)
        await batcher.start()
        tasks = [asyncio.create_task(batcher.submit(Job("predict", w, ("max",), top_k=1))) for w in [*good, bad]]
        answers = await asyncio.gather(*tasks, return_exceptions=True)
        await batcher.stop()
        return answers, batcher.metrics

    answers, metrics = asyncio.run(scenario())
    assert [a.labels[0][0] for a in answers[:3]] == ["low tone"] * 3
    assert isinstance(answers[3], AstAudioError) and "NaN" in str(answers[3])
    assert metrics.batches.sum == 3  # the shared call failed; the good ones were answered one by one


def stream_messages(tagger, chunks, **options) -> tuple[list, list]:
    """``tagger.stream``'s frames ``(start, end, labels)`` and event changes ``(state, label, time, score)``."""
    frames, events = [], []
    for u in tagger.stream(chunks, SR, **options):
        if isinstance(u, FrameScores):
            frames.append(({"type": "scores", **u.to_json()}, u.scores))
        else:
            events.append((u.kind, u.label, round(u.time, 3), round(u.score, 6)))
    return frames, events


def as_changes(messages: list[dict]) -> list[tuple]:
    """The event messages as ``(state, label, time, score)``; an end's start is its start's time."""
    opened, out = {}, []
    for m in messages:
        if m["type"] != "event":
            continue
        if m["state"] == "start":
            opened[m["label"]] = m["start"]
            out.append(("start", m["label"], m["start"], m["score"]))
        else:
            assert m["start"] == opened.pop(m["label"])
            out.append(("end", m["label"], m["end"], m["peak"]))
    assert not opened  # every event ended
    return out


def test_live_updates_are_the_taggers_stream_with_its_model_calls_through_on_model(tagger, monkeypatch):
    audio = toy_sequence([NOISE, LOW, NOISE], 2.0, seed=5)
    chunks = [audio[i : i + 1600] for i in range(0, audio.size, 1600)]  # 0.1 s chunks
    inside, calls, frame_probs = [False], [], tagger._frame_probs

    def on_model(fn):
        inside[0] = True
        try:
            return fn()
        finally:
            inside[0] = False

    def recorded(*args, **kwargs):
        calls.append(inside[0])
        return frame_probs(*args, **kwargs)

    monkeypatch.setattr(tagger, "_frame_probs", recorded)
    updates = list(live_updates(tagger, iter(chunks), SR, hop=0.2, threshold=0.6, top_k=2, on_model=on_model))
    assert len(calls) > 1 and all(calls)  # every model call of the stream went through on_model
    monkeypatch.undo()
    frames, events = stream_messages(tagger, iter(chunks), hop=0.2, post=PostProcessing(0.6), top_k=2)
    assert [u for u in updates if u["type"] == "scores"] == [f for f, _ in frames]
    assert [u["end"] for u in updates if u["type"] == "scores"] == pytest.approx([0.2 * i for i in range(1, 31)])
    assert as_changes(updates) == events
    low = [(state, time) for state, label, time, _ in events if label == "low tone"]
    assert [state for state, label, *_ in events if label == "noise"] == ["start", "end"] * 2
    assert [state for state, _ in low] == ["start", "end"] and 1.5 <= low[0][1] <= 2.5 and 3.5 <= low[1][1] <= 4.5


def test_the_websocket_streams_tagger_stream_with_the_model_on_the_queues_thread(tagger, clips, monkeypatch):
    audio = toy_sequence([NOISE, LOW], 2.0, seed=6)
    pcm = (audio * 32767).astype("<i2")
    threads = {"stream": set(), "queue": set()}
    frame_probs, run = tagger._frame_probs, tagger._run

    def recorded(kind, fn):
        def call(*args, **kwargs):
            threads[kind].add(threading.current_thread())
            return fn(*args, **kwargs)

        return call

    monkeypatch.setattr(tagger, "_frame_probs", recorded("stream", frame_probs))
    monkeypatch.setattr(tagger, "_run", recorded("queue", run))
    with client(tagger) as c:
        with c.websocket_connect("/api/stream?sample_rate=16000&top_k=1") as ws:  # hop: the detection default
            messages = []
            for i in range(0, pcm.size, 8000):  # half a second at a time, while the queue answers a request
                ws.send_bytes(pcm[i : i + 4000].tobytes())
                ws.send_bytes(pcm[i + 4000 : i + 8000].tobytes())
                assert c.post("/api/predict", content=clips["low"].read_bytes()).status_code == 200
            ws.send_text("end")
            messages.append(ws.receive_json())
            while messages[-1]["type"] != "end":
                messages.append(ws.receive_json())
        info = c.get("/api/info").json()
    monkeypatch.undo()  # what follows is the reference, on this thread
    frames, events = stream_messages(tagger, [pcm.astype(np.float32) / 32768.0], top_k=1)
    scores = [m for m in messages if m["type"] == "scores"]
    assert [(s["start"], s["end"], s["labels"][0]["label"]) for s in scores] == [
        (f["start"], f["end"], f["labels"][0]["label"]) for f, _ in frames]  # fmt: skip
    assert [s["labels"][0]["score"] for s in scores] == pytest.approx([f["labels"][0]["score"] for f, _ in frames],
                                                                      abs=1e-5)  # fmt: skip
    assert scores[1]["end"] - scores[0]["end"] == pytest.approx(tagger.frame_grid().hop) and len(scores) == 40
    assert as_changes(messages) == events
    low = [(state, time) for state, label, time, _ in events if label == "low tone"]
    assert [state for state, label, *_ in events if label == "noise"] == ["start", "end"]
    assert [state for state, _ in low] == ["start", "end"] and 1.5 <= low[0][1] <= 2.5 and 3.5 <= low[1][1] <= 4.5
    assert len(threads["stream"]) == 1 and threads["stream"] == threads["queue"]  # one thread: the queue's worker
    assert next(iter(threads["stream"])).name.startswith("ast-audio-model")
    assert info["stream"] == {"hop": tagger.frame_grid().hop, "window": tagger.frame_grid().window,
                              "calibrated_thresholds": tagger.thresholds is not None}  # fmt: skip


def test_the_websocket_refuses_bad_parameters_and_too_many_streams(tagger):
    with client(tagger) as c:
        with c.websocket_connect("/api/stream?sample_rate=3") as ws:
            refused = ws.receive_json()
        with c.websocket_connect("/api/stream?threshold=2") as ws:
            too_high = ws.receive_json()
    with client(tagger, max_streams=1) as c:
        with c.websocket_connect("/api/stream") as first, c.websocket_connect("/api/stream") as second:
            too_many = second.receive_json()
            first.send_text("end")
            assert first.receive_json() == {"type": "end"}
        with c.websocket_connect("/api/stream") as again:  # the first one closed: a place is free
            again.send_text("end")
            assert again.receive_json() == {"type": "end"}
        with c.websocket_connect("/api/stream") as ws:
            ws.send_bytes(b"\0\0\0")
            odd = ws.receive_json()
        assert c.get("/healthz").status_code == 200
    assert refused == {"type": "error", "message": "sample_rate must be in [1000, 384000], got 3"}
    assert too_high == {"type": "error", "message": "threshold must be in [0.0, 1.0], got 2.0"}
    assert odd["type"] == "error" and "16-bit PCM" in odd["message"]
    assert too_many == {"type": "error", "message": "1 live streams are open, the most this service takes "
                        "(--max-streams); try again later"}  # fmt: skip


def test_the_command_reports_a_bad_checkpoint_in_one_line(tmp_path):
    out = run_main("serve", "--checkpoint", tmp_path / "missing.safetensors", "--port", "9")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert out.stderr.startswith("ast-audio: error: ") and "missing.safetensors" in out.stderr


def test_the_readme_curl_examples_are_answered(tagger, clips):
    """Each ``curl`` line of the README's service section, sent to the app with a real file."""
    import shlex
    from pathlib import Path
    from urllib.parse import urlsplit

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    lines = [line for block in re.findall(r"```sh\n(.*?)```", readme, flags=re.S) for line in block.splitlines()
             if line.startswith("curl ")]  # fmt: skip
    assert len(lines) >= 4
    with client(tagger) as c:
        for line in lines:
            tokens = shlex.split(line)
            url = urlsplit(next(t for t in tokens if t.startswith("http://127.0.0.1:8000/")))
            target = url.path + (f"?{url.query}" if url.query else "")
            body = clips["mixed"].read_bytes()
            if "--data-binary" in tokens:
                answer = c.post(target, content=body)
            elif "-F" in tokens:
                answer = c.post(target, files={"file": ("meeting.flac", body)})
            else:
                answer = c.get(target)
            assert answer.status_code == 200, (line, answer.text)
