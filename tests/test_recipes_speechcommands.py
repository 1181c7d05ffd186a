"""Speech Commands V2 from ``speech_commands_v0.02`` as distributed: prepare, the whole recipe, re-run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ok, run_main
from layouts import TINY, report, write_speechcommands

from ast_audio.data import read_datafile
from ast_audio.data.labels import read_label_csv


@pytest.fixture(scope="module")
def speechcommands(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist") / "speech_commands_v0.02"
    return root, write_speechcommands(root)


def test_prepare_splits_by_the_lists_and_lists_exactly_the_bad_clips(speechcommands, tmp_path):
    root, info = speechcommands
    out = tmp_path / "prepared"
    ok(run_main("prepare", "speechcommands", "--root", root, "--out", out))

    reasons = report(out)
    assert set(reasons) == set(info["bad"])
    kinds = {info["bad"][p]: reasons[p] for p in reasons}
    assert kinds["empty"].startswith("empty file") and kinds["truncated"].startswith("truncated file")

    labels = read_label_csv(out / "speechcommands_class_labels_indices.csv")
    assert labels == read_label_csv("speechcommands") and len(labels) == 35 and labels.names[0] == "backward"
    index = {name: i for i, name in enumerate(labels.names)}
    files = {"train": "speechcommand_train_data.json", "valid": "speechcommand_valid_data.json",
             "test": "speechcommand_eval_data.json"}  # fmt: skip
    for split, name in files.items():
        entries = read_datafile(out / name, labels).entries
        expected = [str((root / rel).resolve()) for rel in info["splits"][split]]
        expected = [p for p in expected if p not in info["bad"]]
        got = [str(e.wav) for e in entries]
        # valid / test in the order of their lists; train in path order
        assert (sorted(got) if split == "train" else got) == (sorted(expected) if split == "train" else expected)
        for e in entries:
            assert e.labels == (index[e.wav.parent.name],)  # the folder is the word
            assert "_background_noise_" not in str(e.wav)
    assert len(read_datafile(out / files["train"], labels)) == 35  # one good training clip per word here


def test_recipe_scores_the_best_on_valid_model_on_test_and_resumes(speechcommands, tmp_path):
    root, _ = speechcommands
    exp = tmp_path / "exp"
    args = ["recipe", "speechcommands", "--root", root, "--exp-dir", exp, "--set", *TINY, "batch_size=16"]
    ok(run_main(*args))

    result = np.loadtxt(exp / "eval_result.csv", delimiter=",")
    assert result.shape == (4,) and np.all((0 <= result) & (result <= 1))  # valid acc, mAUC, test acc, mAUC
    rows = np.loadtxt(exp / "result.csv", delimiter=",", ndmin=2)
    assert rows.shape == (1, 10) and result[0] == pytest.approx(rows[0, 0])
    cfg = json.loads((exp / "config.json").read_text())["config"]
    assert cfg["data_eval"].endswith("speechcommand_eval_data.json") and cfg["n_class"] == 35
    assert (cfg["noise"], cfg["mixup"], cfg["loss"], cfg["metrics"], cfg["lr"]) == (True, 0.6, "BCE", "acc", 2.5e-4)

    stamp = (exp / "data" / "prepared.json").stat().st_mtime_ns
    again = ok(run_main(*args))  # prepared data reused, training already complete: resumes to the same end
    assert (exp / "data" / "prepared.json").stat().st_mtime_ns == stamp
    assert np.loadtxt(exp / "result.csv", delimiter=",", ndmin=2).shape == (1, 10)
    assert np.loadtxt(exp / "eval_result.csv", delimiter=",") == pytest.approx(result)
    assert "test_acc" in again.stdout
