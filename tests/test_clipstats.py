"""The clip-statistics branch: what it measures, how it is fitted and mixed, how it is saved."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import run_main
from factories import toy_train_settings, write_toy_dataset
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ast_audio import load_model
from ast_audio.checkpoints.load import save_checkpoint
from ast_audio.errors import CheckpointError, ConfigError
from ast_audio.model.ast import ASTModel
from ast_audio.model.clipstats import clip_statistics
from ast_audio.train import TrainConfig, train
from ast_audio.train.clipstats import (
    WEIGHTS,
    _cross_validated_c,
    _one_standard_error,
    batches_of,
    fit_clip_stats,
)


def tiny(label_dim: int = 3, clip_stats: bool = True, seed: int = 0, pool: str = "mean") -> ASTModel:
    torch.manual_seed(seed)
    return ASTModel(label_dim, 16, 16, 32, 64, imagenet_pretrain=False, model_size="tiny224", verbose=False,
                    depth=1, pool=pool, clip_stats=clip_stats)  # fmt: skip


def test_statistics_leave_out_padding_silence_and_masked_frames():
    rng = np.random.default_rng(0)
    clip = torch.from_numpy(rng.standard_normal((1, 20, 8))).float()
    alone = clip_statistics(clip)
    padded = torch.cat([clip, torch.full((1, 30, 8), -0.7)], dim=1)  # padding: one value in every bin
    masked = clip.clone()
    masked[:, 5] = 0.0  # a SpecAugment time mask in the middle splits the differences too
    assert alone.shape == (1, 32)
    torch.testing.assert_close(clip_statistics(padded), alone, rtol=0, atol=1e-6)
    x = clip[0].double()
    np.testing.assert_allclose(alone[0, :8], x.mean(0), atol=1e-6)
    np.testing.assert_allclose(alone[0, 8:16], x.std(0, unbiased=False), atol=1e-6)
    d = x[1:] - x[:-1]
    np.testing.assert_allclose(alone[0, 16:24], d.mean(0), atol=1e-6)
    kept = torch.cat([x[:5], x[6:]])
    np.testing.assert_allclose(clip_statistics(masked)[0, :8], kept.mean(0), atol=1e-6)
    pairs = torch.cat([x[1:5] - x[:4], x[7:] - x[6:-1]])  # no difference across the masked frame
    np.testing.assert_allclose(clip_statistics(masked)[0, 16:24], pairs.mean(0), atol=1e-6)
    assert torch.equal(clip_statistics(torch.zeros(2, 10, 8)), torch.zeros(2, 32))  # nothing to measure


def band_data(n: int, seed: int):
    """Inputs whose class is which band group is louder: easy for statistics, hard for an untrained transformer."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 64, 32, generator=g)
    y = torch.arange(n) % 3
    for k in range(3):
        x[y == k, :, k * 10 : k * 10 + 10] += 0.8
    return x, torch.nn.functional.one_hot(y, 3).float()


def test_fit_mixes_on_validation_and_folds_the_weight_into_the_heads():
    model = tiny()
    model.stats_head.linear.weight.data.fill_(1.0)  # anything there before the fit is replaced
    x_train, y_train = band_data(90, 0)
    x_valid, y_valid = band_data(45, 1)
    with torch.no_grad():
        transformer_before = model.forward_head(model.forward_features(x_valid))
    choice = fit_clip_stats(model, [(x_train, y_train)], [(x_valid, y_valid)], multi_label=False, metric="acc")
    w = choice["weight"]
    assert choice["C"] in (0.01, 0.1, 1.0, 10.0) and 0 < w <= 1
    assert choice["valid"]["acc"] >= choice["valid"]["acc_transformer"]
    assert choice["valid"]["acc_statistics"] > 0.9  # the bands separate the classes
    with torch.no_grad():
        logits = model(x_valid)
        transformer_after = model.forward_head(model.forward_features(x_valid))
        stats_part = model.stats_head(x_valid)
    torch.testing.assert_close(transformer_after, (1 - w) * transformer_before, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, transformer_after + stats_part)
    assert float((logits.argmax(1) == y_valid.argmax(1)).float().mean()) >= choice["valid"]["acc_transformer"]
    x_all = torch.cat([x_train, x_valid])  # the regression is refitted on both splits
    torch.testing.assert_close(model.stats_head.mean, clip_statistics(x_all).mean(0), rtol=1e-5, atol=1e-5)
    assert model.info.extra["clip_stats"] == choice
    again = fit_clip_stats(model, [(x_train, y_train)], [(x_valid, y_valid)], multi_label=False, metric="acc")
    assert again == choice
    with torch.no_grad():
        torch.testing.assert_close(model(x_valid), logits)  # not fitted (nor folded) twice


def test_the_weight_leans_to_the_statistics_unless_validation_tells_them_apart():
    g = torch.Generator().manual_seed(0)
    y = torch.nn.functional.one_hot(torch.arange(60) % 3, 3).double()
    noisy = torch.randn(60, 3, generator=g, dtype=torch.float64)
    # the same logits on both sides: every weight has the same loss, the statistics side wins
    assert _one_standard_error(noisy, noisy, y, multi_label=False) == (1.0, 0.0)
    # a transformer right with confidence, statistics that are noise: the lowest loss is at
    # w = 0 and the weights near 1 are many standard errors worse
    w, lowest = _one_standard_error(8 * y - 4, noisy, y, multi_label=False)
    assert lowest == 0.0 and w < 0.5
    losses = {k: torch.nn.functional.cross_entropy((1 - k) * (8 * y - 4) + k * noisy, y.argmax(1), reduction="none")
              for k in WEIGHTS}  # fmt: skip
    diff = losses[w] - losses[0.0]
    assert float(diff.mean()) <= float(diff.std()) / 60**0.5  # the chosen one is within one standard error
    above = min(k for k in WEIGHTS if k > w)
    diff = losses[above] - losses[0.0]
    assert float(diff.mean()) > float(diff.std()) / 60**0.5  # and the next one is not


def test_cross_validation_keeps_each_group_out_of_its_own_fold():
    # 12 groups of 5 near-copies; the label is the group's, drawn at random: nothing carries
    # over from one group to another, so grouped out-of-fold accuracy stays near chance,
    # while clip by clip the copies give the answer away
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(12, 8, generator=g, dtype=torch.float64)
    stats = centres.repeat_interleave(5, 0) + 0.01 * torch.randn(60, 8, generator=g, dtype=torch.float64)
    y = torch.nn.functional.one_hot(torch.randint(0, 2, (12,), generator=g).repeat_interleave(5), 2).double()
    groups = [f"g{i // 5}" for i in range(60)]
    _, grouped, folds = _cross_validated_c(stats, y, groups, multi_label=False, metric="acc")
    _, by_clip, _ = _cross_validated_c(stats, y, [str(i) for i in range(60)], multi_label=False, metric="acc")
    assert folds == 5
    assert max(acc for acc, _ in by_clip.values()) > 0.95
    assert max(acc for acc, _ in grouped.values()) < 0.8


def test_one_group_leaves_nothing_to_cross_validate_and_the_choice_stays_valid_json():
    import json

    x_train, y_train = band_data(60, 0)
    x_valid, y_valid = band_data(30, 1)
    assert _cross_validated_c(clip_statistics(x_train).double(), y_train.double(), ["one"] * 60, multi_label=False,
                              metric="acc") == (10.0, {}, 0)  # fmt: skip
    choice = fit_clip_stats(tiny(), [(x_train, y_train, ["one"] * 60)], [(x_valid, y_valid, ["one"] * 30)],
                            multi_label=False, metric="acc")  # fmt: skip
    assert choice["folds"] == 0 and choice["cross_validated"] == {"acc": None} and choice["C"] == 10.0
    json.dumps(choice, allow_nan=False)  # saved in the checkpoint's metadata: no bare NaN


def test_batches_carry_the_datafile_groups_and_leave_out_bad_clips(tmp_path):
    import json

    from ast_audio.data.datafiles import read_datafile
    from ast_audio.data.dataset import AudioDataset
    from ast_audio.features.contract import InputContract

    toy = write_toy_dataset(tmp_path / "toy", per_class_train=3, per_class_val=1)
    doc = json.loads((toy / "train.json").read_text())
    for i, item in enumerate(doc["data"]):
        if i % 2 == 0:
            item["group"] = f"session {i // 4}"
    (toy / "broken.wav").write_bytes(b"RIFF not really")
    doc["data"].insert(3, {"wav": str(toy / "broken.wav"), "labels": doc["data"][3]["labels"], "group": "lost"})
    (toy / "train.json").write_text(json.dumps(doc))
    datafile = read_datafile(toy / "train.json", toy / "labels.csv", check_files=False)
    dataset = AudioDataset(datafile, InputContract(target_length=100, mean=0.0, std=1.0), skip_bad=True)
    got = [(y.shape[0], groups) for _, y, groups in batches_of(dataset, 4, "cpu")]
    groups = [g for _, batch in got for g in batch]
    expected = [e.group or str(e.wav) for e in datafile.entries if e.wav.name != "broken.wav"]
    assert groups == expected and sum(n for n, _ in got) == len(expected)


def test_multilabel_fit_uses_sigmoids():
    model = tiny(label_dim=3)
    x_train, y_train = band_data(60, 2)
    x_valid, y_valid = band_data(30, 3)
    y_train[::4, 0] = 1.0  # a second label on some clips
    choice = fit_clip_stats(model, [(x_train, y_train)], [(x_valid, y_valid)], multi_label=True, metric="mAP")
    assert choice["valid"]["mAP"] >= choice["valid"]["mAP_transformer"]


def test_checkpoint_round_trip_and_layouts_that_cannot_hold_it(tmp_path):
    model = tiny(pool="cls")  # the branch alone is what the other layouts cannot hold
    x_train, y_train = band_data(60, 0)
    fit_clip_stats(model, [(x_train, y_train)], [(x_train[:30], y_train[:30])], multi_label=False, metric="acc")
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    loaded = load_model(path)
    assert loaded.config.clip_stats and loaded.info.extra["clip_stats"] == model.info.extra["clip_stats"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x_train[:4]), model.eval()(x_train[:4]))
    for fmt in ("hf", "original"):
        out = run_main("convert", path, tmp_path / f"out-{fmt}", "--format", fmt)
        assert out.returncode == 2  # a checkpoint error
        assert "clip-statistics branch" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    path = save_checkpoint(tiny(clip_stats=False), tmp_path / "plain.safetensors")
    with safe_open(path, "pt") as fh:
        meta = fh.metadata()
    save_file({**load_file(path), "stats_head.linear.bias": torch.zeros(3)}, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="no clip_stats"):
        load_model(path)


def test_training_with_the_branch_fits_it_after_the_best_epoch(tmp_path):
    toy = write_toy_dataset(tmp_path / "toy", per_class_train=6, per_class_val=3)
    exp = tmp_path / "exp"
    train(TrainConfig(**toy_train_settings(toy, exp, n_epochs=2, pool="mean", clip_stats=True,
                                           data_eval=str(toy / "val.json"))))  # fmt: skip
    best = load_model(exp / "models" / "best_audio_model.safetensors")
    choice = best.info.extra["clip_stats"]
    assert best.config.clip_stats and choice["valid"]["acc"] >= choice["valid"]["acc_transformer"]
    assert choice["weight"] == 0 or best.stats_head.linear.weight.abs().max() > 0  # the saved best model is the mixed one
    val_acc, _, eval_acc, _ = np.loadtxt(exp / "eval_result.csv", delimiter=",")
    assert eval_acc == val_acc  # the eval set is the validation set here


def test_shards_are_refused_up_front(tmp_path):
    (tmp_path / "shards").mkdir()
    cfg = TrainConfig(**toy_train_settings(tmp_path, tmp_path / "exp", data_train=str(tmp_path / "shards"),
                                           clip_stats=True))  # fmt: skip
    with pytest.raises(ConfigError, match="clip_stats needs a training datafile"):
        cfg.check()
