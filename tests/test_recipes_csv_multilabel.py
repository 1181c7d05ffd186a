"""The csv recipe grown up: multi-label rows (``a;b`` or 0/1 columns) with BCE/mAP and
per-class thresholds, K-fold cross-validation, and the balanced sampler for imbalance."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import ok, run_main
from factories import tone, write_audio
from layouts import TINY, write_table

from ast_audio.data import balanced_weights, read_datafile
from ast_audio.data.dataset import EpochSampler
from ast_audio.data.splits import stratified_folds
from ast_audio.recipes.csvdata import prepare
from ast_audio.train.metrics import f1_thresholds

LOW, HIGH = 300.0, 2700.0


def write_multilabel(root: Path, columns: bool, per_kind: int = 5, seed: int = 0) -> Path:
    """Clips of a low tone, a high tone or both, labelled ``low``/``high``/``low;high`` (or as
    0/1 columns), and a test folder with one clip of each kind."""
    rng = np.random.default_rng(seed)
    audio = root / "TrainAudioFiles"
    audio.mkdir(parents=True)
    (root / "TestAudioFiles").mkdir()
    kinds = {"low": [LOW], "high": [HIGH], "low;high": [LOW, HIGH]}
    rows = []
    for kind, freqs in kinds.items():
        for i in range(per_kind):
            name = f"{kind.replace(';', '+')}_{i}.wav"
            write_audio(audio / name, sum(tone(f, rng=rng) for f in freqs), 16000, subtype="PCM_16")
            tags = kind.split(";")
            rows.append([name, *(int(t in tags) for t in ("low", "high"))] if columns else [name, kind])
    write_table(root / "train.csv", ["filename", "low", "high"] if columns else ["filename", "tags"], rows)
    for kind, freqs in kinds.items():
        write_audio(root / "TestAudioFiles" / f"test_{kind.replace(';', '+')}.wav", sum(tone(f, rng=rng) for f in freqs),
                    16000, subtype="PCM_16")  # fmt: skip
    (root / "test.csv").write_text("filename\n" + "".join(f"test_{k.replace(';', '+')}.wav\n" for k in kinds))
    return root


def test_f1_thresholds_pick_the_best_cut_per_class():
    scores = np.array([[0.9, 0.2], [0.6, 0.8], [0.4, 0.1], [0.1, 0.7]])
    targets = np.array([[1, 0], [1, 1], [0, 0], [0, 0]])
    thresholds, f1 = f1_thresholds(scores, targets)
    assert thresholds[0] == pytest.approx(0.6) and f1[0] == pytest.approx(1.0)
    assert thresholds[1] == pytest.approx(0.8) and f1[1] == pytest.approx(1.0)
    none, f1_none = f1_thresholds(scores, np.zeros_like(targets))
    assert (none == 0.5).all() and np.isnan(f1_none).all()


@pytest.mark.parametrize("columns", [False, True], ids=["semicolons", "zero-one-columns"])
def test_multilabel_rows_train_with_bce_and_label_tests_by_thresholds(tmp_path, columns):
    root = write_multilabel(tmp_path / "data", columns)
    exp = tmp_path / "exp"
    ok(run_main("recipe", "csv", "--root", root, "--exp-dir", exp, "--set", *TINY, "n_epochs=2", "batch_size=4",
               "lr=1e-3", "freqm=0", "timem=0", "valid_fraction=0.4"))  # fmt: skip
    cfg = json.loads((exp / "config.json").read_text())["config"]
    assert (cfg["loss"], cfg["metrics"], cfg["n_class"]) == ("BCE", "mAP", 2)
    labels = ["low", "high"] if columns else ["high", "low"]  # the columns' order, or the names sorted
    train = read_datafile(exp / "data" / "train.json", exp / "data" / "class_labels_indices.csv")
    assert train.labels.names == labels
    assert sorted(len(e.labels) for e in train.entries) == [1, 1, 1, 1, 1, 1, 2, 2, 2]  # 3 of each kind trained
    with open(exp / "thresholds.csv", newline="") as fh:
        table = list(csv.reader(fh))
    assert table[0] == ["label", "threshold", "f1"] and [r[0] for r in table[1:]] == labels
    assert all(0 <= float(r[1]) <= 1 and 0 < float(r[2]) <= 1 for r in table[1:])
    lines = (exp / "submission.csv").read_text().splitlines()
    rows = [line.split(",") for line in lines[1:]]
    assert [r[0] for r in rows] == ["test_low.wav", "test_high.wav", "test_low+high.wav"]
    if columns:
        assert lines[0] == "filename,low,high" and all(v in ("0", "1") for r in rows for v in r[1:])
    else:
        assert lines[0] == "filename,tags" and all(len(r) == 2 and set(r[1].split(";")) <= {"", *labels} for r in rows)
    result = json.loads((exp / "recipe_result.json").read_text())
    assert result["thresholds"] == str(exp / "thresholds.csv") and "best_mAP" in result
    # the validation report decides at those thresholds: one row of counts per class, over every valid clip
    with open(exp / "report" / "confusion.csv", newline="") as fh:
        grid = list(csv.reader(fh))
    assert grid[0] == ["label", "true positive", "missed", "false positive", "true negative"]
    assert [r[0] for r in grid[1:]] == labels and {sum(map(int, r[1:])) for r in grid[1:]} == {result["clips"]["valid"]}
    assert (exp / "report" / "report.html").is_file()


def test_folds_cross_validate_and_write_acc_fold(tmp_path):
    from layouts import write_csv_dataset

    root = tmp_path / "data"
    write_csv_dataset(root)
    exp = tmp_path / "exp"
    out = run_main("recipe", "csv", "--root", root, "--exp-dir", exp, "--set", *TINY, "batch_size=6", "folds=3",
                  "freqm=0", "timem=0")  # fmt: skip
    ok(out)
    acc = np.loadtxt(exp / "acc_fold.csv", delimiter=",")
    assert acc.shape == (4,) and acc[3] == pytest.approx(acc[:3].mean())
    for k in (1, 2, 3):
        result = np.loadtxt(exp / f"fold{k}" / "result.csv", delimiter=",", ndmin=2)
        assert acc[k - 1] == pytest.approx(result[0, 0])  # one epoch: that epoch's accuracy
    label_csv = exp / "data" / "class_labels_indices.csv"
    valid = [read_datafile(exp / "data" / f"fold{k}_valid.json", label_csv) for k in (1, 2, 3)]
    train1 = read_datafile(exp / "data" / "fold1_train.json", label_csv)
    held = [str(e.wav) for df in valid for e in df.entries]
    assert len(held) == len(set(held)) == 18  # every usable clip held out exactly once (3 emotions x 6)
    assert set(held[len(valid[0]):]) == {str(e.wav) for e in train1.entries}
    for df in valid:  # stratified: 2 of each class per fold
        assert Counter(df.labels.names[e.labels[0]] for e in df.entries) == {"angry": 2, "happy": 2, "sad": 2}
    result = json.loads((exp / "recipe_result.json").read_text())
    assert result["deliverable"] == str(exp / "acc_fold.csv") and result["folds"] == [1, 2, 3]
    assert not (exp / "submission.csv").exists()


def test_stratified_folds_deal_each_class_out_evenly():
    labels = [0] * 7 + [1] * 4 + [2] * 2
    folds = stratified_folds(labels, 3, seed=0)
    assert sorted(Counter(folds).values()) == [4, 4, 5]
    for cls, size in ((0, 7), (1, 4)):
        counts = Counter(f for f, c in zip(folds, labels, strict=True) if c == cls)
        assert max(counts.values()) - min(counts.values()) <= 1 and sum(counts.values()) == size
    assert stratified_folds(labels, 3, seed=0) == folds


def test_balanced_sampler_evens_out_an_imbalanced_csv_dataset(tmp_path):
    rng = np.random.default_rng(0)
    audio = tmp_path / "audio"
    audio.mkdir()
    rows = []
    for label, count in (("common", 16), ("rare", 4)):
        for i in range(count):
            write_audio(audio / f"{label}{i}.wav", tone(LOW if label == "rare" else HIGH, rng=rng), 16000,
                        subtype="PCM_16")  # fmt: skip
            rows.append([f"{label}{i}.wav", label])
    write_table(tmp_path / "train.csv", ["filename", "label"], rows)
    summary = prepare(tmp_path / "train.csv", audio, tmp_path / "out", audio_length=100)
    train = read_datafile(summary["datafiles"]["train"], summary["label_csv"])
    sampler = EpochSampler(len(train), seed=0, weights=balanced_weights(train))
    drawn = Counter()
    for epoch in range(1, 21):
        sampler.set_epoch(epoch)
        drawn.update(train.labels.names[train.entries[draw.index].labels[0]] for draw in sampler)
    plain = Counter(train.labels.names[e.labels[0]] for e in train.entries)
    assert plain == {"common": 13, "rare": 3}  # the stratified split keeps a fifth of each for validation
    assert drawn["rare"] / sum(drawn.values()) == pytest.approx(0.5, abs=0.07)  # not 3/16


def test_recipe_with_bal_true_trains_with_the_balanced_sampler(tmp_path):
    from layouts import write_csv_dataset

    root = tmp_path / "data"
    write_csv_dataset(root)
    exp = tmp_path / "exp"
    ok(run_main("recipe", "csv", "--root", root, "--exp-dir", exp, "--set", *TINY, "batch_size=6", "bal=true"))
    assert json.loads((exp / "config.json").read_text())["config"]["bal"] is True
    assert np.loadtxt(exp / "result.csv", delimiter=",", ndmin=2).shape == (1, 10)
