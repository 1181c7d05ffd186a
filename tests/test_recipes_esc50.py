"""ESC-50 from ``ESC-50-master`` as distributed: prepare, five folds, the whole recipe."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ok, run_main
from layouts import TINY, report, write_esc50

from ast_audio.data import read_datafile
from ast_audio.data.labels import read_label_csv
from ast_audio.recipes.esc50 import fold_summary


@pytest.fixture(scope="module")
def esc50(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist") / "ESC-50-master"
    return root, write_esc50(root)


def test_prepare_writes_five_folds_and_lists_exactly_the_bad_clips(esc50, tmp_path):
    root, info = esc50
    out = tmp_path / "prepared"
    result = ok(run_main("prepare", "esc50", "--root", root, "--out", out))
    assert "bad files: 3" in result.stdout

    reasons = report(out)
    assert set(reasons) == set(info["bad"])
    kinds = {info["bad"][p]: reasons[p] for p in reasons}
    assert kinds["empty"].startswith("empty file") and kinds["absent"] == "file not found"
    assert kinds["text"].startswith("not a decodable audio file")

    labels = read_label_csv(out / "esc_class_labels_indices.csv")
    assert labels == read_label_csv("esc50") and len(labels) == 50
    good = {
        (str((root / "audio" / name).resolve()), fold, target)
        for name, fold, target in info["rows"]
        if str((root / "audio" / name).resolve()) not in info["bad"]
    }
    seen = set()
    for k in range(1, 6):
        train = read_datafile(out / f"esc_train_data_{k}.json", labels)
        held = read_datafile(out / f"esc_eval_data_{k}.json", labels)
        as_set = lambda df: {(str(e.wav), e.labels) for e in df.entries}  # noqa: E731
        expected_eval = {(p, (t,)) for p, f, t in good if f == k}
        assert as_set(held) == expected_eval and len(held) == len(expected_eval)
        assert as_set(train) == {(p, (t,)) for p, f, t in good if f != k}
        assert not as_set(train) & as_set(held)
        seen |= as_set(held)
    assert seen == {(p, (t,)) for p, _, t in good}  # every usable clip is held out exactly once
    stamp = json.loads((out / "prepared.json").read_text())
    assert stamp["recipe"] == "esc50" and stamp["summary"]["clips"] == len(good)


def test_recipe_trains_the_folds_and_writes_acc_fold(esc50, tmp_path):
    root, _ = esc50
    exp = tmp_path / "exp"
    result = ok(run_main("recipe", "esc50", "--root", root, "--exp-dir", exp, "--set", *TINY, "batch_size=10", "folds=1,2"))
    assert "mean accuracy" in result.stdout

    acc = np.loadtxt(exp / "acc_fold.csv", delimiter=",")
    assert acc.shape == (3,)  # fold 1, fold 2, mean
    assert acc[2] == pytest.approx(acc[:2].mean())
    for i, k in enumerate((1, 2)):
        rows = np.loadtxt(exp / f"fold{k}" / "result.csv", delimiter=",", ndmin=2)
        assert rows.shape == (1, 10) and acc[i] == pytest.approx(rows[0, 0])
        cfg = json.loads((exp / f"fold{k}" / "config.json").read_text())["config"]
        assert cfg["data_val"].endswith(f"esc_eval_data_{k}.json") and cfg["n_class"] == 50
        assert (cfg["freqm"], cfg["timem"], cfg["loss"], cfg["metrics"]) == (24, 96, "CE", "acc")
        assert cfg["lr"] == 1e-4  # the original's lr without AudioSet pretraining
        assert (exp / f"fold{k}" / "models" / "best_audio_model.safetensors").exists()
    assert not (exp / "fold3").exists()
    assert (exp / "data" / "prepared.json").exists() and (exp / "recipe_result.json").exists()


def test_fold_summary_takes_the_epoch_best_on_average_as_the_original(tmp_path):
    # fold 1 peaks at epoch 1, fold 2 at epoch 3; on average epoch 2 is best
    curves = {1: [0.90, 0.85, 0.60], 2: [0.50, 0.70, 0.75]}
    for k, accs in curves.items():
        (tmp_path / f"fold{k}").mkdir()
        rows = np.zeros((3, 10))
        rows[:, 0] = accs
        np.savetxt(tmp_path / f"fold{k}" / "result.csv", rows, delimiter=",")
    acc, best = fold_summary(tmp_path, [1, 2])
    assert best == 2 and acc == pytest.approx([0.85, 0.70, 0.775])
    assert np.loadtxt(tmp_path / "acc_fold.csv", delimiter=",") == pytest.approx(acc)
    assert np.loadtxt(tmp_path / "result.csv", delimiter=",")[:, 0] == pytest.approx([0.7, 0.775, 0.675])


def test_own_classes_in_esc50_layout_get_their_label_table(tmp_path):
    from ast_audio.audio.synth import CLASSES, write_dataset
    from ast_audio.data.labels import read_label_csv
    from ast_audio.errors import DataError
    from ast_audio.recipes.esc50 import prepare

    root = write_dataset(tmp_path / "synth", per_class=5, classes=10, seconds=0.3)
    summary = prepare(root, tmp_path / "out")
    table = read_label_csv(summary["label_csv"])
    assert summary["n_class"] == 10 and table.names == [name for name, _ in CLASSES]
    meta = root / "meta" / "esc50.csv"
    lines = meta.read_text().splitlines()
    first = lines[1].split(",")
    first[3] = "something else"  # the same target under another category: a damaged CSV
    meta.write_text("\n".join([lines[0], ",".join(first), *lines[2:]]) + "\n")
    with pytest.raises(DataError, match="target 0 is .* here but 'steady tone' above|target 0 is 'steady tone' here"):
        prepare(root, tmp_path / "out2")
