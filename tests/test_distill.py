"""``ast-audio distill``: the student presets, the teacher store (replay, resume, shares), the
loss, and students distilled from a single-label and a multi-label teacher that tag,
calibrate and predict like any checkpoint."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ok, run_main, run_torchrun
from factories import (
    TOY_CLASSES,
    labelled,
    tiny_ast,
    toy_clip,
    toy_train_settings,
    write_audio,
    write_toy_dataset,
)

from ast_audio.checkpoints.load import load_model, save_checkpoint
from ast_audio.data.dataset import AudioDataset
from ast_audio.data.labelled import datafile_from
from ast_audio.features.pipeline import Augmentation
from ast_audio.model.clipstats import clip_statistics
from ast_audio.model.students import STUDENTS, student_config, student_cost
from ast_audio.train import teacher_store
from ast_audio.train.clipstats import batches_of
from ast_audio.train.config import TrainConfig
from ast_audio.train.distill import DistillConfig, distill_loss, training_clips
from ast_audio.train.loop import train
from ast_audio.train.teacher_store import ReplayDataset, Teacher, TeacherStore, draw_seeds, soft_targets

NAMES = [name for _, name in TOY_CLASSES]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), per_class_train=6, per_class_val=3)


def _teacher(toy: Path, folder: Path, multilabel: bool) -> Path:
    """A tiny AST (2 layers, 1 s) trained for two epochs on the toy clips: softmax or sigmoid."""
    loss, metrics = ("BCE", "mAP") if multilabel else ("CE", "acc")
    train(TrainConfig(**toy_train_settings(toy, folder, n_epochs=2, loss=loss, metrics=metrics)))
    return folder / "models" / "best_audio_model.safetensors"


@pytest.fixture(scope="module")
def single_teacher(toy, tmp_path_factory) -> Path:
    return _teacher(toy, tmp_path_factory.mktemp("single"), multilabel=False)


@pytest.fixture(scope="module")
def multi_teacher(toy, tmp_path_factory) -> Path:
    return _teacher(toy, tmp_path_factory.mktemp("multi"), multilabel=True)


def _replay(toy: Path, teacher: Teacher, draws: int, augmentation: Augmentation, unlabelled: Path | None = None):
    settings = DistillConfig(teachers=[], student="tiny2", data_train=str(toy / "train.json"),
                             unlabelled=[str(unlabelled)] if unlabelled else [])  # fmt: skip
    clips, flags = training_clips(settings, teacher.labels)
    seeds = draw_seeds(7, len(clips), draws)
    return ReplayDataset(clips, teacher.contract, augmentation, seeds, flags)


class Recording:
    """A teacher that keeps every input it was given, in order."""

    def __init__(self, teacher: Teacher, fail_after: int | None = None):
        self.teacher, self.inputs, self.fail_after = teacher, [], fail_after

    def __call__(self, features):
        if self.fail_after is not None and len(self.inputs) >= self.fail_after:
            raise KeyboardInterrupt
        self.inputs.append(features.clone())
        return self.teacher(features)


# --------------------------------------------------------------------------- presets


def test_students_are_listed_smallest_first_with_non_overlapping_patches():
    costs = [student_cost(name) for name in STUDENTS]
    assert [p for p, _ in costs] == sorted(p for p, _ in costs) and len(set(costs)) == len(costs)
    assert [f for _, f in costs] == sorted(f for _, f in costs)
    base_flops = 261e9  # a base384 AST on a 10-s clip (model.flops(), torch's counter agrees)
    assert all(f < base_flops / 9 for _, f in costs)
    for name in STUDENTS:
        cfg = student_config(name, 10)
        assert (cfg.fstride, cfg.tstride, cfg.grid) == (16, 16, (8, 64))
    out = ok(run_main("distill", "--help"))
    assert "{" + ",".join(STUDENTS) + "}" in out.stdout.replace("\n", "").replace(" ", "")


def test_the_documented_preset_table_is_what_the_code_computes():
    text = (Path(__file__).resolve().parents[1] / "docs" / "distill.md").read_text()
    rows = {line.split("|")[1].strip().strip("`"): line.split("|") for line in text.splitlines()
            if line.startswith("| `")}  # fmt: skip
    assert list(rows) == list(STUDENTS)  # every preset, smallest first
    for name, cells in rows.items():
        parameters, flops = student_cost(name)
        assert cells[4].strip() == f"{parameters / 1e6:.2f}M" and cells[5].strip() == f"{flops / 1e9:.2f}"
        preset = STUDENTS[name]
        assert int(cells[3]) == preset.depth


# --------------------------------------------------------------------------- the loss


def test_loss_is_kl_with_temperature_for_single_label_and_bce_for_multi_label():
    torch.manual_seed(0)
    logits, teacher_logits = torch.randn(4, 5), torch.randn(4, 5)
    probs = teacher_logits.softmax(-1)
    labels = F.one_hot(torch.tensor([0, 1, 2, 3]), 5).float()
    none, every = torch.zeros(4), torch.ones(4)
    # a student that equals its teacher has nothing to learn from it, at any temperature
    for t in (1.0, 3.0):
        assert distill_loss(teacher_logits, probs, labels, none, "softmax", t) == pytest.approx(0, abs=1e-6)
    t = 2.0
    expected = t * t * F.kl_div(F.log_softmax(logits / t, -1), (teacher_logits / t).softmax(-1), reduction="batchmean")
    assert distill_loss(logits, probs, labels, none, "softmax", t) == pytest.approx(float(expected), rel=1e-5)
    # lambda: the labels' share where a clip has them; none where it has not
    kd = distill_loss(logits, probs, labels, none, "softmax", 1.0)
    ce = F.cross_entropy(logits, labels.argmax(-1))
    assert distill_loss(logits, probs, labels, every, "softmax", 1.0, 0.1) == pytest.approx(float(0.9 * kd + 0.1 * ce), rel=1e-5)
    assert distill_loss(logits, probs, labels, none, "softmax", 1.0, 0.1) == pytest.approx(float(kd), rel=1e-6)
    sig = teacher_logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, sig)
    assert distill_loss(logits, sig, labels, none, "sigmoid") == pytest.approx(float(bce), rel=1e-6)


def test_soft_targets_from_top_k():
    probs = torch.tensor([[0.6, 0.3, 0.05, 0.05]])
    values, top = probs.topk(2)
    single = soft_targets(values.half(), top.int(), 4, "softmax")
    assert torch.allclose(single, torch.tensor([[0.6, 0.3, 0.05, 0.05]]), atol=1e-3)
    assert float(single.sum()) == pytest.approx(1.0, abs=1e-6)
    multi = soft_targets(values.half(), top.int(), 4, "sigmoid")
    assert torch.allclose(multi, torch.tensor([[0.6, 0.3, 0.0, 0.0]]), atol=1e-3)


def test_an_ensemble_averages_its_members_matched_by_label_name():
    a = labelled(tiny_ast(label_dim=3, input_tdim=128, seed=1), NAMES, True).eval()
    b = labelled(tiny_ast(label_dim=3, input_tdim=128, seed=2), NAMES[::-1], True).eval()
    teacher = Teacher([("a", a), ("b", b)])
    x = torch.randn(2, 128, 128)
    with torch.no_grad():
        expected = (a(x).sigmoid() + b(x).sigmoid()[:, [2, 1, 0]]) / 2
    assert torch.allclose(teacher(x), expected, atol=1e-6)
    c = labelled(tiny_ast(label_dim=3, input_tdim=128, seed=2), NAMES, False)  # softmax: other input contract
    with pytest.raises(Exception, match="different input"):
        Teacher([("a", a), ("c", c)])


# --------------------------------------------------------------------------- the store


def test_the_student_replays_exactly_the_input_the_teacher_saw(toy, single_teacher, tmp_path):
    """Bitwise in fp32: time shift of an unlabelled recording, mixup partner and weight,
    SpecAugment masks and noise all come back from the draw's seed, in another batch."""
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):  # longer than the model's 1 s: cut at a random place per draw
        write_audio(unlabelled / f"long{i}.wav", np.concatenate([toy_clip(k, rng) for k in range(3)]), 16000)
    teacher = Teacher([("t", load_model(single_teacher))])
    augmentation = Augmentation(freqm=24, timem=20, mixup=0.5, noise=True)
    replay = _replay(toy, teacher, 2, augmentation, unlabelled)
    store = TeacherStore(tmp_path / "store", {"test": 1}, len(replay) * 2, 3)
    store.open()
    recording = Recording(teacher)
    store.fill(recording, replay, torch.device("cpu"), batch_size=5)
    seen = torch.cat(recording.inputs)  # row order
    assert len(seen) == len(replay) * 2
    for clip in range(len(replay)):  # each draw of a clip is augmented afresh
        assert not torch.equal(seen[2 * clip], seen[2 * clip + 1])
    outputs = store.read(3, "softmax")
    assert np.array_equal(outputs.seeds, replay.seeds.reshape(-1))
    unlabelled_draws = 0
    for epoch in (1, 2, 3):  # epoch 3 takes the first draw again
        sampler = torch.utils.data.RandomSampler(range(len(replay)))  # another order, other batches
        draws = [(i, epoch, p) for p, i in enumerate(sampler)]
        for start in range(0, len(draws), 4):
            batch = replay.collate([replay[d] for d in draws[start : start + 4]])
            features, _ = replay.model_input(batch, "cpu")
            rows = batch["row"]
            assert all(int(r) % 2 == (epoch - 1) % 2 for r in rows)
            assert torch.equal(features, seen[rows])
            # what the student learns from is what the teacher said of that input (fp16, all 3 classes kept)
            assert torch.allclose(outputs.targets(rows, "cpu"), teacher(features), atol=1e-3)
            unlabelled_draws += int((batch["labelled"] == 0).sum())
    assert unlabelled_draws  # unlabelled clips (and mixes with them) were among the draws


def test_an_interrupted_fill_resumes_and_gives_the_uninterrupted_store(toy, multi_teacher, tmp_path, monkeypatch):
    monkeypatch.setattr(teacher_store, "CHUNK_ROWS", 5)
    teacher = Teacher([("t", load_model(multi_teacher))])
    replay = _replay(toy, teacher, 2, Augmentation(freqm=24, timem=20, mixup=0.5))
    rows = len(replay) * 2  # 36 draws: 8 chunks
    whole = TeacherStore(tmp_path / "whole", {"test": 1}, rows, 2)
    whole.open()
    assert whole.fill(teacher, replay, torch.device("cpu"), batch_size=5) == 8

    store = TeacherStore(tmp_path / "cut", {"test": 1}, rows, 2)
    store.open()
    with pytest.raises(KeyboardInterrupt):
        store.fill(Recording(teacher, fail_after=3), replay, torch.device("cpu"), batch_size=5)
    assert sorted(p.name for p in store.folder.iterdir()) == ["chunk-00000.npz", "chunk-00001.npz",
                                                              "chunk-00002.npz", "store.json"]  # fmt: skip
    with pytest.raises(Exception, match="missing from the teacher store"):
        store.read(3, "sigmoid")
    recording = Recording(teacher)
    assert store.fill(recording, replay, torch.device("cpu"), batch_size=5) == 5  # only what was missing
    assert sum(len(x) for x in recording.inputs) == rows - 15
    a, b = whole.read(3, "sigmoid"), store.read(3, "sigmoid")
    assert np.array_equal(a.seeds, b.seeds) and torch.equal(a.scores, b.scores) and torch.equal(a.top, b.top)

    # under torchrun each rank fills its share (chunks rank, rank + world...): together, the same store
    shared = TeacherStore(tmp_path / "shared", {"test": 1}, rows, 2)
    shared.open()
    assert shared.fill(teacher, replay, torch.device("cpu"), batch_size=5, rank=1, world=2) == 4
    assert shared.missing() == [0, 2, 4, 6]
    assert shared.fill(teacher, replay, torch.device("cpu"), batch_size=5, rank=0, world=2) == 4
    c = shared.read(3, "sigmoid")
    assert torch.equal(a.scores, c.scores) and torch.equal(a.top, c.top)

    other = TeacherStore(tmp_path / "cut", {"test": 2}, rows, 2)  # made with other settings: refused
    with pytest.raises(Exception, match="other settings"):
        other.open()


# --------------------------------------------------------------------------- end to end


def _distill(teacher: Path, toy: Path, exp: Path, *extra: object):
    return run_main("distill", "--teacher", teacher, "--data-train", toy / "train.json", "--data-val",
                    toy / "val.json", "--student", "tiny2", "--exp-dir", exp, "--n-epochs", 2, "-b", 6,
                    "--amp", "off", "--progress", "False", *extra)  # fmt: skip


def test_single_label_student_is_an_ordinary_checkpoint_that_resumes(toy, single_teacher, tmp_path):
    exp = tmp_path / "exp"
    out = ok(_distill(single_teacher, toy, exp, "--draws", 1))
    student_path = exp / "models" / "best_audio_model.safetensors"
    assert str(student_path) in out.stdout
    student, teacher = load_model(student_path), load_model(single_teacher)
    assert student.input_contract == teacher.input_contract and student.input_contract.activation == "softmax"
    assert student.info.labels == teacher.info.labels and student.info.label_ids == teacher.info.label_ids
    assert (student.config.model_size, student.config.depth, student.config.fstride) == ("tiny224", 2, 16)
    assert student.info.extra["student"] == "tiny2"
    assert len(np.loadtxt(exp / "result.csv", delimiter=",", ndmin=2)) == 2
    chunk = exp / "teacher" / "chunk-00000.npz"
    stamp = chunk.stat().st_mtime_ns
    ok(_distill(single_teacher, toy, exp, "--draws", 1))  # done: nothing is computed again
    assert chunk.stat().st_mtime_ns == stamp
    assert len(np.loadtxt(exp / "result.csv", delimiter=",", ndmin=2)) == 2
    refused = _distill(single_teacher, toy, exp, "--draws", 1, "--label-weight", 0.5)
    assert refused.returncode == 2 and "other settings (label_weight" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    clip = toy / "audio" / "val_1_0.wav"
    tags = json.loads(ok(run_main("predict", clip, "--checkpoint", student_path, "--format", "json")).stdout)
    assert {t["label"] for t in tags[0]["labels"]} <= set(NAMES)


def test_multi_label_student_from_labels_and_unlabelled_audio_calibrates_and_tags(toy, multi_teacher, tmp_path):
    unlabelled = tmp_path / "unlabelled"
    (unlabelled / "sub").mkdir(parents=True)
    rng = np.random.default_rng(5)
    for i in range(4):
        write_audio(unlabelled / "sub" / f"u{i}.flac", toy_clip(i % 3, rng, seconds=2.5), 16000)
    exp = tmp_path / "exp"
    ok(_distill(multi_teacher, toy, exp, "--unlabelled", unlabelled, "--top-k", 2, "--clip-stats", "True"))
    meta = json.loads((exp / "teacher" / "store.json").read_text())
    assert (meta["rows"], meta["k"], meta["draws"]) == ((18 + 4) * 2, 2, 2)
    student_path = exp / "models" / "best_audio_model.safetensors"
    student = load_model(student_path)
    assert student.input_contract.activation == "sigmoid" and student.info.labels == NAMES
    # the student's clip-statistics branch is fitted on the labelled clips alone (training and
    # validation): the unlabelled ones have no labels to fit
    assert student.config.clip_stats and "mAP" in student.info.extra["clip_stats"]["valid"]
    stats = [clip_statistics(x) for name in ("train.json", "val.json")
             for x, _, _ in batches_of(AudioDataset(datafile_from(toy / name, exp / "labels.csv"),
                                                    student.input_contract), 64, "cpu")]  # fmt: skip
    torch.testing.assert_close(student.stats_head.mean, torch.cat(stats).mean(0).float(), rtol=1e-4, atol=1e-4)
    calibrated = tmp_path / "calibrated.safetensors"
    ok(run_main("calibrate", "--checkpoint", student_path, "--data", toy / "val.json", "--label-csv",
                toy / "labels.csv", "--out", calibrated))  # fmt: skip
    assert len(load_model(calibrated).info.thresholds) == 3
    tags = json.loads(ok(run_main("predict", toy / "audio" / "val_2_0.wav", "--checkpoint", calibrated,
                                  "--format", "json")).stdout)  # fmt: skip
    assert tags[0]["labels"]
    datafile_from(toy / "val.json", exp / "labels.csv")  # the run's label table reads back


def test_a_student_with_the_branch_is_taught_by_the_teachers_transformer_alone(toy, tmp_path):
    """A teacher's whole output includes its clip-statistics branch; a student that fits its
    own branch learns from the teacher's transformer alone, at the scale it trained to."""
    path = tmp_path / "teacher" / "models" / "best_audio_model.safetensors"
    train(TrainConfig(**toy_train_settings(toy, tmp_path / "teacher", n_epochs=2, clip_stats=True)))
    model = load_model(path)
    model.info = dataclasses.replace(model.info, extra={**model.info.extra,
                                                         "clip_stats": {**model.info.extra["clip_stats"], "weight": 0.3}})  # fmt: skip
    with torch.no_grad():  # a branch that counts: known weights, mixed at 0.3
        torch.manual_seed(0)
        model.stats_head.linear.weight.normal_()
    x = torch.randn(4, 100, 128)
    with torch.no_grad():
        alone = model.forward_head(model.forward_features(x)) / 0.7
        whole = model(x)
    assert not torch.allclose(whole, alone * 0.7)  # the branch adds something
    torch.testing.assert_close(Teacher([("t", model)], transformers_only=True)(x), alone.softmax(-1))
    torch.testing.assert_close(Teacher([("t", model)])(x), whole.softmax(-1))
    model.info = dataclasses.replace(model.info, extra={**model.info.extra,
                                                         "clip_stats": {**model.info.extra["clip_stats"], "weight": 1.0}})  # fmt: skip
    torch.testing.assert_close(Teacher([("t", model)], transformers_only=True)(x), whole.softmax(-1))

    exp = tmp_path / "exp"
    ok(_distill(path, toy, exp, "--draws", 1, "--clip-stats", "True"))
    assert json.loads((exp / "teacher" / "store.json").read_text())["teaching"] == "transformers"
    student = load_model(exp / "models" / "best_audio_model.safetensors")
    assert "acc" in student.info.extra["clip_stats"]["valid"]  # its own branch, fitted after training
    refused = _distill(path, toy, exp, "--draws", 1)  # a student without the branch is taught the whole output
    assert refused.returncode == 2 and "other settings (teaching: 'transformers' there, not set now)" in refused.stderr


@pytest.mark.slow
def test_under_torchrun_each_process_fills_its_share_and_all_train_on_the_whole_store(toy, single_teacher, tmp_path):
    exp = tmp_path / "exp"
    res = run_torchrun("distill", "--teacher", single_teacher, "--data-train", toy / "train.json", "--data-val",
                       toy / "val.json", "--student", "tiny2", "--exp-dir", exp, "--n-epochs", 2, "-b", 6,
                       "--amp", "off", "--draws", 15, "--mixup", 0.5, "--device", "cpu")  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(np.loadtxt(exp / "result.csv", delimiter=",", ndmin=2)) == 2
    meta = json.loads((exp / "teacher" / "store.json").read_text())
    assert meta["rows"] == 18 * 15 and sorted(p.name for p in (exp / "teacher").glob("chunk-*")) == [
        "chunk-00000.npz", "chunk-00001.npz"]  # 270 draws: rank 0 filled the first chunk, rank 1 the second
    stored = TeacherStore(exp / "teacher", {}, meta["rows"], meta["k"]).read(3, "softmax")
    teacher = Teacher([("t", load_model(single_teacher))])
    replay = _replay(toy, teacher, 15, Augmentation(**{k: meta["augmentation"][k] for k in ("freqm", "timem", "mixup",
                                                                                             "noise")}))  # fmt: skip
    replay.seeds = stored.seeds.reshape(18, 15)
    rows = torch.tensor([0, 100, 255, 256, 269])  # both chunks
    batch = replay.collate([replay[int(r)] for r in rows])
    expected = teacher(replay.model_input(batch, "cpu")[0])
    assert torch.allclose(stored.targets(rows, "cpu"), expected, atol=2e-3)


def test_bad_input_is_one_line(toy, single_teacher, tmp_path):
    out = _distill(single_teacher, toy, tmp_path / "exp", "--unlabelled", tmp_path / "nowhere")
    assert out.returncode == 2 and "nowhere" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    save_checkpoint(tiny_ast(label_dim=3), tmp_path / "nolabels.safetensors")
    out = _distill(tmp_path / "nolabels.safetensors", toy, tmp_path / "exp2")
    assert out.returncode == 2 and "label" in out.stderr and len(out.stderr.strip().splitlines()) == 1
