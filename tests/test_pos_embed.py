"""The position-embedding rule (SPEC §1) checked against an element-by-element reading of it."""

import math

import pytest
import torch
from factories import deit_state, original_audioset_state, tiny_ast

from ast_audio import ASTModel, ConfigError
from ast_audio.checkpoints import export_original


def lerp_axis(values: list[torch.Tensor], new_len: int) -> list[torch.Tensor]:
    """1-D linear interpolation with half-pixel centres (bilinear, align_corners=False)."""
    old_len = len(values)
    out = []
    for i in range(new_len):
        x = max((i + 0.5) * old_len / new_len - 0.5, 0.0)
        lo = min(int(math.floor(x)), old_len - 1)
        hi = min(lo + 1, old_len - 1)
        w = x - lo
        out.append(values[lo] * (1 - w) + values[hi] * w)
    return out


def expected_grid(src: torch.Tensor, old_hw, new_hw) -> torch.Tensor:
    """src: (H*W, D) in row-major (freq, time) order -> (H'*W', D) by the rule, time first."""
    old_h, old_w = old_hw
    new_h, new_w = new_hw
    rows = [[src[r * old_w + c] for c in range(old_w)] for r in range(old_h)]
    if new_w <= old_w:
        start = old_w // 2 - new_w // 2
        rows = [row[start : start + new_w] for row in rows]
    else:
        rows = [lerp_axis(row, new_w) for row in rows]
    cols = [[rows[r][c] for r in range(old_h)] for c in range(new_w)]
    if new_h <= old_h:
        start = old_h // 2 - new_h // 2
        cols = [col[start : start + new_h] for col in cols]
    else:
        cols = [lerp_axis(col, new_h) for col in cols]
    return torch.stack([cols[c][r] for r in range(new_h) for c in range(new_w)])


@pytest.mark.parametrize("input_tdim, input_fdim", [(100, 128), (1024, 128), (160, 300), (64, 64)])
def test_imagenet_init_follows_the_rule(tmp_path, input_tdim, input_fdim):
    sd = deit_state(side=14, depth=2)
    path = tmp_path / "deit_tiny.pth"
    torch.save({"model": sd}, path)  # facebookresearch/deit files wrap the state dict
    model = ASTModel(
        label_dim=4, input_tdim=input_tdim, input_fdim=input_fdim, imagenet_pretrain=str(path),
        model_size="tiny224", verbose=False, depth=2,
    )  # fmt: skip
    f_dim, t_dim = model.config.grid
    got = model.v.pos_embed.detach()[0]
    torch.testing.assert_close(got[:2], sd["pos_embed"][0, :2])
    want = expected_grid(sd["pos_embed"][0, 2:], (14, 14), (f_dim, t_dim))
    torch.testing.assert_close(got[2:], want, atol=1e-5, rtol=0)  # float32 rounding of the interpolation weights
    # RGB projection summed to one channel, bias kept
    torch.testing.assert_close(model.v.patch_embed.proj.weight, sd["patch_embed.proj.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(model.v.patch_embed.proj.bias, sd["patch_embed.proj.bias"])
    torch.testing.assert_close(model.v.blocks[1].mlp.fc2.weight, sd["blocks.1.mlp.fc2.weight"])


def test_without_imagenet_positions_are_truncated_normal():
    model = ASTModel(input_tdim=1024, imagenet_pretrain=False, model_size="tiny224", verbose=False, depth=1)
    pos = model.v.pos_embed.detach()
    assert abs(pos.std().item() - 0.02) < 0.002 and pos.abs().max() <= 2.0


@pytest.mark.parametrize(
    "input_tdim, input_fdim, fstride, tstride",
    [(512, 128, 10, 10), (1024, 128, 10, 10), (2048, 128, 10, 10), (512, 64, 10, 10), (400, 256, 10, 10), (512, 128, 12, 12)],
)
def test_audioset_init_follows_the_rule(tmp_path, input_tdim, input_fdim, fstride, tstride):
    sd = original_audioset_state(depth=2)
    path = tmp_path / "audioset_10_10_0.4593.pth"
    torch.save(sd, path)
    model = ASTModel(
        label_dim=50, fstride=fstride, tstride=tstride, input_fdim=input_fdim, input_tdim=input_tdim,
        audioset_pretrain=str(path), model_size="tiny224", verbose=False, depth=2,
    )  # fmt: skip
    f_dim, t_dim = model.config.grid
    got = model.v.pos_embed.detach()[0]
    src = sd["module.v.pos_embed"][0]
    torch.testing.assert_close(got[:2], src[:2])
    torch.testing.assert_close(got[2:], expected_grid(src[2:], (12, 101), (f_dim, t_dim)), atol=1e-5, rtol=0)  # float32 rounding of the interpolation weights
    assert model.v.patch_embed.proj.stride == (fstride, tstride)
    torch.testing.assert_close(model.v.patch_embed.proj.weight, sd["module.v.patch_embed.proj.weight"])
    assert model.mlp_head[1].weight.shape == (50, 192)  # a new head for the new task
    assert model.info.dataset_mean == pytest.approx(-4.2677393)
    with torch.no_grad():
        assert model(torch.randn(1, input_tdim, input_fdim)).shape == (1, 50)


def test_audioset_init_same_grid_keeps_the_weights_exactly(tmp_path):
    source = tiny_ast(label_dim=527, input_tdim=1024)
    path = export_original(source, tmp_path / "audioset_10_10_0.4495.pth")
    model = ASTModel(label_dim=527, audioset_pretrain=str(path), model_size="tiny224", verbose=False, depth=2)
    for key, value in source.v.state_dict().items():
        torch.testing.assert_close(model.v.state_dict()[key], value, atol=0, rtol=0)


def test_audioset_init_refuses_inputs_smaller_than_a_patch(tmp_path):
    path = tmp_path / "audioset_10_10_0.4593.pth"
    torch.save(original_audioset_state(depth=2), path)
    with pytest.raises(ConfigError, match="input_fdim=8 is shorter than one 16x16 patch"):
        ASTModel(input_fdim=8, audioset_pretrain=str(path), model_size="tiny224", verbose=False, depth=2)


def test_audioset_init_refuses_another_width(tmp_path):
    path = tmp_path / "audioset_10_10_0.4593.pth"
    torch.save(original_audioset_state(depth=2), path)
    with pytest.raises(Exception, match=r"embedding dimension is 192 \(tiny224\) but the model's is 384"):
        ASTModel(audioset_pretrain=str(path), model_size="small224", verbose=False, depth=2)


@pytest.mark.parametrize("grid", [(12, 101), (3, 8), (1, 5)])
def test_crop_time_is_the_rules_time_cut(grid):
    """The traceable cut (``any_length`` forward, ONNX dynamic time) equals the rule for every shorter width."""
    from ast_audio.model.pos_embed import adapt_pos_embed, crop_time

    f_dim, t_dim = grid
    pos = torch.randn(1, 2 + f_dim * t_dim, 8)
    for new_w in range(1, t_dim + 1):
        got = crop_time(pos, grid, new_w)
        torch.testing.assert_close(got, adapt_pos_embed(pos, grid, (f_dim, new_w)), atol=0, rtol=0)
        torch.testing.assert_close(got[0, 2:], expected_grid(pos[0, 2:], grid, (f_dim, new_w)), atol=0, rtol=0)
