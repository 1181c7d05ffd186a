"""`ast-audio prepare hf`: Hugging Face datasets on disk (save_to_disk, parquet) -> datafiles.

The datasets are built here as users hold them: ``Dataset.from_dict`` with the audio as
encoded bytes (wav, flac at 44.1 kHz, mp3) or as paths, cast to ``Audio(decode=False)``,
saved with ``save_to_disk`` or written as parquet files."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from conftest import ok, run_cli, run_main
from datasets import Audio, ClassLabel, Dataset, DatasetDict
from factories import noise, tone, write_audio, write_truncated_wav
from layouts import report

from ast_audio.data import read_datafile


def encoded(x: np.ndarray, rate: int, **kwargs) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, **kwargs)
    return buf.getvalue()


def as_dataset(rows: list[tuple[dict, int]]) -> Dataset:
    ds = Dataset.from_dict({"audio": [a for a, _ in rows], "label": [lab for _, lab in rows]})
    return ds.cast_column("audio", Audio(decode=False)).cast_column("label", ClassLabel(names=["dog", "cat", "bird"]))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A DatasetDict (train, validation, test) saved with save_to_disk; ClassLabel names in
    their own (unsorted) order; bad rows: text bytes, 0 bytes, a truncated wav, no label (-1)."""
    root = tmp_path_factory.mktemp("hf")
    rng = np.random.default_rng(0)
    clips = {}

    def clip(name, label, rate=16000, **kwargs):
        x = tone(300 * (label + 1), rate, rng=rng)
        clips[name] = (x, rate)
        return {"bytes": encoded(x, rate, **kwargs), "path": name}, label

    truncated = write_truncated_wav(root / "cut.wav", noise(1.0), 16000).read_bytes()
    train = [clip(f"t{i}.wav", i % 3, format="WAV", subtype="PCM_16") for i in range(5)]
    train.insert(2, clip("loud.flac", 1, 44100, format="FLAC", subtype="PCM_16"))
    train.insert(3, ({"bytes": b"this is text, not audio\n", "path": "notes.wav"}, 0))
    train.insert(4, ({"bytes": b"", "path": "empty.wav"}, 2))
    train.append(({"bytes": truncated, "path": "cut.wav"}, 1))
    train.append(clip("unlabelled.wav", -1, format="WAV", subtype="PCM_16"))
    valid = [clip(f"v{i}.wav", i, format="WAV", subtype="PCM_16") for i in range(3)]
    test = [clip("s0.mp3", 2, format="MP3"), clip("s1.wav", 0, format="WAV", subtype="PCM_16")]
    path = root / "saved"
    DatasetDict({"train": as_dataset(train), "validation": as_dataset(valid), "test": as_dataset(test)}).save_to_disk(
        str(path)
    )
    return path, clips


def test_saved_dataset_becomes_datafiles_with_flac_written_once(saved, tmp_path):
    path, clips = saved
    out = tmp_path / "prepared"
    result = ok(run_main("prepare", "hf", "--dataset", path, "--out", out, "--audio-length", "100"))
    assert "bad files: 4" in result.stdout
    labels = (out / "class_labels_indices.csv").read_text().splitlines()
    assert [line.split(",")[2] for line in labels[1:]] == ["dog", "cat", "bird"]  # the ClassLabel's order
    train = read_datafile(out / "hf_train.json", out / "class_labels_indices.csv")
    assert len(train) == 6 and len(read_datafile(out / "hf_valid.json", out / "class_labels_indices.csv")) == 3
    test = json.loads((out / "hf_test.json").read_text())["data"]
    assert [e["labels"] for e in test] == ["bird", "dog"]
    rows = json.loads((out / "hf_train.json").read_text())["data"]
    assert [e["labels"] for e in rows] == ["dog", "cat", "cat", "bird", "dog", "cat"]
    flac = out / "audio" / "train" / "000002.flac"  # row 2: the 44.1 kHz flac, written at its own rate
    assert rows[2]["wav"] == str(flac)
    data, rate = sf.read(flac, dtype="float32")
    x, original_rate = clips["loud.flac"]
    assert rate == original_rate == 44100 and sf.info(flac).format == "FLAC"
    np.testing.assert_allclose(data, x, atol=1 / 32768)  # 16-bit source, 24-bit FLAC: its samples
    mp3 = sf.read(test[0]["wav"])[0]
    assert test[0]["wav"].endswith("audio/test/000000.flac") and len(mp3) > 15000
    bad = report(out)
    reasons = {where.split(" (")[1].rstrip(")"): reason for where, reason in bad.items()}
    assert set(reasons) == {"notes.wav", "empty.wav", "cut.wav", "unlabelled.wav"}
    assert "not a decodable audio file" in reasons["notes.wav"] and reasons["empty.wav"] == "empty audio (0 bytes)"
    assert reasons["cut.wav"].startswith("truncated file") and reasons["unlabelled.wav"] == "no label in column 'label'"
    assert all(where.startswith(f"{path}:train[") for where in bad)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["audio_length"] == 100 and stats["dataset_std"] > 0
    stamp = json.loads((out / "prepared.json").read_text())["summary"]
    assert stamp["audio"] == {"written": 11, "in_place": 0} and stamp["split"] == "dataset"


@pytest.fixture(scope="module")
def parquet(tmp_path_factory):
    """A load_dataset folder of parquet files, written with pyarrow: the audio as paths to
    files on disk (read in place), string labels and a list column of tags; no validation split."""
    root = tmp_path_factory.mktemp("pq")
    files = root / "files"
    files.mkdir()
    rng = np.random.default_rng(1)
    audio, labels, tags = [], [], []
    for i in range(9):
        path = write_audio(files / f"c{i}.wav", tone(200 * (i % 3 + 1), 16000, rng=rng), 16000, subtype="PCM_16")
        audio.append({"bytes": None, "path": str(path)})
        labels.append(["rain", "bell", "hum"][i % 3])
        tags.append(["outdoor"] + (["loud"] if i % 2 else []))
    audio.append({"bytes": None, "path": str(files / "gone.wav")})
    labels.append("rain")
    tags.append(["outdoor"])
    table = pa.table({"audio": audio, "label": labels, "tags": tags})
    (root / "data").mkdir()
    pq.write_table(table, root / "data" / "train-00000-of-00001.parquet")
    return root / "data", files


def test_parquet_folder_reads_files_in_place_and_splits_by_label(parquet, tmp_path):
    path, files = parquet
    out = tmp_path / "prepared"
    cache = tmp_path / "hf-cache"  # load_dataset converts parquet into its cache: keep it here
    ok(run_cli("prepare", "hf", "--dataset", path, "--out", out, "--seed", "3", HF_DATASETS_CACHE=cache))
    labels = (out / "class_labels_indices.csv").read_text().splitlines()
    assert [line.split(",")[2] for line in labels[1:]] == ["bell", "hum", "rain"]  # sorted strings
    train = json.loads((out / "hf_train.json").read_text())["data"]
    valid = json.loads((out / "hf_valid.json").read_text())["data"]
    assert len(train) + len(valid) == 9 and sorted({e["labels"] for e in valid}) == ["bell", "hum", "rain"]
    assert all(e["wav"].startswith(str(files)) for e in train + valid)  # read in place: no copy
    assert not list((out / "audio").rglob("*.flac"))
    assert list(report(out).values()) == ["file not found"]
    multi = tmp_path / "multi"
    ok(run_cli("prepare", "hf", "--dataset", path, "--out", multi, "--label-column", "tags", HF_DATASETS_CACHE=cache))
    rows = json.loads((multi / "hf_train.json").read_text())["data"] + json.loads((multi / "hf_valid.json").read_text())["data"]
    assert {e["labels"] for e in rows} == {"outdoor", "outdoor,loud"}
    assert json.loads((multi / "prepared.json").read_text())["summary"]["multilabel"] is True


def test_bad_datasets_give_one_line_errors(saved, tmp_path):
    path, _ = saved
    out = run_cli("prepare", "hf", "--dataset", path, "--out", tmp_path / "o", "--label-column", "emotion")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert str(path) in out.stderr and "no column 'emotion'" in out.stderr and "label" in out.stderr
    out = run_cli("prepare", "hf", "--dataset", path, "--out", tmp_path / "o", "--audio-column", "label")
    assert out.returncode == 2 and "column 'label'" in out.stderr and "is not audio" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    out = run_cli("prepare", "hf", "--dataset", tmp_path / "empty", "--out", tmp_path / "o")
    assert out.returncode == 2 and "neither a save_to_disk folder" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_recipe_trains_on_the_prepared_dataset(saved, tmp_path):
    path, _ = saved
    exp = tmp_path / "exp"
    out = ok(run_main(
        "recipe", "hf", "--root", path, "--exp-dir", exp, "--set", "model_size=tiny224", "depth=1",
        "imagenet_pretrain=false", "audioset_pretrain=false", "n_epochs=1", "batch_size=3", "audio_length=100",
        "fstride=16", "tstride=16", "freqm=0", "timem=0", "amp=off", timeout=300,  # amp: fp32 on every CPU
    ))  # fmt: skip
    result = json.loads((exp / "recipe_result.json").read_text())
    assert result["clips"] == {"train": 6, "valid": 3, "test": 2} and result["labels"] == ["dog", "cat", "bird"]
    assert (exp / "models" / "best_audio_model.safetensors").exists() and (exp / "eval_result.csv").exists()
    assert f"deliverable: {exp / 'models' / 'best_audio_model.safetensors'}" in out.stdout
