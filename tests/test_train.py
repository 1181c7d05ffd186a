"""The trainer on real files: learning, result files, weight averaging, resume after kill -9, DDP."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, run_main, run_torchrun, start_cli, wait_for_file
from factories import as_flags, write_toy_dataset
from factories import toy_train_settings as base_args

from ast_audio import load_model
from ast_audio.train import TrainConfig, train


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), per_class_train=12, per_class_val=4)


@pytest.fixture(scope="module")
def one_epoch(toy, tmp_path_factory) -> Path:
    """The run folder of one epoch with the default settings, trained once for the tests that
    compare with it or resume from it (a test that writes into it works on a copy)."""
    exp = tmp_path_factory.mktemp("one-epoch") / "exp"
    train(TrainConfig(**base_args(toy, exp, n_epochs=1)))
    return exp


def results(exp: Path) -> np.ndarray:
    return np.loadtxt(exp / "result.csv", delimiter=",", ndmin=2)


def test_tiny_model_learns_and_writes_the_original_outputs(toy, tmp_path):
    exp = tmp_path / "exp"
    state = train(TrainConfig(**base_args(toy, exp, n_epochs=5, data_eval=str(toy / "val.json"))))
    rows = results(exp)
    assert rows.shape == (5, 10)  # one row per epoch, the original's ten columns
    assert rows[:, 0].max() >= 0.8  # accuracy well above chance (1/3)
    assert state.best_epoch == int(rows[:, 0].argmax()) + 1
    np.testing.assert_allclose(rows[:, 9], 5e-4)  # lr column (no decay before epoch 10)
    best = load_model(exp / "models" / "best_audio_model.safetensors")
    assert best.info.labels == ["low tone", "high tone", "noise"] and not best.info.multilabel
    assert (exp / "curves.png").stat().st_size > 1000 and (exp / "log.txt").exists() and (exp / "config.json").exists()
    val_acc, _, eval_acc, _ = np.loadtxt(exp / "eval_result.csv", delimiter=",")
    assert val_acc == pytest.approx(rows[:, 0].max()) and eval_acc == val_acc  # eval set == val set here


def test_weight_averaging_is_the_mean_of_the_epoch_weights(toy, tmp_path):
    exp = tmp_path / "exp"
    train(TrainConfig(**base_args(toy, exp, n_epochs=3, wa=True, wa_start=2, wa_end=3, save_model=True)))
    models = exp / "models"
    wa = load_model(models / "audio_model_wa.safetensors").state_dict()
    e2 = load_model(models / "audio_model.2.safetensors").state_dict()
    e3 = load_model(models / "audio_model.3.safetensors").state_dict()
    for key in wa:
        torch.testing.assert_close(wa[key], (e2[key].double() + e3[key].double()).div(2).float(), atol=1e-6, rtol=0)
    wa_result = np.loadtxt(exp / "wa_result.csv", delimiter=",")
    assert wa_result.shape == (5,)  # the original's mAP, mAUC, precision, recall, d-prime, one per line


def test_warmup_and_schedule_follow_the_original(toy, tmp_path):
    exp = tmp_path / "exp"
    # 36 clips / batch 6 = 6 steps per epoch; warm-up sets lr = step/1000 * lr at steps 0, 50, ...
    train(TrainConfig(**base_args(toy, exp, n_epochs=3, warmup=True, lrscheduler_start=2, lrscheduler_decay=0.5)))
    lrs = results(exp)[:, 9]
    np.testing.assert_allclose(lrs, [0.0, 0.0, 0.0])  # still at step 0's warm-up lr: 0 * decay
    exp2 = tmp_path / "exp2"
    train(TrainConfig(**base_args(toy, exp2, n_epochs=4, lrscheduler_start=2, lrscheduler_step=1, lrscheduler_decay=0.5)))
    # stepped after each epoch: milestone 2 is reached after epoch 2, so epoch 3 is the first decayed one
    np.testing.assert_allclose(results(exp2)[:, 9], [5e-4, 5e-4, 2.5e-4, 1.25e-4])


def test_resume_after_kill_equals_an_uninterrupted_run(toy, tmp_path):
    args = base_args(toy, tmp_path / "a", n_epochs=3, mixup=0.5, freqm=10, timem=10)
    done = run_cli("train", *as_flags(args), timeout=240)
    assert done.returncode == 0, done.stderr

    b = tmp_path / "b"
    flags = as_flags({**args, "exp_dir": str(b)})
    proc = start_cli("train", *flags)
    resume_file = b / "models" / "last.pt"  # written (renamed into place) after every epoch
    wait_for_file(resume_file, proc, timeout=180)
    os.kill(proc.pid, signal.SIGKILL)  # right after the first epoch's checkpoint appeared
    proc.wait()
    proc.stderr.close()
    killed_at = torch.load(resume_file, weights_only=True)["state"]["epoch"]
    assert 1 <= killed_at < 3, "the kill must land before the run finished"
    assert not [p for p in (b / "models").iterdir() if p.name.startswith(".") and p.stat().st_size == 0]

    resumed = run_cli("train", *flags, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    np.testing.assert_allclose(results(b), results(tmp_path / "a"), rtol=1e-6, atol=1e-7)
    final_a = torch.load(tmp_path / "a" / "models" / "last.pt", weights_only=True)
    final_b = torch.load(resume_file, weights_only=True)
    assert final_b["state"]["global_step"] == final_a["state"]["global_step"]
    for key, value in final_a["model"].items():
        torch.testing.assert_close(final_b["model"][key], value, rtol=1e-5, atol=1e-6)


def test_two_process_ddp_metrics_equal_a_single_process_evaluation(toy, tmp_path):
    exp = tmp_path / "ddp"
    args = base_args(toy, exp, n_epochs=2, save_model=True)
    out = run_torchrun("train", *as_flags(args), nproc=2, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = results(exp)
    assert rows.shape == (2, 10)
    check = run_main("evaluate", "--checkpoint", str(exp / "models" / "audio_model.2.safetensors"),
                    "--data", str(toy / "val.json"), "--label-csv", str(toy / "labels.csv"), "--out", str(tmp_path / "e.csv"),
                    timeout=240)  # fmt: skip
    assert check.returncode == 0, check.stderr
    ev = np.genfromtxt(tmp_path / "e.csv", delimiter=",", names=True, dtype=None, encoding="utf-8")
    assert float(ev["acc"]) == pytest.approx(rows[1, 0], abs=1e-6)
    assert float(ev["mAUC"]) == pytest.approx(rows[1, 1], abs=1e-6)


@pytest.mark.parametrize(
    "problem, message",
    [
        ("json", r"train.json: not valid JSON"),
        ("label", r"train.json: entry 0 .*label '/m/cow' is not in the label CSV"),
        ("file", r"train.json: entry 0: audio file not found"),
        ("n_class", r"--n_class is 5 but .*labels.csv has 3 labels"),
        ("missing", r"--data-train is required"),
    ],
)
def test_bad_datafiles_give_one_line_errors(toy, tmp_path, problem, message):
    import json
    import re

    data = json.loads((toy / "train.json").read_text())
    args = base_args(toy, tmp_path / "exp", n_epochs=1)
    train_json = tmp_path / "train.json"
    if problem == "json":
        train_json.write_text('{"data": [')
    elif problem == "label":
        data["data"][0]["labels"] = "/m/cow"
        train_json.write_text(json.dumps(data))
    elif problem == "file":
        data["data"][0]["wav"] = str(tmp_path / "gone.wav")
        train_json.write_text(json.dumps(data))
    else:
        train_json.write_text(json.dumps(data))
    args["data_train"] = str(train_json)
    if problem == "n_class":
        args["n_class"] = 5
    if problem == "missing":
        del args["data_train"]
    out = run_main("train", *as_flags(args), timeout=60)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), out.stderr
    assert "Traceback" not in out.stderr


def test_resuming_with_other_settings_is_refused(toy, one_epoch, tmp_path):
    exp = shutil.copytree(one_epoch, tmp_path / "exp")
    out = run_main("train", *as_flags(base_args(toy, exp, n_epochs=2, lr=1e-3)), timeout=60)
    assert out.returncode == 2 and "holds a run with other settings (lr: 0.0005 there, 0.001 now)" in out.stderr


def test_weights_and_stats_commands(toy, tmp_path):
    out = run_main("weights", str(toy / "train.json"), "--label-csv", str(toy / "labels.csv"), timeout=60)
    assert out.returncode == 0 and Path(out.stdout.strip()) == toy / "train_weight.csv"
    np.testing.assert_allclose(np.loadtxt(toy / "train_weight.csv"), 1000 / 12.01)
    out = run_main("stats", str(toy / "val.json"), "--label-csv", str(toy / "labels.csv"), "--audio-length", "100", timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("dataset_mean=")


def test_bf16_balanced_sampling_and_skipped_entries(toy, tmp_path):
    import json

    data = json.loads((toy / "train.json").read_text())
    data["data"].append({"wav": str(tmp_path / "missing.wav"), "labels": "/m/low"})
    train_json = tmp_path / "train.json"
    train_json.write_text(json.dumps(data))
    exp = tmp_path / "exp"
    args = base_args(toy, exp, n_epochs=2, amp="bf16", bal=True, skip_bad=True, data_train=str(train_json))
    train(TrainConfig(**args))
    assert results(exp).shape == (2, 10) and np.isfinite(results(exp)).all()
    assert "entry 36: audio file not found" in (exp / "skipped_entries.txt").read_text()


def test_evaluate_ensemble_row_scores_the_mean_of_the_members(toy, tmp_path):
    from ast_audio.data import read_datafile
    from ast_audio.data.dataset import AudioDataset
    from ast_audio.train.evaluate import evaluate_checkpoints, predict_dataset
    from ast_audio.train.metrics import calculate_stats

    exp = tmp_path / "exp"
    train(TrainConfig(**base_args(toy, exp, n_epochs=2, save_model=True)))
    members = [exp / "models" / f"audio_model.{e}.safetensors" for e in (1, 2)]
    rows = evaluate_checkpoints(members, toy / "val.json", toy / "labels.csv")
    assert [name for name, _ in rows] == [str(m) for m in members] + ["ensemble"]
    df = read_datafile(toy / "val.json", toy / "labels.csv")
    scores = []
    for member in members:
        model = load_model(member)
        scores.append(predict_dataset(model, AudioDataset(df, model.input_contract)).scores)
    want = calculate_stats(np.mean(scores, axis=0), df.targets())
    assert rows[-1][1].mAUC == pytest.approx(want.mAUC) and rows[-1][1].acc == pytest.approx(want.acc)
    assert rows[-1][1].mAP == pytest.approx(want.mAP)


def test_fbank_on_device_and_waveform_cache_train_as_the_loader_does(toy, tmp_path):
    augment = dict(n_epochs=2, freqm=20, timem=30, mixup=0.5)
    train(TrainConfig(**base_args(toy, tmp_path / "loader", fbank_on="loader", **augment)))
    cache = tmp_path / "cache"
    train(TrainConfig(**base_args(toy, tmp_path / "device", fbank_on="device", cache_dir=str(cache), **augment)))
    assert len(list(cache.rglob("*.npy"))) == 3 * 16  # every train and validation clip, once
    np.testing.assert_allclose(results(tmp_path / "device"), results(tmp_path / "loader"), rtol=0, atol=1e-4)


def test_compiled_training_matches_eager(toy, one_epoch, tmp_path):
    out = run_cli("train", *as_flags(base_args(toy, tmp_path / "compiled", n_epochs=1)), "--compile", "True", timeout=240)
    assert out.returncode == 0, out.stderr
    assert '"compile": true' in (tmp_path / "compiled" / "config.json").read_text()
    np.testing.assert_allclose(results(tmp_path / "compiled"), results(one_epoch), rtol=0, atol=1e-4)
