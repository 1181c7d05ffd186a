"""SSAST's self-supervised checkpoints, built in their published key layout: load, re-grid, fine-tune."""

from __future__ import annotations

import pytest
import torch
from conftest import ok, run_main
from factories import as_flags, ssast_state, write_toy_dataset
from factories import toy_train_settings as base_args

from ast_audio import load_model
from ast_audio.checkpoints.hub import REGISTRY
from ast_audio.errors import CheckpointError
from ast_audio.features.presets import PRESETS


@pytest.fixture(scope="module")
def ssast(tmp_path_factory):
    """A tiny SSAST-Tiny-Patch checkpoint (192 wide, 2 blocks, 8x64 grid) and its state."""
    state = ssast_state()
    path = tmp_path_factory.mktemp("ssast") / "SSAST-Tiny-Patch-400.pth"
    torch.save(state, path)
    return path, state


def test_loads_with_its_pretraining_architecture_and_a_fresh_head(ssast):
    path, state = ssast
    model = load_model(path, label_dim=10)
    cfg = model.config
    assert (cfg.model_size, cfg.depth, cfg.fstride, cfg.tstride) == ("tiny224", 2, 16, 16)
    assert (cfg.input_fdim, cfg.input_tdim, cfg.grid, cfg.label_dim) == (128, 1024, (8, 64), 10)
    assert model.info.labels is None and model.info.extra == {"pretraining": "ssast"}
    # pretrained on AudioSet + Librispeech with AudioSet's statistics
    assert (model.info.dataset_mean, model.info.dataset_std) == (PRESETS["audioset"].mean, PRESETS["audioset"].std)
    ours = model.state_dict()
    for key in ("v.cls_token", "v.dist_token", "v.pos_embed", "v.patch_embed.proj.weight", "v.blocks.1.mlp.fc2.weight"):
        torch.testing.assert_close(ours[key], state["module." + key], rtol=0, atol=0)
    assert not any(k.startswith(("cpredlayer", "gpredlayer", "mask_embed", "p_input")) for k in ours)
    x = torch.randn(2, 1024, 128)
    with torch.no_grad():
        assert model(x).shape == (2, 10)


def test_position_grid_follows_the_cut_or_interpolate_rule(ssast):
    path, state = ssast
    pos = state["module.v.pos_embed"][:, 2:].reshape(1, 8, 64, 192)  # frequency rows, time fastest
    shorter = load_model(path, label_dim=3, input_tdim=256)  # 64 -> 16 columns: the centre ones
    assert shorter.config.grid == (8, 16)
    got = shorter.v.pos_embed.detach()
    torch.testing.assert_close(got[:, :2], state["module.v.pos_embed"][:, :2], rtol=0, atol=0)
    torch.testing.assert_close(got[:, 2:].reshape(1, 8, 16, 192), pos[:, :, 24:40], rtol=0, atol=0)
    overlapping = load_model(path, label_dim=3, fstride=10, tstride=10, input_tdim=128)  # 8 -> 12 rows: interpolated
    assert overlapping.config.grid == (12, 12) and overlapping.v.pos_embed.shape == (1, 2 + 144, 192)
    with torch.no_grad():
        assert overlapping(torch.randn(1, 128, 128)).shape == (1, 3)


def test_frame_based_and_single_token_checkpoints_are_refused_clearly(tmp_path):
    frame = tmp_path / "SSAST-Tiny-Frame-400.pth"
    torch.save(ssast_state(patch=(128, 2)), frame)
    with pytest.raises(CheckpointError, match="128x2 patches.*not supported"):
        load_model(frame)
    out = run_main("info", frame, timeout=120)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert str(frame) in out.stderr and "frame-based" in out.stderr
    nokd = tmp_path / "nokd.pth"
    torch.save(ssast_state(tokens=1), nokd)
    with pytest.raises(CheckpointError, match="one class token"):
        load_model(nokd)


def test_published_names_resolve_from_the_cache(ssast, ast_home):
    path, _ = ssast
    entry = REGISTRY["SSAST-Tiny-Patch-400"]
    assert entry.url == "https://www.dropbox.com/s/fkbtf78y94113wz/SSAST-Tiny-Patch-400.pth?dl=1"
    assert not any(e.name.startswith("SSAST") and "Frame" in e.name for e in REGISTRY.values())
    (ast_home / entry.filename).write_bytes(path.read_bytes())
    model = load_model("SSAST-Tiny-Patch-400", label_dim=4)
    assert model.config.grid == (8, 64) and model.config.label_dim == 4
    listing = ok(run_main("checkpoints", AST_AUDIO_HOME=ast_home)).stdout
    for name in ("SSAST-Base-Patch-400", "SSAST-Base-Patch-250", "SSAST-Small-Patch-400"):
        assert name in listing
    tiny = next(line for line in listing.splitlines() if line.startswith("SSAST-Tiny-Patch-400"))
    assert "tiny224" in tiny and "cached" in tiny


def test_fine_tunes_from_ssast_with_train(ssast, tmp_path):
    path, state = ssast
    toy = write_toy_dataset(tmp_path / "toy", per_class_train=4, per_class_val=2)
    exp = tmp_path / "exp"
    args = base_args(toy, exp, n_epochs=1, lr=1e-6, batch_size=6, audioset_pretrain=str(path))
    ok(run_main("train", *as_flags(args), timeout=240))
    tuned = load_model(exp / "models" / "best_audio_model.safetensors")
    assert tuned.config.grid == (8, 6) and tuned.info.labels == ["low tone", "high tone", "noise"]
    # the trunk started from SSAST's weights (a step of lr 1e-6 moves them by ~1e-6; a random
    # init differs by ~0.05), positions cut to the 6 centre columns of the 64
    trunk = tuned.state_dict()
    for key in ("v.blocks.0.attn.qkv.weight", "v.norm.weight", "v.patch_embed.proj.weight"):
        torch.testing.assert_close(trunk[key], state["module." + key], rtol=0, atol=1e-4)
    pos = state["module.v.pos_embed"][:, 2:].reshape(1, 8, 64, 192)[:, :, 29:35]
    torch.testing.assert_close(trunk["v.pos_embed"][:, 2:].reshape(1, 8, 6, 192), pos, rtol=0, atol=1e-4)
