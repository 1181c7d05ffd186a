"""AudioSet from the segment CSVs and downloaded clips: prepare (YouTube-id matching,
missing counts, balanced-sampling weights) and the full recipe (weights, warm-up, WA)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ok, run_main
from layouts import TINY, report, write_audioset

from ast_audio.data import balanced_weights, read_datafile
from ast_audio.data.labels import read_label_csv
from ast_audio.recipes.audioset import match_ytid


@pytest.fixture(scope="module")
def audioset(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist") / "audioset"
    return root, write_audioset(root)


def test_file_names_are_matched_to_youtube_ids():
    ids = {"--PJHxphWEs", "Yab_cd-EF12", "abc_def_ghi"}
    assert match_ytid("--PJHxphWEs", ids) == "--PJHxphWEs"
    assert match_ytid("Y--PJHxphWEs", ids) == "--PJHxphWEs"
    assert match_ytid("--PJHxphWEs_30.000", ids) == "--PJHxphWEs"
    assert match_ytid("Y--PJHxphWEs_30.000_40.000", ids) == "--PJHxphWEs"
    assert match_ytid("Yab_cd-EF12", ids) == "Yab_cd-EF12"  # an id starting with Y is taken as it is
    assert match_ytid("abc_def_ghi_10.000", ids) == "abc_def_ghi"
    assert match_ytid("--PJHxphWE", ids) is None and match_ytid("x--PJHxphWEs", ids) is None


def test_prepare_matches_clips_counts_missing_and_writes_weights(audioset, tmp_path):
    root, info = audioset
    out = tmp_path / "prepared"
    segments = sorted(root.glob("*_segments.csv"))
    result = ok(run_main("prepare", "audioset", "--segments", *segments, "--audio-dir", root / "audio",
                    "--label-csv", root / "class_labels_indices.csv", "--out", out))  # fmt: skip
    assert 'missing: {"balanced_train": 2, "eval": 1, "unbalanced_train": 1}' in result.stdout

    reasons = report(out)
    assert set(reasons) == set(info["bad"]) and all(r.startswith("empty file") for r in reasons.values())
    labels = read_label_csv(out / "class_labels_indices.csv")
    assert len(labels) == 527
    index = labels.index()
    for name, rows in info["segments"].items():
        df = read_datafile(out / f"{name}.json", labels)
        expected = [(str(info["present"][name][y]), tuple(sorted(index[m] for m in mids)))
                    for y, mids in rows if y in info["present"][name]]  # fmt: skip
        assert [(str(e.wav), e.labels) for e in df.entries] == expected, name
        assert (out / f"{name}_missing.txt").read_text().split() == info["missing"][name]
    full = read_datafile(out / "full_train.json", labels)
    assert len(full) == len(info["present"]["balanced_train"]) + len(info["present"]["unbalanced_train"])
    for name in ("balanced_train", "unbalanced_train", "full_train"):
        weights = np.loadtxt(out / f"{name}_weight.csv", delimiter=",")
        np.testing.assert_allclose(weights, balanced_weights(read_datafile(out / f"{name}.json", labels)))
    assert not (out / "eval_weight.csv").exists()


def test_full_recipe_uses_weights_warmup_and_weight_averaging(audioset, tmp_path):
    root, info = audioset
    exp = tmp_path / "exp"
    result = ok(run_main("recipe", "audioset", "--root", root, "--exp-dir", exp,
                    "--set", "full", "audio_dir=audio", *TINY, "batch_size=4"))  # fmt: skip
    assert "wa_mAP" in result.stdout

    cfg = json.loads((exp / "config.json").read_text())["config"]
    assert cfg["data_train"].endswith("full_train.json") and cfg["data_val"].endswith("eval.json")
    assert (cfg["bal"], cfg["warmup"], cfg["wa"], cfg["wa_start"], cfg["wa_end"]) == (True, True, True, 1, 5)
    assert (cfg["lr"], cfg["mixup"], cfg["timem"], cfg["metrics"], cfg["n_class"]) == (1e-5, 0.5, 192, "mAP", 527)
    weights = np.loadtxt(exp / "data" / "full_train_weight.csv", delimiter=",")
    assert weights.shape == (len(read_datafile(cfg["data_train"], cfg["label_csv"])),)
    rows = np.loadtxt(exp / "result.csv", delimiter=",", ndmin=2)
    assert rows.shape == (1, 10) and rows[0, 9] < 1e-5  # warm-up: lr still ramping from 0
    wa = np.loadtxt(exp / "wa_result.csv", delimiter=",")
    assert wa.shape == (5,) and (exp / "models" / "audio_model_wa.safetensors").exists()  # the original's five values
    summary = json.loads((exp / "recipe_result.json").read_text())
    assert summary["variant"] == "full" and summary["missing"]["eval"] == 1
    assert summary["deliverable"].endswith("wa_result.csv")
