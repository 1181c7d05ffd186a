"""A folder of one's own sounds, one subfolder per class: labels from the folder names, related
clips (takes, sessions, groups.csv) kept on one side of the split and in one fold, a held-out
validation or test folder, the input length from the data, and the preset it trains with
(from scratch when no AudioSet weights are at hand, saying so in one line)."""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ok, run_main
from factories import original_audioset_state
from layouts import CLASS_FOLDERS, report, write_class_folders

from ast_audio.audio.io import audio_info
from ast_audio.checkpoints.load import load_model
from ast_audio.data import read_datafile
from ast_audio.data.folders import take_stem
from ast_audio.data.labels import read_label_csv
from ast_audio.data.splits import grouped_folds, grouped_split
from ast_audio.errors import ConfigError
from ast_audio.recipes import RecipeContext, resolve_config
from ast_audio.recipes.folder import audio_length_for, choose_preset, fold_datafile, prepare


@pytest.fixture(scope="module")
def mine(tmp_path_factory):
    root = tmp_path_factory.mktemp("own") / "mine"
    return root, write_class_folders(root)


def sides(out: Path) -> dict[str, str]:
    """``{path: split}`` of ``split.csv``."""
    with open(out / "split.csv", newline="") as fh:
        return {row["filename"]: row["split"] for row in csv.DictReader(fh)}


def entries(path: Path, out: Path) -> dict[str, str]:
    """``{path: label}`` of a datafile."""
    labels = read_label_csv(out / "class_labels_indices.csv")
    return {str(e.wav): labels.names[e.labels[0]] for e in read_datafile(path, labels).entries}


@pytest.mark.parametrize(("stem", "group"), [
    ("dog_01", "dog"), ("dog_02", "dog"), ("dog-take3", "dog"), ("dog (2)", "dog"), ("Dog Take 2", "dog"),
    ("purr take 1", "purr"), ("kick_v3_02", "kick_v3"), ("s0_00", "s0"), ("dog2", "dog"), ("snare[4]", "snare"),
    ("dog", "dog"),
    ("01", "01"), ("dog_01_close", "dog_01_close"), ("1-100032-A-0", "1-100032-a"),
])  # fmt: skip
def test_take_numbers_are_stripped_from_the_name(stem, group):
    assert take_stem(stem) == group


def test_grouped_split_keeps_groups_whole_stratified_and_seeded():
    # class 0: ten groups of 1-3 clips; class 1: four groups; class 2: one group (stays in training)
    labels, groups = [], []
    for g, size in enumerate([1, 2, 3, 1, 2, 3, 1, 2, 3, 2]):
        labels += [0] * size
        groups += [f"a{g}"] * size
    for g, size in enumerate([2, 2, 1, 1]):
        labels += [1] * size
        groups += [f"b{g}"] * size
    labels += [2, 2, 2]
    groups += ["c", "c", "c"]
    split = grouped_split(labels, groups, 0.2, seed=0)
    for key in set(groups):
        assert len({v for v, g in zip(split, groups, strict=True) if g == key}) == 1, key  # never straddles
    valid = defaultdict(int)
    for c, v in zip(labels, split, strict=True):
        valid[c] += v
    assert 3 <= valid[0] <= 5 and 1 <= valid[1] <= 2 and valid[2] == 0  # about 20 % of 20 and of 6; never all
    assert grouped_split(labels, groups, 0.2, seed=0) == split
    assert any(grouped_split(labels, groups, 0.2, seed=s) != split for s in range(1, 5))


def test_grouped_split_takes_one_group_when_every_group_overshoots():
    labels, groups = [0] * 9 + [1] * 4, ["big"] * 8 + ["small"] + ["x", "x", "y", "y"]
    split = grouped_split(labels, groups, 0.2, seed=3)
    assert [i for i, v in enumerate(split) if v and labels[i] == 0] == [8]  # the one-clip group, not 8 of 9 clips
    assert sum(v for v, c in zip(split, labels, strict=True) if c == 1) == 2


def test_grouped_folds_put_each_group_in_one_fold():
    rng = np.random.default_rng(0)
    labels, groups = [], []
    for g in range(24):
        size = int(rng.integers(1, 4))
        labels += [g % 3] * size
        groups += [f"g{g}"] * size
    fold = grouped_folds(labels, groups, 4, seed=0)
    assert set(fold) == {1, 2, 3, 4}
    for key in set(groups):
        assert len({f for f, g in zip(fold, groups, strict=True) if g == key}) == 1
    for c in range(3):  # every class in every fold (eight groups a class)
        assert {f for f, label in zip(fold, labels, strict=True) if label == c} == {1, 2, 3, 4}
    assert grouped_folds(labels, groups, 4, seed=0) == fold


def test_audio_length_covers_the_90th_percentile_in_multiples_of_16():
    assert audio_length_for([1.0] * 10) == 112  # 100 frames -> 112
    assert audio_length_for([float(s) for s in range(1, 11)]) == 912  # 9.1 s -> 910 -> 912
    assert audio_length_for([0.3, 0.5]) == 96 and audio_length_for([30.0]) == 1024  # kept within [96, 1024]


def test_prepare_folder_labels_from_folders_and_groups_never_straddle(mine, tmp_path):
    root, info = mine
    out = tmp_path / "prepared"
    result = ok(run_main("prepare", "folder", root, "--out", out))
    assert "none_label: \"_background\"" in result.stdout

    labels = read_label_csv(out / "class_labels_indices.csv")
    assert labels.names == labels.mids == ["_background", "cat", "dog"]
    train, valid = entries(out / "train.json", out), entries(out / "valid.json", out)
    good = {p: label for p, label in info["label"].items()}
    assert {**train, **valid} == good and not set(train) & set(valid)  # every usable clip once, its folder's label
    side = sides(out)
    assert {p: s for p, s in side.items()} == {**dict.fromkeys(train, "train"), **dict.fromkeys(valid, "valid")}
    by_group = defaultdict(set)
    for path, group in info["group"].items():
        by_group[group].add(side[path])
    assert all(len(s) == 1 for s in by_group.values()), by_group  # takes and sessions on one side
    with open(out / "split.csv", newline="") as fh:
        group_of = {row["filename"]: row["group"] for row in csv.DictReader(fh)}
    for name in ("train.json", "valid.json"):  # the datafiles name each clip's group, for the trainer's own splits
        assert all(item["group"] == group_of[item["wav"]] for item in json.loads((out / name).read_text())["data"])
    for name in CLASS_FOLDERS:  # each class has clips on both sides
        assert name in train.values() and name in valid.values()

    assert set(report(out)) == set(info["bad"]) | set(info["stray"])  # hidden folders and text files not read
    stats = json.loads((out / "stats.json").read_text())
    assert stats["audio_length"] == audio_length_for([audio_info(p).duration for p in train])
    assert stats["dataset_std"] > 0


def test_groups_csv_joins_clips_across_names_and_classes(mine, tmp_path):
    root, info = mine
    own = tmp_path / "mine"
    shutil.copytree(root, own)
    (own / "groups.csv").write_text("filename,group\ndog/growl.wav,visit\ncat/hiss.wav,visit\n"
                                    "dog/dog_01.wav,walk\ndog/bark (1).wav,walk\n")  # fmt: skip
    for seed in range(4):
        summary = prepare(own, tmp_path / f"out{seed}", seed=seed)
        side = sides(Path(summary["split"]).parent)
        for pair in (("dog/growl.wav", "cat/hiss.wav"), ("dog/dog_01.wav", "dog/bark (1).wav")):
            assert len({side[str((own / p).resolve())] for p in pair}) == 1, (seed, pair)
        with open(Path(summary["split"]), newline="") as fh:
            group = {Path(row["filename"]).name: row["group"] for row in csv.DictReader(fh)}
        assert group["growl.wav"] == group["hiss.wav"] == "groups.csv:visit" and group["dog_02.wav"] == "dog/dog"

    (own / "groups.csv").write_text("filename,group\ndog/nothing.wav,a\n")
    result = run_main("prepare", "folder", own, "--out", tmp_path / "bad")
    assert result.returncode == 2 and "groups.csv: line 2: no file 'dog/nothing.wav'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_folds_are_dealt_by_groups(mine, tmp_path):
    root, info = mine
    out = tmp_path / "prepared"
    ok(run_main("prepare", "folder", root, "--out", out, "--folds", "3", "--seed", "1"))
    fold_of = {}
    for k in (1, 2, 3):
        valid = entries(fold_datafile(out, k, "valid"), out)
        train = entries(fold_datafile(out, k, "train"), out)
        assert valid and {**train, **valid} == info["label"] and not set(train) & set(valid)
        fold_of |= dict.fromkeys(valid, k)
    assert set(fold_of) == set(info["label"])
    for group in set(info["group"].values()):
        assert len({fold_of[p] for p, g in info["group"].items() if g == group}) == 1, group


def test_a_held_out_folder_instead_of_a_split(mine, tmp_path):
    root, info = mine
    held = tmp_path / "held"
    write_class_folders(held, seed=5, classes={"dog": CLASS_FOLDERS["dog"][:2], "cat": CLASS_FOLDERS["cat"][:1]})
    out = tmp_path / "prepared"
    summary = prepare(root, out, valid_dir=held, test_dir=held)
    assert entries(out / "train.json", out) == info["label"]  # everything of DIR trains
    expected = {str((held / "dog" / "dog_01.wav").resolve()): "dog", str((held / "dog" / "dog_02.wav").resolve()): "dog",
                str((held / "cat" / "meow_1.wav").resolve()): "cat"}  # fmt: skip
    assert entries(out / "valid.json", out) == expected == entries(out / "test.json", out)
    assert summary["clips"] == {"train": len(info["label"]), "valid": 3, "test": 3}

    with pytest.raises(ConfigError, match="folds and valid_dir each choose the validation clips"):
        prepare(root, out, valid_dir=held, folds=2)

    (held / "bird").mkdir()
    shutil.copy(held / "dog" / "dog_01.wav", held / "bird" / "tweet.wav")
    result = run_main("prepare", "folder", root, "--out", tmp_path / "bad", "--valid-dir", held)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "class folder 'bird' is not a class of the training folder" in result.stderr and "held/bird" in result.stderr


def test_one_class_or_a_csv_layout_points_to_the_csv_recipe(tmp_path):
    write_class_folders(tmp_path / "one", classes={"dog": CLASS_FOLDERS["dog"][:3]})
    result = run_main("prepare", "folder", tmp_path / "one", "--out", tmp_path / "out")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "found 1 class folder(s) with usable audio (dog)" in result.stderr and "ast-audio recipe csv" in result.stderr


def _ctx(tmp_path, sets=()):
    train, options, user = resolve_config("folder", sets)
    return RecipeContext("folder", tmp_path, tmp_path / "exp", tmp_path / "data", train, options, user)


def test_preset_is_scratch_without_cached_weights_and_audioset_with_them(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("AST_AUDIO_HOME", str(home))
    preset, values, line = choose_preset(_ctx(tmp_path, ["n_epochs=3"]))
    weights = home / "audioset_10_10_0.4593.pth"
    assert preset == "scratch" and line == (
        f"preset: from scratch (scratch.toml): no AudioSet weights in {weights}; "
        "put them there or --set audioset_pretrain=PATH to fine-tune"
    )
    assert values["audioset_pretrain"] is False and values["imagenet_pretrain"] is False
    assert values["model_size"] == "tiny224" and values["n_epochs"] == 3  # scratch.toml under the user's settings

    weights.write_bytes(b"stands for the published file")
    preset, values, line = choose_preset(_ctx(tmp_path))
    assert preset == "pretrained" and line == f"preset: AudioSet fine-tuning (folder.toml): AudioSet weights found in {weights}"
    assert values["audioset_pretrain"] is True and values["model_size"] == "base384"

    preset, values, line = choose_preset(_ctx(tmp_path, ["preset=scratch"]))
    assert preset == "scratch" and line.endswith("--set preset=scratch") and values["model_size"] == "tiny224"
    preset, _, line = choose_preset(_ctx(tmp_path, ["audioset_pretrain=false"]))
    assert preset == "scratch" and line.endswith("audioset_pretrain=false")
    weights.unlink()
    preset, values, line = choose_preset(_ctx(tmp_path, ["audioset_pretrain=/data/ast.pth"]))
    assert preset == "pretrained" and values["audioset_pretrain"] == "/data/ast.pth"
    with pytest.raises(ConfigError, match="preset must be one of auto, scratch, pretrained"):
        choose_preset(_ctx(tmp_path, ["preset=big"]))


def test_recipe_help_example_trains_offline():
    help_text = " ".join(ok(run_main("recipe", "--help")).stdout.split())
    example = re.search(r"--set (model_size=\S+ .*?n_epochs=3)", help_text).group(1).split()
    train, _, _ = resolve_config("csv", example)
    assert train["audioset_pretrain"] is False and train["imagenet_pretrain"] is False


def test_recipe_folder_trains_from_scratch_offline_and_resumes(mine, tmp_path):
    root, _ = mine
    home, exp = tmp_path / "home", tmp_path / "exp"
    home.mkdir()
    test_dir = tmp_path / "test"
    write_class_folders(test_dir, seed=9, classes={"dog": CLASS_FOLDERS["dog"][:2], "cat": CLASS_FOLDERS["cat"][:2]})
    # scratch.toml's tiny model as shipped, one epoch; the length comes from the clips
    tiny = ["n_epochs=1", "batch_size=8", "progress=false", "num_workers=0", "device=cpu"]
    args = ("recipe", "folder", root, "--exp-dir", exp, "--set", *tiny, f"test_dir={test_dir}")
    result = ok(run_main(*args, AST_AUDIO_HOME=home))
    lines = [line for line in result.stderr.splitlines() if line.startswith("preset:")]
    assert lines == [f"preset: from scratch (scratch.toml): no AudioSet weights in {home / 'audioset_10_10_0.4593.pth'}; "
                     "put them there or --set audioset_pretrain=PATH to fine-tune"]  # fmt: skip
    done = json.loads((exp / "recipe_result.json").read_text())
    assert done["preset"] == "scratch" and done["labels"] == ["_background", "cat", "dog"]
    assert 0 <= done["valid_acc"] <= 1 and 0 <= done["test_acc"] <= 1 and done["clips"]["test"] == 4
    assert f"validation accuracy {done['valid_acc']:.4f}" in result.stdout
    assert f"test accuracy {done['test_acc']:.4f}" in result.stdout
    for split, clips in (("valid", done["clips"]["valid"]), ("test", 4)):  # each split's report, its clips counted
        report = exp / "report" / split
        assert done[f"{split}_report"] == str(report / "report.html") and (report / "confusion.png").is_file()
        with open(report / "classes.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert [r["label"] for r in rows] == done["labels"] and sum(int(r["support"]) for r in rows) == clips
    opened = done["open_set"]  # calibrated on the validation clips of the known classes, stored in the model
    assert opened["score"] == "max_prob" and opened["tpr"] == 0.95 and opened["kept"] >= 0.95
    assert f"open set: max_prob >= {opened['threshold']:.4f}" in result.stdout
    stats = json.loads((exp / "data" / "stats.json").read_text())
    recorded = json.loads((exp / "recipe.json").read_text())
    assert recorded["preset"] == "scratch" and recorded["train"]["audio_length"] == stats["audio_length"]
    trained = entries(exp / "data" / "train.json", exp / "data")
    assert stats["audio_length"] == audio_length_for([audio_info(p).duration for p in trained])
    model = load_model(done["deliverable"])
    assert model.info.extra["none_label"] == "_background" and model.info.labels == done["labels"]
    assert model.info.extra["open_set"] == opened
    assert model.input_contract.target_length == stats["audio_length"] and model.input_contract.mean == pytest.approx(stats["dataset_mean"])

    stamp = (exp / "data" / "prepared.json").stat().st_mtime_ns
    rows = (exp / "result.csv").read_text()
    again = ok(run_main(*args, AST_AUDIO_HOME=home))
    assert (exp / "data" / "prepared.json").stat().st_mtime_ns == stamp  # the prepared data reused
    assert (exp / "result.csv").read_text() == rows and "epoch 1:" not in again.stderr  # nothing trained again
    assert json.loads((exp / "recipe_result.json").read_text()) == done

    more = ok(run_main(*args, "n_epochs=2", AST_AUDIO_HOME=home))
    assert len((exp / "result.csv").read_text().splitlines()) == 2 and "epoch 2:" in more.stderr  # resumed

    wrong = run_main("recipe", "folder", root, "--exp-dir", tmp_path / "exp2", "--set", *tiny, "none_label=zebra",
                     AST_AUDIO_HOME=home)  # fmt: skip
    assert wrong.returncode == 2 and "none_label 'zebra' is not one of its labels" in wrong.stderr


def test_recipe_folder_fine_tunes_the_cached_audioset_weights(mine, tmp_path):
    root, _ = mine
    home, exp = tmp_path / "home", tmp_path / "exp"
    home.mkdir()
    weights = home / "audioset_10_10_0.4593.pth"
    torch.save(original_audioset_state(depth=2), weights)  # the published file's layout, tiny224-sized
    args = ("recipe", "folder", root, "--exp-dir", exp, "--set", "model_size=tiny224", "depth=2", "n_epochs=1",
            "batch_size=8", "progress=false", "device=cpu")  # fmt: skip
    result = ok(run_main(*args, AST_AUDIO_HOME=home))  # downloads are off: only the cached file can be read
    assert [line for line in result.stderr.splitlines() if line.startswith("preset:")] == [
        f"preset: AudioSet fine-tuning (folder.toml): AudioSet weights found in {weights}"
    ]
    recorded = json.loads((exp / "recipe.json").read_text())
    assert recorded["preset"] == "pretrained" and recorded["train"]["audioset_pretrain"] is True
    assert (recorded["train"]["fstride"], recorded["train"]["lr"]) == (10, 1e-5)  # folder.toml under the user's settings


def test_recipe_needs_the_dataset_folder_once(tmp_path):
    result = run_main("recipe", "folder", "--exp-dir", tmp_path / "exp")
    assert result.returncode == 2 and "give the dataset folder: ast-audio recipe folder DIR --exp-dir EXP" in result.stderr
    result = run_main("recipe", "folder", tmp_path / "a", "--root", tmp_path / "b", "--exp-dir", tmp_path / "exp")
    assert result.returncode == 2 and "two dataset folders given" in result.stderr


def test_recipe_folder_cross_validates_by_groups(mine, tmp_path):
    root, _ = mine
    exp = tmp_path / "exp"
    result = ok(run_main("recipe", "folder", root, "--exp-dir", exp, "--set", "folds=2", "n_epochs=1", "batch_size=8",
                         "progress=false", "device=cpu", AST_AUDIO_HOME=tmp_path))  # fmt: skip
    done = json.loads((exp / "recipe_result.json").read_text())
    accuracies = np.loadtxt(exp / "acc_fold.csv", ndmin=1)
    assert done["folds"] == [1, 2] and done["acc"] == pytest.approx(list(accuracies[:2]))
    assert done["mean"] == pytest.approx(accuracies[2]) and done["deliverable"] == str(exp / "acc_fold.csv")
    assert f"mean acc {done['mean']:.4f}" in result.stdout
    for k in (1, 2):
        assert (exp / f"fold{k}" / "models" / "best_audio_model.safetensors").is_file()


def test_recipe_folder_refuses_an_open_set_share_outside_0_1_before_training(mine, tmp_path):
    root, _ = mine
    out = run_main("recipe", "folder", root, "--exp-dir", tmp_path / "exp", "--set", "open_set=1.5", "n_epochs=1")
    assert out.returncode == 2 and "open_set must be 0 (none) or the share of known clips to keep" in out.stderr
    assert not (tmp_path / "exp" / "models").exists()  # nothing trained
