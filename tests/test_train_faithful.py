"""Training as faithful as the original: the end of a run under torchrun, augmentation that
does not depend on loader workers, the original's output files and the older ``--dataset``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_main, run_torchrun
from factories import as_flags, toy_train_settings, write_toy_dataset

from ast_audio.train import TrainConfig, train
from ast_audio.train.metrics import calculate_stats, d_prime


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), per_class_train=8, per_class_val=4)


def settings(toy: Path, exp: Path, **overrides) -> dict:
    return toy_train_settings(toy, exp, **{"n_epochs": 2, "depth": 1, **overrides})


def table(path: Path) -> np.ndarray:
    return np.loadtxt(path, delimiter=",")


@pytest.mark.parametrize("fbank_on", ["loader", "device"])
def test_loader_workers_do_not_change_the_run(toy, tmp_path, fbank_on):
    """With persistent workers, a worker's copy of the dataset kept the epoch it was made
    with, so every epoch repeated the first one's augmentation; now the sampler hands each
    draw its (clip, epoch, position) and 0 or 2 workers train identically."""
    augment = dict(freqm=20, timem=30, mixup=0.5, noise=True, bal=True, fbank_on=fbank_on)
    train(TrainConfig(**settings(toy, tmp_path / "w0", num_workers=0, **augment)))
    train(TrainConfig(**settings(toy, tmp_path / "w2", num_workers=2, **augment)))
    np.testing.assert_array_equal(table(tmp_path / "w2" / "result.csv"), table(tmp_path / "w0" / "result.csv"))


def check_original_files(exp: Path, epochs: int, clips: int, classes: int) -> None:
    """What the original's scripts and users read from an experiment folder."""
    result = np.loadtxt(exp / "result.csv", delimiter=",")  # as egs/esc50/get_esc_result.py reads each fold
    assert result.shape == (epochs, 10)
    eval_result = np.loadtxt(exp / "eval_result.csv")  # one value per line: val acc, val mAUC, eval acc, eval mAUC
    assert eval_result.shape == (4,) and len((exp / "eval_result.csv").read_text().splitlines()) == 4
    wa_result = np.loadtxt(exp / "wa_result.csv")  # mAP, mAUC, precision, recall, d-prime
    assert wa_result.shape == (5,) and wa_result[4] == pytest.approx(d_prime(wa_result[1]))
    predictions = exp / "predictions"
    names = sorted(p.name for p in predictions.iterdir())
    assert names == ["cum_predictions.csv", f"predictions_{epochs}.csv", "predictions_eval_set.csv",
                     "predictions_valid_set.csv", "predictions_wa.csv", "target.csv"]  # fmt: skip
    for name in names:
        assert table(predictions / name).shape == (clips, classes), name
    target = table(predictions / "target.csv")
    last = calculate_stats(table(predictions / f"predictions_{epochs}.csv"), target)
    cum = calculate_stats(table(predictions / "cum_predictions.csv"), target)
    assert result[-1, 0] == pytest.approx(last.acc) and result[-1, 7] == pytest.approx(cum.acc)
    assert result[-1, 8] == pytest.approx(cum.mAUC)
    wa = calculate_stats(table(predictions / "predictions_wa.csv"), target)
    np.testing.assert_allclose(wa_result[:4], [wa.mAP, wa.mAUC, wa.average_precision, wa.average_recall])
    valid = calculate_stats(table(predictions / "predictions_valid_set.csv"), target)
    np.testing.assert_allclose(eval_result[:2], [valid.acc, valid.mAUC])


def test_torchrun_finishes_with_eval_and_weight_averaging_like_one_process(toy, tmp_path):
    """The end-of-run evaluations (averaged model; best model on valid and eval) used to run
    on rank 0 alone while gathering from every rank: two processes waited on each other for
    ever. Every rank takes part now, and the files equal a one-process run's."""
    values = settings(toy, tmp_path / "one", data_eval=str(toy / "val.json"), wa=True, wa_start=1, wa_end=2)
    train(TrainConfig(**values))
    one = tmp_path / "one"
    check_original_files(one, epochs=2, clips=12, classes=3)

    two = tmp_path / "two"
    out = run_torchrun("train", *as_flags({**values, "exp_dir": str(two)}), nproc=2, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    check_original_files(two, epochs=2, clips=12, classes=3)
    # The same global batches (rank r takes draws r, r + 2, ...) and averaged gradients: the
    # same training up to the float rounding of the gradient all-reduce.
    for name in ("result.csv", "eval_result.csv", "wa_result.csv", "predictions/predictions_wa.csv"):
        np.testing.assert_allclose(table(two / name), table(one / name), atol=2e-3, err_msg=name)


def test_dataset_flag_fills_in_what_the_older_run_py_did(toy, tmp_path):
    exp = tmp_path / "exp"
    values = settings(toy, exp, n_epochs=1)
    for key in ("audio_length", "dataset_mean", "dataset_std", "metrics", "loss", "lrscheduler_start"):
        del values[key]
    out = run_main("train", *as_flags(values), "--dataset", "esc50", "--audio_length", "100", timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    cfg = json.loads((exp / "config.json").read_text())["config"]
    assert cfg["dataset"] == "esc50" and cfg["audio_length"] == 100  # the flag given wins
    assert (cfg["dataset_mean"], cfg["dataset_std"]) == (-6.6268077, 5.358466)
    assert (cfg["loss"], cfg["metrics"], cfg["warmup"], cfg["noise"]) == ("CE", "acc", False, False)
    assert (cfg["lrscheduler_start"], cfg["lrscheduler_step"], cfg["lrscheduler_decay"]) == (5, 1, 0.85)


def test_dataset_defaults_follow_the_older_traintest():
    from ast_audio.train.config import dataset_defaults, resolve_train_config

    sc = resolve_train_config({"dataset": "speechcommands"})
    assert (sc.audio_length, sc.noise, sc.loss, sc.metrics) == (128, True, "BCE", "acc")
    audioset = resolve_train_config({"dataset": "audioset", "lr": 1e-5})
    assert (audioset.audio_length, audioset.warmup, audioset.wa, audioset.wa_start, audioset.wa_end) == (
        1024, True, True, 6, 25)  # fmt: skip
    assert resolve_train_config({"dataset": "audioset"}, {"wa": False}).wa is False
    assert dataset_defaults("esc50")["audio_length"] == 512


def test_unknown_dataset_is_a_one_line_error(toy, tmp_path):
    out = run_main("train", *as_flags(settings(toy, tmp_path / "e")), "--dataset", "vgg", timeout=120)
    assert out.returncode == 2 and "invalid choice: 'vgg'" in out.stderr and "Traceback" not in out.stderr


def test_a_run_from_before_a_setting_existed_still_resumes(toy, tmp_path):
    """``resample`` and ``dataset`` are newer than some runs' ``last.pt``: missing there, they
    count as their defaults, so such a run resumes instead of being refused as another run."""
    import torch

    exp = tmp_path / "exp"
    train(TrainConfig(**settings(toy, exp, n_epochs=1)))
    resume = exp / "models" / "last.pt"
    saved = torch.load(resume, weights_only=True)
    for key in ("resample", "dataset"):
        del saved["config"][key]
    torch.save(saved, resume)
    state = train(TrainConfig(**settings(toy, exp, n_epochs=2)))
    assert state.epoch == 2 and table(exp / "result.csv").shape == (2, 10)


def test_a_config_naming_an_unknown_dataset_is_a_one_line_error_naming_the_file(toy, tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[train]\ndataset = "vgg"\n')
    out = run_main("train", "--config", config, *as_flags(settings(toy, tmp_path / "e")), timeout=120)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr
    assert f"{config}: dataset must be one of audioset, esc50, speechcommands, got 'vgg'" in lines[0]
