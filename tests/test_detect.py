"""Event detection on real audio: the frame timeline, live streaming = offline, DCASE output."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch
from conftest import cli_in_process, run_cli, run_main
from factories import SR, loudness_model, noise, write_audio

from ast_audio.checkpoints import save_checkpoint
from ast_audio.infer import AudioTagger, EventChange, FrameScores

pytestmark = pytest.mark.usefixtures("one_thread")


def scene() -> np.ndarray:
    """0-4 s quiet, 4-7 s loud, 7-10 s quiet."""
    return np.concatenate([noise(4, 1e-4, seed=1), noise(3, 0.3, seed=2), noise(3, 1e-4, seed=3)]).astype(np.float32)


def close(got, expected, tol):
    return len(got) == len(expected) and all(
        g[0] == e[0] and abs(g[1] - e[1]) <= tol and abs(g[2] - e[2]) <= tol for g, e in zip(got, expected, strict=True)
    )


EXPECTED = [("quiet", 0.0, 4.0), ("loud", 4.0, 7.0), ("quiet", 7.0, 10.0)]


@pytest.mark.parametrize("input_tdim", [100, 300])  # a 1 s model; a 3 s model run on 1 s windows (grid cut)
def test_timeline_default_finds_onsets_and_offsets_within_a_hop(input_tdim):
    tagger = AudioTagger(loudness_model(input_tdim), device="cpu", batch_size=16)
    tl = tagger.timeline(scene(), sample_rate=SR)
    assert len(tl.windows) == 100 and tl.windows[1].start == 0.1 and tl.windows[-1].end == 10.0
    got = [(e.label, e.start, e.end) for e in tl.events]
    assert close(got, EXPECTED, 0.25), got
    assert all(e.peak > 0.99 for e in tl.events)


def test_short_windows_run_with_the_position_grid_cut():
    model = loudness_model(300)
    tagger = AudioTagger(model, device="cpu", precision="fp32")  # compared with the model's own fp32 forward
    m = tagger.members[0]
    grid = tagger.frame_grid()
    assert (grid.window, grid.hop) == (0.5, 0.1)  # the defaults
    contract = m.detect_contract(grid.window_samples)
    assert contract.target_length == 48  # 0.5 s of frames, not the model's 300
    wave = torch.from_numpy(scene())
    chunks = [wave[slice(*grid.span(i, len(wave)))] for i in range(36, 44)]  # around the onset at 4 s
    x = tagger._model_input(m, chunks, contract)
    assert x.shape == (8, 48, 128)
    with torch.no_grad():
        expected = torch.sigmoid(model.forward_head(model.forward_features(x, any_length=True))).numpy()
    tl = tagger.timeline(scene(), sample_rate=SR)
    np.testing.assert_allclose(tl.scores[36:44], expected, atol=1e-5)
    assert expected[0, 0] < 0.5 < expected[-1, 0]  # the window slides onto the loud part
    assert m.detect_contract(48000) is m.features  # over half the model's input: padded as in training


@pytest.mark.parametrize(("block", "group"), [(160, 1), (4000, 1), (44100, 1), (1000, 7)])
def test_streaming_gives_the_offline_events(block, group):
    # fp32: a frame's scores streamed (few frames a call) and offline (16) are compared at 1e-5
    tagger = AudioTagger(loudness_model(100), device="cpu", batch_size=16, precision="fp32")
    wave = scene()
    offline = tagger.timeline(wave, sample_rate=SR)
    blocks = (wave[i : i + block] for i in range(0, len(wave), block))
    out = []
    for item in tagger.stream(blocks, SR, frames_per_call=group):
        assert not torch.is_inference_mode_enabled()  # the caller's code between items runs as usual
        out.append(item)
    frames = [o for o in out if isinstance(o, FrameScores)]
    changes = [o for o in out if isinstance(o, EventChange)]
    np.testing.assert_allclose(np.stack([f.scores for f in frames]), offline.scores, atol=1e-5)
    starts = [(c.label, c.time) for c in changes if c.kind == "start"]
    ends = sorted((c.label, c.time) for c in changes if c.kind == "end")
    assert starts == [(e.label, e.start) for e in offline.events]
    assert ends == sorted((e.label, e.end) for e in offline.events)
    # each change comes after the frame scores that decide it, never before its own time
    for k, o in enumerate(out):
        if isinstance(o, EventChange):
            last = max(f.end for f in out[:k] if isinstance(f, FrameScores))
            assert last >= o.time - 1e-9
    assert json.loads(json.dumps(changes[0].to_json())) == {"event": "start", "label": "quiet", "time": 0.0,
                                                         "score": round(changes[0].score, 6)}  # fmt: skip


def test_stream_resamples_and_takes_int16_stereo_blocks():
    tagger = AudioTagger(loudness_model(100), device="cpu", batch_size=16)
    import soxr

    wave44 = soxr.resample(scene(), SR, 44100).astype(np.float32)
    pcm = (np.clip(np.stack([wave44, wave44], 1), -1, 1) * 32767).astype(np.int16)  # [samples, 2]
    out = list(tagger.stream((pcm[i : i + 3000] for i in range(0, len(pcm), 3000)), 44100))
    got = [(c.label, c.time) for c in out if isinstance(c, EventChange) and c.kind == "start"]
    assert [g[0] for g in got] == ["quiet", "loud", "quiet"]
    assert all(abs(t - e[1]) <= 0.25 for (_, t), e in zip(got, EXPECTED, strict=True))


def test_cli_timeline_tsv_and_json_onsets(tmp_path, capsys):
    path = write_audio(tmp_path / "scene.wav", scene(), SR)
    model = save_checkpoint(loudness_model(100), tmp_path / "loud.safetensors")
    assert cli_in_process("predict", path, "--checkpoint", model, "--timeline", "--format", "tsv") == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out), delimiter="\t"))
    assert rows[0] == ["filename", "onset", "offset", "event_label"]
    got = [(r[3], float(r[1]), float(r[2])) for r in rows[1:]]
    assert {r[0] for r in rows[1:]} == {"scene.wav"} and all(len(r[1].split(".")[1]) == 3 for r in rows[1:])
    assert close(sorted(got, key=lambda g: g[1]), EXPECTED, 0.25), got
    out = run_main("predict", path, "--checkpoint", model, "--timeline", "--format", "json", "--min-gap", "0")
    assert out.returncode == 0, out.stderr
    (result,) = json.loads(out.stdout)
    assert len(result["windows"]) == 100
    assert all(e["onset"] == e["start"] and e["offset"] == e["end"] for e in result["events"])
    bad = run_main("predict", path, "--checkpoint", model, "--format", "tsv")
    assert bad.returncode == 2 and "--format tsv (DCASE events) needs --timeline" in bad.stderr


def test_listen_prints_the_offline_events_as_json_lines(tmp_path):
    path = write_audio(tmp_path / "scene.wav", scene(), SR)
    model = save_checkpoint(loudness_model(100), tmp_path / "loud.safetensors")
    offline = AudioTagger(model, device="cpu", precision="fp32").timeline(path)  # event times equal: fp32 both
    out = run_main("listen", "--checkpoint", model, "--input", path, "--as-fast-as-possible", "--precision", "fp32")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(x["label"], x["time"]) for x in lines if x["event"] == "start"] == [(e.label, e.start) for e in offline.events]
    assert sorted((x["label"], x["time"]) for x in lines if x["event"] == "end") == sorted(
        (e.label, e.end) for e in offline.events
    )
    assert set(lines[0]) == {"event", "label", "time", "score"}
    pcm = (scene() * 32767).astype("<i2").tobytes()  # raw 16-bit PCM on stdin
    import subprocess

    from conftest import CLI, cli_env

    piped = subprocess.run([*CLI, "listen", "--checkpoint", str(model), "--input", "-", "--rate", str(SR)], input=pcm,
                           capture_output=True, env=cli_env(), timeout=300)  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    starts = [json.loads(line)["label"] for line in piped.stdout.decode().splitlines() if '"start"' in line]
    assert starts == ["quiet", "loud", "quiet"]


def test_listen_paces_a_file_in_real_time_and_stops_on_ctrl_c(tmp_path):
    import signal
    import subprocess
    import time

    from conftest import CLI, cli_env

    path = write_audio(tmp_path / "long.wav", np.concatenate([scene()] * 6), SR)  # 60 s
    model = save_checkpoint(loudness_model(100), tmp_path / "loud.safetensors")
    proc = subprocess.Popen([*CLI, "listen", "--checkpoint", str(model), "--input", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env())  # fmt: skip
    first = proc.stdout.readline()  # the first event: the command is running and paced
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    lines = [json.loads(line) for line in (first + stdout).splitlines()]
    assert lines and max(x["time"] for x in lines) < 30  # paced: far from the 60 s a free run would reach
    open_events = {}
    for x in lines:
        open_events[x["label"]] = open_events.get(x["label"], 0) + (1 if x["event"] == "start" else -1)
    assert all(v == 0 for v in open_events.values())  # every event that started was closed


def test_microphone_without_portaudio_is_a_one_line_error(tmp_path):
    model = save_checkpoint(loudness_model(100), tmp_path / "loud.safetensors")
    out = run_cli("listen", "--checkpoint", model, timeout=120)
    assert out.returncode == 2 and out.stderr.startswith("ast-audio: error: microphone: ")
    assert len(out.stderr.strip().splitlines()) == 1


def test_scores_dir_tables_give_psds(tmp_path):
    path = write_audio(tmp_path / "scene.wav", scene(), SR)
    model = save_checkpoint(loudness_model(100), tmp_path / "loud.safetensors")
    ref = tmp_path / "ref.tsv"
    ref.write_text("filename\tonset\toffset\tevent_label\n" + "".join(f"scene.wav\t{a}\t{b}\t{label}\n" for label, a, b in EXPECTED))
    out = run_main("predict", path, "--checkpoint", model, "--timeline", "--format", "tsv", "--scores-dir", tmp_path / "s",
                   "--precision", "fp32")  # compared with the tagger's scores at the 6 digits written: fp32 both
    assert out.returncode == 0, out.stderr
    from ast_audio.infer.scoring import read_score_tables

    (table,) = read_score_tables(tmp_path / "s").values()
    tagger = AudioTagger(model, device="cpu", batch_size=16, precision="fp32")
    assert table.labels == ["loud", "quiet", "never"] and table.duration == 10.0 and len(table.scores) == 100
    from ast_audio.infer.events import median_filter

    # the scores the detection thresholds: median-filtered over 0.75 s (9 frames), 6 decimals
    assert np.abs(table.scores - median_filter(tagger.timeline(str(path)).scores, 9)).max() <= 5e-7
    got = run_main("evaluate-events", "--ref", ref, "--scores", tmp_path / "s", "--format", "json")
    assert got.returncode == 0, got.stderr
    psds = json.loads(got.stdout)
    # the scores are ~0 or ~1 but at the two changes (within a window, 0.5 s): some threshold finds
    # every event with no false alarm, so both classes' TPR is 1 from eFPR 0; "never" has no reference event
    assert psds["psds"] == 1.0 and set(psds["class_wise_psds"]) == {"loud", "quiet"}
    bad = run_main("predict", path, "--checkpoint", model, "--scores-dir", tmp_path / "s")
    assert bad.returncode == 2 and "--scores-dir writes detection frame scores: it needs --timeline" in bad.stderr
