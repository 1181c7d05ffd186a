"""Labels meet checkpoints by name (issue 29): a label CSV or a datafile in another order than
the checkpoint's outputs is reordered by name, a label the checkpoint does not know is one line,
and only a checkpoint that stores no names is matched by position (its count checked)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import run_main
from factories import SR, TOY_CLASSES, loudness_model, noise, toy_clip, write_audio

from ast_audio.checkpoints import load_model, save_checkpoint
from ast_audio.data.datafiles import match_datafile, read_datafile
from ast_audio.data.labels import LabelTable, match_labels, read_label_csv
from ast_audio.errors import ConfigError, DataError
from ast_audio.infer import AudioTagger
from ast_audio.model.info import ModelInfo
from ast_audio.train.evaluate import evaluate_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")


def write_labels(path, rows: list[tuple[str, str]], order: list[int]) -> str:
    """A label CSV of ``rows`` (mid, display name) with row ``order[i]`` at index ``i``."""
    lines = ["index,mid,display_name"] + [f'{i},{rows[k][0]},"{rows[k][1]}"' for i, k in enumerate(order)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def toy(toy_model, tmp_path_factory):
    """The trained toy model, its validation datafile and label CSVs in its order and reversed."""
    root = toy_model.parents[2] / "toy"
    tmp = tmp_path_factory.mktemp("names")
    return {
        "model": toy_model, "val": root / "val.json", "labels": root / "labels.csv",
        "reversed": write_labels(tmp / "reversed.csv", TOY_CLASSES, [2, 1, 0]),
        "rotated": write_labels(tmp / "rotated.csv", TOY_CLASSES, [1, 2, 0]),
        "tmp": tmp,
    }  # fmt: skip


def permuted(source, perm: list[int], path):
    """The checkpoint at ``source`` with its outputs in the order ``perm`` (head rows and labels moved
    together): the same classifier, its output ``i`` being the source's output ``perm[i]``."""
    model = load_model(source)
    head = model.mlp_head[1]
    with torch.no_grad():
        head.weight.copy_(head.weight[perm].clone())
        head.bias.copy_(head.bias[perm].clone())
    info = model.info
    model.info = ModelInfo(labels=[info.labels[p] for p in perm], label_ids=[info.label_ids[p] for p in perm],
                           contract=info.contract, statistics=info.statistics)  # fmt: skip
    return save_checkpoint(model, path)


def stats_csv(path) -> dict[str, dict[str, float]]:
    with open(path, newline="") as fh:
        return {row.pop("model"): {k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)}


# --------------------------------------------------------------------------- the one rule


def test_match_labels_by_id_then_display_name():
    table = LabelTable(["/m/b", "/m/x", "/m/a"], ["bee", "cee", "ay"], source="labels.csv")
    # ids first: /m/b and /m/a by id; /m/x is no id of the checkpoint, its name "cee" is output 1's name
    assert match_labels(table, ["ay", "cee", "bee"], ["/m/a", "/m/c", "/m/b"], 3) == [2, 1, 0]
    assert match_labels(table, [" ay", "bee", "cee "], None, 3) == [1, 2, 0]  # names only, spaces ignored
    # an id wins over a display name naming another output
    assert match_labels(LabelTable(["/m/a"], ["bee"]), ["bee", "ay"], ["/m/b", "/m/a"], 2) == [1]
    # fewer labels than outputs: the others have no clips
    assert match_labels(LabelTable(["/m/c"], ["cee"]), None, ["/m/a", "/m/c"], 2) == [1]


def test_match_labels_refuses_in_one_line_naming_the_file_and_the_label():
    table = LabelTable(["/m/a", "/m/cow"], ["ay", "cow"], source="my labels.csv")
    with pytest.raises(DataError) as err:
        match_labels(table, ["ay", "bee"], ["/m/a", "/m/b"], 2, "model.safetensors")
    assert str(err.value) == "my labels.csv: label 'cow (/m/cow)' is not one of the labels of model.safetensors (ay, bee)"
    with pytest.raises(DataError, match="'ay' names 2 outputs"):
        match_labels(LabelTable(["ay"], ["ay"]), ["ay", "ay"], None, 2)
    with pytest.raises(DataError, match="labels 'x \\(/m/a\\)' and 'ay \\(/m/z\\)' both name output 0"):
        match_labels(LabelTable(["/m/a", "/m/z"], ["x", "ay"]), ["ay", "bee"], ["/m/a", "/m/b"], 2)


def test_a_checkpoint_without_names_is_matched_by_position_with_the_count_checked():
    table = LabelTable(["/m/a", "/m/b"], ["ay", "bee"], source="labels.csv")
    assert match_labels(table, None, None, 2) == [0, 1]
    with pytest.raises(DataError, match="^labels.csv: 2 labels, but the checkpoint has 3 outputs .*by position"):
        match_labels(table, None, None, 3)
    # the labels a datafile names have no order: they can only be matched by name
    named = LabelTable(["/m/a", "/m/b"], ["/m/a", "/m/b"], source="eval.json", named_only=True)
    with pytest.raises(DataError, match="^eval.json: the checkpoint stores no label names"):
        match_labels(named, None, None, 2)


def test_a_datafile_without_label_csv_takes_the_labels_it_names(toy):
    df = read_datafile(toy["val"], None)
    assert df.labels.named_only and df.labels.mids == [mid for mid, _ in TOY_CLASSES]
    # its labels are mids: the checkpoint's ids put them in its output order, under its names
    aligned = match_datafile(df, ["noise", "high tone", "low tone"], ["/m/noise", "/m/high", "/m/low"], 3)
    assert aligned.labels.names == ["noise", "high tone", "low tone"]
    assert (aligned.targets() == read_datafile(toy["val"], toy["labels"]).targets()[:, [2, 1, 0]]).all()


# --------------------------------------------------------------------------- evaluate, calibrate, predict


def test_evaluate_with_a_label_csv_in_another_order_scores_as_in_the_right_order(toy):
    """The issue's reproducer: a reordered label CSV gave accuracy 0.000 with exit 0."""
    rows = {}
    for name in ("labels", "reversed", "rotated", None):
        out = toy["tmp"] / f"eval-{name}.csv"
        flags = [] if name is None else ["--label-csv", toy[name]]
        done = run_main("evaluate", "--checkpoint", toy["model"], "--data", toy["val"], *flags, "--out", out)
        assert done.returncode == 0, done.stderr
        rows[name] = stats_csv(out)[str(toy["model"])]
    assert rows["labels"]["acc"] > 0.6  # the toy model tells its classes apart
    for name in ("reversed", "rotated", None):  # None: the datafile's labels matched to the checkpoint's
        assert rows[name] == pytest.approx(rows["labels"]), name


def test_evaluate_refuses_a_label_the_checkpoint_does_not_know_in_one_line(toy):
    table = toy["tmp"] / "cow.csv"
    write_labels(table, [*TOY_CLASSES, ("/m/cow", "cow")], [3, 0, 1, 2])
    done = run_main("evaluate", "--checkpoint", toy["model"], "--data", toy["val"], "--label-csv", table)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"ast-audio: error: {table}: label 'cow (/m/cow)' is not one of the labels of {toy['model']} "
        "(low tone, high tone, noise)"
    ]


def test_a_checkpoint_without_names_is_evaluated_by_position(toy):
    model = load_model(toy["model"])
    model.info = ModelInfo(contract=model.info.contract, statistics=True)
    bare = save_checkpoint(model, toy["tmp"] / "bare.safetensors")
    want = evaluate_checkpoints([toy["model"]], toy["val"], toy["labels"])[0][1]
    got = evaluate_checkpoints([bare], toy["val"], toy["labels"])[0][1]
    assert got.acc == pytest.approx(want.acc) and got.mAP == pytest.approx(want.mAP)
    four = write_labels(toy["tmp"] / "four.csv", [*TOY_CLASSES, ("/m/cow", "cow")], [0, 1, 2, 3])
    done = run_main("evaluate", "--checkpoint", bare, "--data", toy["val"], "--label-csv", four)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"ast-audio: error: {four}: 4 labels, but {bare} has 3 outputs (it stores no label names, so labels "
        "are matched by position)"
    ]
    done = run_main("evaluate", "--checkpoint", bare, "--data", toy["val"])
    assert done.returncode == 2 and "stores no label names to match the labels against" in done.stderr


def test_an_ensemble_is_averaged_by_label_name(toy):
    """A member whose outputs are the first one's in another order: the ensemble is the model itself."""
    twin = permuted(toy["model"], [2, 0, 1], toy["tmp"] / "twin.safetensors")
    rows = dict(evaluate_checkpoints([toy["model"], twin], toy["val"], toy["reversed"]))
    for name in (str(twin), "ensemble"):
        assert rows[name].acc == pytest.approx(rows[str(toy["model"])].acc)
        assert rows[name].mAP == pytest.approx(rows[str(toy["model"])].mAP)
    # the tagger too: the same probabilities, under the first member's names
    clip = toy_clip(1, np.random.default_rng(5))
    alone = AudioTagger(toy["model"], device="cpu", precision="fp32").predict(clip, 16000)
    both = AudioTagger([toy["model"], twin], device="cpu", precision="fp32").predict(clip, 16000)
    np.testing.assert_allclose(both.scores, alone.scores, rtol=1e-5, atol=1e-6)
    assert both.labels[0][0] == alone.labels[0][0]
    # members that do not share their label names are refused in one line
    stranger = load_model(twin)
    stranger.info = ModelInfo(labels=["a", "b", "c"], label_ids=["/m/a", "/m/b", "/m/c"], contract=stranger.info.contract)
    stranger_path = save_checkpoint(stranger, toy["tmp"] / "stranger.safetensors")
    with pytest.raises(ConfigError, match="ensemble members disagree on their labels: .*'low tone"):
        AudioTagger([toy["model"], stranger_path], device="cpu")
    done = run_main("evaluate", "--checkpoint", toy["model"], stranger_path, "--data", toy["val"],
                    "--label-csv", toy["labels"])  # fmt: skip
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert str(stranger_path) in done.stderr


def test_calibrate_with_a_label_csv_in_another_order_gives_the_same_thresholds(tmp_path):
    model = loudness_model(100)  # labels loud, quiet, never; logits scaled so that no score saturates
    with torch.no_grad():
        model.mlp_head[1].weight[:2] *= 0.0896
        model.mlp_head[1].bias[:2] = torch.tensor([-1.4, -1.0])
    model_path = save_checkpoint(model, tmp_path / "loud.safetensors")
    rows = [("/m/l", "loud"), ("/m/q", "quiet"), ("/m/n", "never")]
    entries = []
    for i in range(3):
        for level, mid in ((0.3, "/m/l"), (1e-4, "/m/q")):
            path = write_audio(tmp_path / f"{mid[-1]}{i}.wav", noise(1.0, level, seed=i), SR)
            entries.append({"wav": str(path), "labels": mid})
    (tmp_path / "valid.json").write_text(json.dumps({"data": entries}))
    thresholds = {}
    for name, order in (("right", [0, 1, 2]), ("reordered", [2, 0, 1])):
        table = write_labels(tmp_path / f"{name}.csv", rows, order)
        out = tmp_path / f"{name}.safetensors"
        done = run_main("calibrate", "--checkpoint", model_path, "--data", tmp_path / "valid.json",
                        "--label-csv", table, "--out", out)  # fmt: skip
        assert done.returncode == 0, done.stderr
        thresholds[name] = load_model(out).info.thresholds
    assert thresholds["reordered"] == thresholds["right"]
    assert 0.1 < thresholds["right"][0] < 0.4 and 0.1 < thresholds["right"][1] < 0.45
    assert thresholds["right"][2] == 0.5  # "never" has no positive clip
    # the datafile's labels alone cannot be matched here: the checkpoint knows display names, the datafile mids
    done = run_main("calibrate", "--checkpoint", model_path, "--data", tmp_path / "valid.json",
                    "--out", tmp_path / "x.safetensors")  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"ast-audio: error: {tmp_path / 'valid.json'}: label '/m/l' is not one of the labels of {model_path} "
        "(loud, quiet, never)"
    ]


def test_predict_label_csv_names_outputs_by_name(toy):
    clip = write_audio(toy["tmp"] / "high.wav", toy_clip(1, np.random.default_rng(3)), 16000)
    plain = json.loads(run_main("predict", clip, "--checkpoint", toy["model"], "--format", "json").stdout)
    for name in ("labels", "reversed", "rotated"):
        done = run_main("predict", clip, "--checkpoint", toy["model"], "--format", "json", "--label-csv", toy[name])
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == plain, name
    # a checkpoint that stores no names takes the CSV's, by position
    model = load_model(toy["model"])
    model.info = ModelInfo(contract=model.info.contract, statistics=True)
    bare = save_checkpoint(model, toy["tmp"] / "bare-predict.safetensors")
    done = run_main("predict", clip, "--checkpoint", bare, "--format", "json", "--label-csv", toy["labels"])
    assert json.loads(done.stdout) == plain
    renamed = write_labels(toy["tmp"] / "renamed.csv", [(mid, name.upper()) for mid, name in TOY_CLASSES], [1, 0, 2])
    done = run_main("predict", clip, "--checkpoint", toy["model"], "--format", "json", "--label-csv", renamed)
    assert [x["label"] for x in json.loads(done.stdout)[0]["labels"]] == [x["label"].upper() for x in plain[0]["labels"]]
    cow = write_labels(toy["tmp"] / "cow-predict.csv", [*TOY_CLASSES, ("/m/cow", "cow")], [0, 1, 2, 3])
    done = run_main("predict", clip, "--checkpoint", toy["model"], "--label-csv", cow)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"ast-audio: error: {cow}: label 'cow (/m/cow)' is not one of the labels of {toy['model']} "
        "(low tone, high tone, noise)"
    ]


def test_read_label_csv_remembers_its_file(toy):
    assert read_label_csv(toy["labels"]).source == str(toy["labels"])


def test_calibrate_scenes_refuses_an_event_label_the_model_does_not_know(tmp_path):
    ckpt = save_checkpoint(loudness_model(100), tmp_path / "loud.safetensors")
    scenes = tmp_path / "scenes"
    (scenes / "audio").mkdir(parents=True)
    write_audio(scenes / "audio" / "s.wav", noise(4.0, 0.3), SR)
    (scenes / "reference.tsv").write_text("filename\tonset\toffset\tevent_label\ns.wav\t0\t2\tloud\ns.wav\t2\t4\tLoud\n")
    done = run_main("calibrate", "--checkpoint", ckpt, "--scenes", scenes, "--out", tmp_path / "cal.safetensors")
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"ast-audio: error: {scenes / 'reference.tsv'}: event label 'Loud' is not one of the model's labels "
        "(loud, quiet, never)"
    ]
    assert not (tmp_path / "cal.safetensors").exists()


def test_a_run_resumed_with_its_label_csv_reordered_is_refused(tmp_path):
    """The resume file keeps the labels, not only the label CSV's path: a table reordered in place
    would otherwise train the outputs on each other's clips."""
    from factories import as_flags, toy_train_settings, write_toy_dataset

    toy = write_toy_dataset(tmp_path / "toy", per_class_train=2, per_class_val=1)
    settings = toy_train_settings(toy, tmp_path / "exp", n_epochs=1)
    assert run_main("train", *as_flags(settings)).returncode == 0
    write_labels(toy / "labels.csv", TOY_CLASSES, [1, 0, 2])
    done = run_main("train", *as_flags({**settings, "n_epochs": 2}))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"ast-audio: error: {tmp_path / 'exp'}: the label CSV {toy / 'labels.csv'} holds other labels (or another "
        "order) than when this run started; its outputs follow the first: restore that table or use another --exp-dir"
    )
    write_labels(toy / "labels.csv", TOY_CLASSES, [0, 1, 2])  # the same table again: the run goes on
    assert run_main("train", *as_flags({**settings, "n_epochs": 2})).returncode == 0


def test_a_hugging_face_folder_of_a_nameless_model_stays_nameless(tmp_path):
    """transformers writes LABEL_0, LABEL_1... where a model has no names: read back as no names, so
    labels are matched by position, not refused as unknown."""
    from factories import tiny_ast

    model = tiny_ast(label_dim=3)
    model.info = ModelInfo(dataset_mean=-4.0, dataset_std=4.0, multilabel=False)
    source = save_checkpoint(model, tmp_path / "bare.safetensors")
    assert run_main("convert", source, tmp_path / "hf", "--format", "hf").returncode == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["id2label"]["0"] == "LABEL_0"
    back = load_model(tmp_path / "hf")
    assert back.info.labels is None and back.info.label_ids is None
    assert match_labels(LabelTable(["/m/a", "/m/b", "/m/c"], ["a", "b", "c"]), back.info.labels, None, 3) == [0, 1, 2]
