"""Any CSV-labelled dataset (the seed's "hack" recipe): labels from the data, corrupt files
detected, stratified validation split, statistics, and a submission row per test file."""

from __future__ import annotations

import csv
import json
from collections import Counter

import numpy as np
import pytest
from conftest import ok, run_main
from layouts import EMOTIONS, TINY, report, write_csv_dataset

from ast_audio.data import read_datafile
from ast_audio.data.dataset import AudioDataset, norm_stats
from ast_audio.data.labels import read_label_csv
from ast_audio.data.splits import stratified_split
from ast_audio.features import InputContract


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist") / "hack"
    return root, write_csv_dataset(root)


def test_stratified_split_is_per_class_and_seeded():
    labels = [0] * 10 + [1] * 5 + [2] * 2 + [3]
    split = stratified_split(labels, 0.2, seed=0)
    assert Counter(c for c, v in zip(labels, split, strict=True) if v) == {0: 2, 1: 1, 2: 1}  # never all of a class
    assert stratified_split(labels, 0.2, seed=0) == split
    assert any(stratified_split(labels, 0.2, seed=s) != split for s in range(1, 5))


def test_prepare_takes_labels_from_the_data_and_lists_exactly_the_bad_files(dataset, tmp_path):
    root, info = dataset
    out = tmp_path / "prepared"
    ok(run_main("prepare", "csv", "--train-csv", root / "train.csv", "--audio-dir", root / "TrainAudioFiles",
           "--label-column", "emotion", "--test-csv", root / "test.csv", "--test-audio-dir", root / "TestAudioFiles",
           "--valid-fraction", "0.2", "--audio-length", "100", "--out", out))  # fmt: skip

    reasons = report(out)
    assert set(reasons) == set(info["bad"])
    kinds = {info["bad"][p]: reasons[p] for p in reasons}
    assert kinds["empty"].startswith("empty file") and kinds["truncated"].startswith("truncated file")
    assert kinds["text"].startswith("not a decodable audio file")

    labels = read_label_csv(out / "class_labels_indices.csv")
    assert labels.names == labels.mids == sorted(EMOTIONS)
    train = read_datafile(out / "train.json", labels)
    valid = read_datafile(out / "valid.json", labels)
    good = {str((root / "TrainAudioFiles" / name).resolve()): emotion for name, emotion in info["rows"]}
    good = {p: e for p, e in good.items() if p not in info["bad"]}
    got = {str(e.wav): labels.names[e.labels[0]] for e in train.entries + valid.entries}
    assert got == good and len(train) + len(valid) == len(good)  # disjoint, complete, labels kept
    assert {p.suffix for p in map(lambda e: e.wav, train.entries)} == {".wav", ".mp3"}
    assert Counter(labels.names[e.labels[0]] for e in valid.entries) == dict.fromkeys(EMOTIONS, 1)  # round(6 * 0.2)

    stats = json.loads((out / "stats.json").read_text())
    mean, std = norm_stats(AudioDataset(train, InputContract(target_length=100)))
    assert stats["dataset_mean"] == pytest.approx(mean) and stats["dataset_std"] == pytest.approx(std) and std > 0

    tests = json.loads((out / "test_list.json").read_text())["data"]
    assert [t["filename"] for t in tests] == info["tests"]
    assert [t["filename"] for t in tests if t["error"]] == ["test_broken.wav"]
    assert all("labels" not in t and t["note"] is None for t in tests)


def test_recipe_predicts_every_test_file_in_order(dataset, tmp_path):
    root, info = dataset
    exp = tmp_path / "exp"
    ok(run_main("recipe", "csv", "--root", root, "--exp-dir", exp, "--set", *TINY, "batch_size=6"))

    text = (exp / "submission.csv").read_bytes().decode()
    lines = text.split("\n")
    assert lines[0] == "filename,emotion" and lines[-1] == "" and "\r" not in text  # sample_submission.csv's format
    rows = [line.split(",") for line in lines[1:-1]]
    assert [r[0] for r in rows] == info["tests"] and all(len(r) == 2 for r in rows)
    assert all(label in EMOTIONS for _, label in rows)  # unreadable rows too: the most frequent label
    # every class has 6 usable rows (the bad rows are extra): a tie, broken by label order
    counts = Counter(e for name, e in info["rows"] if str((root / "TrainAudioFiles" / name).resolve()) not in info["bad"])
    assert counts == dict.fromkeys(EMOTIONS, 6)
    fallback = "angry"
    assert dict(rows)["test_broken.wav"] == fallback

    with open(exp / "submission_notes.csv", newline="") as fh:
        notes = list(csv.reader(fh))
    assert notes[0] == ["filename", "emotion", "note"] and len(notes) == 2
    assert notes[1][:2] == ["test_broken.wav", fallback]
    assert notes[1][2].startswith("unreadable (not a decodable audio file") and "most frequent" in notes[1][2]
    result = json.loads((exp / "recipe_result.json").read_text())
    assert (result["unreadable"], result["truncated"], result["fallback_label"]) == (1, 0, fallback)
    # the best model's report on the validation clips, with the run's curves
    assert result["report"] == str(exp / "report" / "report.html") and (exp / "report" / "curves.png").is_file()
    with open(exp / "report" / "classes.csv", newline="") as fh:
        classes = list(csv.DictReader(fh))
    assert [r["label"] for r in classes] == sorted(EMOTIONS)
    assert sum(int(r["support"]) for r in classes) == result["clips"]["valid"]

    stats = json.loads((exp / "data" / "stats.json").read_text())
    cfg = json.loads((exp / "config.json").read_text())["config"]
    assert (cfg["dataset_mean"], cfg["dataset_std"]) == (stats["dataset_mean"], stats["dataset_std"])
    assert (cfg["n_class"], cfg["loss"], cfg["freqm"], cfg["timem"]) == (3, "CE", 24, 96)
    assert np.loadtxt(exp / "result.csv", delimiter=",", ndmin=2).shape == (1, 10)
