"""Adapting a learned position grid to a new patch grid (AST's rule).

The grid is laid out ``(freq, time)``, as the patch tokens are (frequency rows, time
fastest). Each axis is handled on its own, time first and then frequency: when the new
length is not larger it takes the centred window starting at ``old // 2 - new // 2``;
when it is larger it is bilinearly interpolated (``align_corners=False``). The same rule
serves ImageNet DeiT grids (14x14, 24x24) and AudioSet grids (12x101 at strides 10/10).

:func:`adapt_pos_embed` applies the rule to a stored embedding (loading, and
``ASTModel.set_input_size``); :func:`crop_time` is its time cut in a form a tracer keeps
symbolic (``ASTModel.forward_tokens(..., any_length=True)``, the ONNX dynamic time axis).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NUM_PREFIX_TOKENS = 2  # cls + dist


def resize_grid(grid: torch.Tensor, new_hw: tuple[int, int]) -> torch.Tensor:
    """Resize a ``(1, D, H, W)`` grid to ``new_hw`` by AST's cut-or-interpolate rule."""
    _, _, old_h, old_w = grid.shape
    new_h, new_w = new_hw
    if new_w <= old_w:
        start = old_w // 2 - new_w // 2
        grid = grid[:, :, :, start : start + new_w]
    else:
        grid = F.interpolate(grid, size=(old_h, new_w), mode="bilinear", align_corners=False)
    if new_h <= old_h:
        start = old_h // 2 - new_h // 2
        grid = grid[:, :, start : start + new_h, :]
    else:
        grid = F.interpolate(grid, size=(new_h, new_w), mode="bilinear", align_corners=False)
    return grid


def adapt_pos_embed(
    pos_embed: torch.Tensor, old_hw: tuple[int, int], new_hw: tuple[int, int]
) -> torch.Tensor:
    """Map a ``(1, 2 + H*W, D)`` position embedding on an ``old_hw`` grid to ``new_hw``.

    The two token positions (cls, dist) are kept in front unchanged.
    """
    old_h, old_w = old_hw
    n_tokens, dim = pos_embed.shape[1], pos_embed.shape[2]
    assert n_tokens == NUM_PREFIX_TOKENS + old_h * old_w, (n_tokens, old_hw)
    if tuple(old_hw) == tuple(new_hw):
        return pos_embed.clone()
    prefix = pos_embed[:, :NUM_PREFIX_TOKENS]
    grid = pos_embed[:, NUM_PREFIX_TOKENS:].transpose(1, 2).reshape(1, dim, old_h, old_w)  # (1, D, H, W)
    grid = resize_grid(grid.float(), new_hw).to(pos_embed.dtype)
    grid = grid.reshape(1, dim, new_hw[0] * new_hw[1]).transpose(1, 2)  # (1, H'*W', D)
    return torch.cat([prefix, grid], dim=1)


def crop_time(pos_embed: torch.Tensor, grid_hw: tuple[int, int], new_w: int, at: str = "centre") -> torch.Tensor:
    """The rule's cut along time only (``new_w <= W``), written so that a tracer keeps ``new_w``
    symbolic: a ``(1, 2 + H*W, D)`` embedding on ``grid_hw`` -> ``(1, 2 + H*new_w, D)``.

    Equals ``adapt_pos_embed(pos_embed, (H, W), (H, new_w))`` for every ``new_w <= W``.
    ``at="start"`` takes the first ``new_w`` columns instead of the centred window: where a
    short input must see the positions its start has when it is padded to ``W`` columns
    (training on length-bucketed batches, evaluated padded to the full length).
    """
    old_h, old_w = grid_hw
    dim = pos_embed.shape[2]
    start = 0 if at == "start" else old_w // 2 - new_w // 2
    grid = pos_embed[:, NUM_PREFIX_TOKENS:].reshape(1, old_h, old_w, dim)  # (1, H, W, D)
    grid = grid[:, :, start : start + new_w].reshape(1, -1, dim)  # (1, H*new_w, D)
    return torch.cat([pos_embed[:, :NUM_PREFIX_TOKENS], grid], dim=1)
