"""The fine-tuning knobs of the trainer: gradient accumulation and checkpointing, frozen
layers and layer-wise lr decay (kept by resume), early stopping, label smoothing, Adam's
weight decay and betas; as flags, config keys and recipe ``--set``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_main
from factories import as_flags, write_toy_dataset
from factories import toy_train_settings as base_args

from ast_audio.errors import ConfigError
from ast_audio.model import ASTModel
from ast_audio.train import parameter_groups, train
from ast_audio.train.config import TrainConfig, load_config_file


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), per_class_train=10, per_class_val=4)


def results(exp: Path) -> np.ndarray:
    return np.loadtxt(exp / "result.csv", delimiter=",", ndmin=2)


def resume_file(exp: Path) -> dict:
    return torch.load(exp / "models" / "last.pt", weights_only=True)


def test_grad_accum_gives_the_result_of_the_whole_batch(toy, tmp_path):
    """30 clips: -b 12 is 12, 12, 6 per step; -b 3 --grad-accum 4 the same clips in chunks of 3."""
    common = dict(n_epochs=2, depth=1, lr=1e-3)
    train(TrainConfig(**base_args(toy, tmp_path / "whole", batch_size=12, **common)))
    out = run_main("train", *as_flags(base_args(toy, tmp_path / "accum", batch_size=3, **common)),
                  "--grad-accum", "4", timeout=240)  # fmt: skip
    assert out.returncode == 0, out.stderr
    whole, accum = results(tmp_path / "whole"), results(tmp_path / "accum")
    np.testing.assert_allclose(accum, whole, rtol=1e-4, atol=1e-5)
    assert resume_file(tmp_path / "accum")["state"]["global_step"] == 2 * 3  # optimiser steps, not micro-batches
    # and it is not vacuous: another batch size trains differently
    train(TrainConfig(**base_args(toy, tmp_path / "small", batch_size=3, **common)))
    assert np.abs(results(tmp_path / "small")[:, 5] - whole[:, 5]).max() > 1e-3


def test_grad_checkpointing_trains_identically(toy, tmp_path):
    train(TrainConfig(**base_args(toy, tmp_path / "plain", n_epochs=1)))
    out = run_main("train", *as_flags(base_args(toy, tmp_path / "ckpt", n_epochs=1)), "--grad-checkpointing", "True",
                  timeout=240)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert '"grad_checkpointing": true' in (tmp_path / "ckpt" / "config.json").read_text()
    np.testing.assert_allclose(results(tmp_path / "ckpt"), results(tmp_path / "plain"), rtol=1e-5, atol=1e-6)


def test_checkpointed_blocks_give_the_same_gradients():
    torch.manual_seed(0)
    model = ASTModel(label_dim=3, fstride=16, tstride=16, input_tdim=64, imagenet_pretrain=False,
                     model_size="tiny224", depth=2, verbose=False)  # fmt: skip
    x = torch.randn(2, 64, 128)
    model(x).square().sum().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)(x).square().sum().backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, plain[name], rtol=1e-5, atol=1e-6)


def test_layer_ids_and_parameter_groups():
    model = ASTModel(label_dim=3, fstride=16, tstride=16, input_tdim=64, imagenet_pretrain=False,
                     model_size="tiny224", depth=3, verbose=False)  # fmt: skip
    ids = model.layer_ids()
    assert ids["v.patch_embed.proj.weight"] == ids["v.pos_embed"] == ids["v.cls_token"] == 0
    assert ids["v.blocks.0.attn.qkv.weight"] == 1 and ids["v.blocks.2.mlp.fc2.bias"] == 3
    assert ids["v.norm.weight"] == ids["mlp_head.1.weight"] == 4
    groups = parameter_groups(model, freeze=1, llrd=0.5)
    assert [g["lr_scale"] for g in groups] == [1.0, 0.5, 0.25]  # head + norm, block 2, block 1
    assert groups[0]["names"] == ["v.norm.weight", "v.norm.bias", "mlp_head.0.weight", "mlp_head.0.bias",
                                  "mlp_head.1.weight", "mlp_head.1.bias"]  # fmt: skip
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, layer in ids.items() if layer <= 1}
    probe = ASTModel.from_config(model.config)
    (group,) = parameter_groups(probe, freeze="all")
    assert group["names"] == [n for n in ids if n.startswith("mlp_head.")] and group["lr_scale"] == 1.0
    assert sum(p.requires_grad for p in probe.parameters()) == 4


def test_freeze_and_llrd_survive_a_resume(toy, tmp_path):
    args = base_args(toy, tmp_path / "a", n_epochs=3, freeze=1, llrd=0.5)
    train(TrainConfig(**args))
    b = tmp_path / "b"
    train(TrainConfig(**{**args, "exp_dir": str(b), "n_epochs": 1}))
    assert resume_file(b)["state"]["epoch"] == 1
    out = run_main("train", *as_flags({**args, "exp_dir": str(b)}), timeout=240)  # resumes after epoch 1
    assert out.returncode == 0, out.stderr
    np.testing.assert_allclose(results(b), results(tmp_path / "a"), rtol=1e-6, atol=1e-7)
    final = resume_file(b)
    groups = final["optimizer"]["param_groups"]
    assert [g["lr_scale"] for g in groups] == [1.0, 0.5]  # head + norm, then block 1 (block 0 frozen)
    assert groups[1]["lr"] == pytest.approx(groups[0]["lr"] * 0.5) and groups[0]["lr"] > 0
    torch.manual_seed(0)  # the run's initialisation: frozen layers kept it
    init = ASTModel(label_dim=3, fstride=16, tstride=16, input_tdim=100, imagenet_pretrain=False,
                    model_size="tiny224", depth=2, verbose=False).state_dict()  # fmt: skip
    for name, value in final["model"].items():
        changed = not torch.equal(value, init[name])
        assert changed == (name.startswith(("v.blocks.1.", "v.norm.", "mlp_head."))), name
    # another freeze in the same folder is refused, naming the setting
    out = run_main("train", *as_flags({**args, "exp_dir": str(b), "freeze": 0}), timeout=60)
    assert out.returncode == 2 and "(freeze: 1 there, 0 now)" in out.stderr


def test_patience_stops_early_and_writes_what_an_ended_run_writes(toy, tmp_path):
    exp = tmp_path / "exp"
    # a tiny lr: accuracy cannot move by 0.5 between epochs, so the run stops after 1 + 2 epochs
    args = base_args(toy, exp, n_epochs=8, lr=1e-7, patience=2, min_delta=0.5, wa=True, wa_start=1, wa_end=8,
                     data_eval=str(toy / "val.json"), depth=1)  # fmt: skip
    out = run_main("train", *as_flags(args), timeout=240)
    assert out.returncode == 0, out.stderr
    assert "stopped after epoch 3: early stopping: acc gained no more than 0.5 on its best in 2 epochs" in out.stdout
    assert results(exp).shape == (3, 10)
    for name in ("wa_result.csv", "eval_result.csv", "curves.png", "models/best_audio_model.safetensors",
                 "models/audio_model_wa.safetensors", "predictions/predictions_eval_set.csv"):  # fmt: skip
        assert (exp / name).exists(), name
    assert "early stopping" in (exp / "log.txt").read_text()
    again = run_main("train", *as_flags(args), timeout=240)  # a stopped run stays stopped
    assert again.returncode == 0 and results(exp).shape == (3, 10)


def test_label_smoothing_weight_decay_and_betas_reach_the_run(toy, tmp_path):
    exp = tmp_path / "exp"
    args = base_args(toy, exp, n_epochs=1, depth=1, label_smoothing=0.2, weight_decay=0.01)
    out = run_main("train", *as_flags(args), "--betas", "0.9,0.98", timeout=240)
    assert out.returncode == 0, out.stderr
    (group,) = resume_file(exp)["optimizer"]["param_groups"]
    assert group["weight_decay"] == 0.01 and tuple(group["betas"]) == (0.9, 0.98)
    train(TrainConfig(**base_args(toy, tmp_path / "plain", n_epochs=1, depth=1, weight_decay=0.01, betas=(0.9, 0.98))))
    smooth, plain = results(exp), results(tmp_path / "plain")
    assert smooth[0, 5] > plain[0, 5] + 0.05  # the smoothed targets cost more to fit
    default = TrainConfig()
    assert (default.weight_decay, default.betas, default.grad_accum, default.freeze, default.llrd) == (
        5e-7, (0.95, 0.999), 1, None, 1.0)  # the original's


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(grad_accum=0), "grad_accum must be a positive integer"),
        (dict(freeze=3), r"freeze must be 0..depth \(2\) or 'all'"),
        (dict(freeze="some"), "freeze must be"),
        (dict(llrd=1.5), r"llrd must be in \(0, 1\]"),
        (dict(label_smoothing=0.1, loss="BCE"), "label_smoothing applies to the CE loss only"),
        (dict(betas=(0.9,)), "betas must be two numbers"),
        (dict(patience=-1), "patience and min_delta must be >= 0"),
        (dict(pool="max"), "pool must be one of cls, mean, got 'max'"),
    ],
)
def test_bad_fine_tuning_settings_are_refused(toy, tmp_path, values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**base_args(toy, tmp_path, **values)).check()


def test_knobs_are_config_keys_and_recipe_sets(tmp_path):
    from ast_audio.recipes import RECIPES, resolve_config

    config = tmp_path / "ft.toml"
    config.write_text('[train]\ngrad_accum = 4\nfreeze = "all"\nllrd = 0.75\nbetas = [0.9, 0.98]\npatience = 3\n')
    cfg = TrainConfig(**load_config_file(config))
    assert (cfg.grad_accum, cfg.freeze, cfg.llrd, cfg.betas, cfg.patience) == (4, "all", 0.75, (0.9, 0.98), 3)
    sets = ["grad_accum=2", "grad_checkpointing=true", "freeze=4", "llrd=0.8", "patience=5", "min_delta=0.01",
            "weight_decay=0.05", "betas=0.9,0.99"]  # fmt: skip
    for name in RECIPES:
        extra = ["label_smoothing=0.1", "loss=CE"]
        train_values, _, _ = resolve_config(name, sets + extra)
        assert train_values["grad_accum"] == 2 and train_values["grad_checkpointing"] is True
        assert train_values["freeze"] == 4 and train_values["betas"] == (0.9, 0.99)
        assert train_values["label_smoothing"] == 0.1 and train_values["min_delta"] == 0.01
    train_values, _, _ = resolve_config("csv", ["freeze=all"])
    assert train_values["freeze"] == "all"


def test_mean_pooling_trains_and_its_checkpoint_keeps_it(toy, tmp_path):
    from ast_audio import load_model

    exp = tmp_path / "mean"
    train(TrainConfig(**base_args(toy, exp, pool="mean", n_epochs=1)))
    model = load_model(exp / "models" / "best_audio_model.safetensors")
    assert model.config.pool == "mean"
    x = torch.randn(2, model.config.input_tdim, 128)
    with torch.no_grad():  # the head reads the patch tokens' mean, not the cls and dist tokens'
        torch.testing.assert_close(model.forward_features(x), model.forward_tokens(x)[:, 2:].mean(dim=1))
