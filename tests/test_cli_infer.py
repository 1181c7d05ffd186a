"""``ast-audio predict | embed | export`` as users run them: real subprocesses on real files."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from conftest import cli_in_process, run_cli, run_main
from factories import SR, loudness_model, noise, write_audio

from ast_audio import ConfigError, save_checkpoint
from ast_audio.infer import AudioTagger

pytestmark = pytest.mark.usefixtures("one_thread")  # here and in the ast-audio subprocesses


def test_folder_with_corrupt_files_reports_them_and_predicts_the_rest(folder, checkpoints):
    root, good, bad = folder
    out = run_cli("predict", root, "--checkpoint", checkpoints["single"], "--format", "json", "--top-k", "2")
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 2, out.stderr  # one line per bad file, nothing else
    for line, path in zip(lines, bad, strict=True):
        assert line.startswith(f"ast-audio: error: {path}: "), line
    assert "empty file" in lines[1] and "not a decodable audio file" in lines[0]
    results = json.loads(out.stdout)
    assert [r["path"] for r in results] == [str(p) for p in good]  # sorted, recursive
    for r in results:
        assert [x["rank"] for x in r["labels"]] == [1, 2]
        assert {x["label"] for x in r["labels"]} <= {"tone", "noise", "chirp"}
    assert results[1]["windows"] == 3  # 5 s with a 3 s model: windowed, not cut


def test_ensemble_csv(folder, checkpoints):
    root, good, _ = folder
    out = run_main("predict", *good, "--checkpoint", checkpoints["single"], "--checkpoint", checkpoints["multi"], "--format", "csv",
                   "--precision", "fp32")  # fp32: three files batched against one alone (precision.BATCH_MATES)
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert list(rows[0]) == ["path", "rank", "label", "score"]
    assert len(rows) == 3 * 3  # top-5 of 3 labels -> 3 per file
    expected = AudioTagger([checkpoints["single"], checkpoints["multi"]], device="cpu", precision="fp32").predict(good[0])
    first = {r["label"]: float(r["score"]) for r in rows if r["path"] == str(good[0])}
    assert first == pytest.approx(dict(expected.labels), abs=1e-6)


def test_timeline_of_a_long_file(tmp_path):
    path = tmp_path / "long.flac"  # 0-30 s quiet, 30-60 s loud, 60-95 s quiet
    parts = [noise(30, 1e-4, seed=1), noise(30, 0.3, seed=2), noise(35, 1e-4, seed=3)]
    write_audio(path, np.concatenate(parts), SR)
    model = save_checkpoint(loudness_model(), tmp_path / "loud.safetensors")
    out = run_main(
        "predict", path, "--checkpoint", model, "--timeline", "--events", "windows", "--window", 10, "--hop", 5, "--format", "json"
    )
    assert out.returncode == 0, out.stderr
    (result,) = json.loads(out.stdout)
    windows = result["windows"]
    assert len(windows) == 18 and windows[0]["start"] == 0 and windows[-1]["end"] == 95
    events = [(e["label"], e["start"], e["end"]) for e in result["events"]]
    assert events == [("quiet", 0, 35), ("loud", 25, 65), ("quiet", 55, 95)]


def test_embed_writes_npz(folder, checkpoints, tmp_path):
    root, good, bad = folder
    out_file = tmp_path / "emb.npz"
    out = run_cli("embed", root, "--checkpoint", checkpoints["single"], "--out", out_file, "--tokens")
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 2  # the two bad files
    data = np.load(out_file)
    assert list(data["paths"]) == [str(p) for p in good]
    assert data["embeddings"].shape == (3, 192) and data["embeddings"].dtype == np.float32
    assert data["tokens"].shape == (3, 12, 29, 192)


def test_export_onnx_verifies_parity(checkpoints, tmp_path):
    out = run_main("export", "--checkpoint", checkpoints["multi"], "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert out.returncode == 0, out.stderr
    assert "verified: onnxruntime logits match PyTorch within 0.0001" in out.stdout
    assert "input [batch, 128, 128]" in out.stdout and (tmp_path / "m.onnx").stat().st_size > 0


def test_nothing_to_do_exits_2(tmp_path, checkpoints):
    out = run_main("predict", tmp_path, "--checkpoint", checkpoints["single"])  # an empty folder
    assert out.returncode == 2 and out.stderr.startswith("ast-audio: error: no audio files")


# --------------------------------------------------------------------------- in-process (fast)


def test_table_output_and_exit_0(folder, checkpoints, capsys):
    _, good, _ = folder
    assert cli_in_process("predict", good[0], good[1], "--checkpoint", checkpoints["single"], "-k", "2") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{good[0]}  (1.00 s)")
    assert lines[3].startswith(f"{good[1]}  (5.00 s, 3 windows, max over windows)")
    assert [line.split()[0] for line in lines[1:3]] == ["1", "2"]


def test_timeline_csv_lists_events(tmp_path, capsys):
    path = tmp_path / "x.wav"
    write_audio(path, np.concatenate([noise(8, 1e-4), noise(8, 0.3, seed=1)]), SR)
    model = save_checkpoint(loudness_model(), tmp_path / "loud.pt")
    assert cli_in_process("predict", path, "--checkpoint", model, "--timeline", "--events", "windows", "--window", "4", "--hop", "4",
                "--format", "csv") == 0  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["label"], r["start"], r["end"]) for r in rows] == [
        ("quiet", "0.000", "8.000"),
        ("loud", "8.000", "16.000"),
    ]


def test_embed_per_window(folder, checkpoints, tmp_path, capsys):
    _, good, _ = folder
    assert (
        cli_in_process("embed", *good, "--checkpoint", checkpoints["single"], "--out", tmp_path / "win.npz", "--per-window") == 0
    )
    data = np.load(tmp_path / "win.npz")
    assert data["embeddings"].shape == (1 + 3 + 1, 192)  # b.flac (5 s) has three model windows
    assert list(data["paths"]).count(str(good[1])) == 3 and data["ends"][3] == pytest.approx(5.0)
    assert "5 windows x 192 dims" in capsys.readouterr().out


def test_usage_errors(tmp_path, checkpoints):
    with pytest.raises(SystemExit) as exit_:
        cli_in_process("predict", tmp_path)  # --checkpoint missing
    assert exit_.value.code == 2
    with pytest.raises(ConfigError, match="dynamic-time"):
        cli_in_process("export", "--checkpoint", checkpoints["single"], "--format", "torchscript", "--out", tmp_path / "x.pt",
             "--dynamic-time")  # fmt: skip
