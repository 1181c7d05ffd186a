"""Where the model looks: attention rollout or the last layer's attention, on the patch grid
and spread back onto the model input's ``(frames, mel bins)``.

Rollout follows Abnar and Zuidema (2020): per layer the heads are averaged, the identity
added and rows renormalised, and the layers multiplied through. Drawing the result is
:func:`ast_audio.base.plots.plot_attention`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base.checks import check_number
from ..errors import ConfigError
from ..features.kaldi import frame_sizes
from ..model.ast import PATCH, ASTModel
from .inputs import as_inputs, load_input
from .results import AttentionMap, top_labels

__all__ = ["METHODS", "attention_grid", "grid_to_frames", "window_attention"]

METHODS = ("rollout", "last")


def attention_grid(
    model: ASTModel, x: torch.Tensor, method: str = "rollout"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[B, label_dim]`` and the attention of the ``cls``/``dist`` tokens on the patches
    as ``[B, f_dim, t_dim]`` for model input ``x`` ``[B, T, F]``.

    ``method="rollout"``: per layer the heads are averaged, the identity added and rows
    renormalised (``(A + I) / 2``); the layers are multiplied (last @ ... @ first) and the
    rows of the two tokens averaged. ``method="last"``: the last layer's head-averaged
    attention of the two tokens. Rows are not rescaled (rollout rows sum to 1 over all
    tokens, the two token columns included).
    """
    if method not in METHODS:
        raise ConfigError(f"unknown attention method {method!r}; choose 'rollout' or 'last'")
    logits, maps = model.attention_maps(x)
    if method == "last":
        joint = maps[-1].float().mean(dim=1)  # (B, N, N)
    else:
        n = maps[0].shape[-1]
        eye = torch.eye(n, device=x.device)
        joint = eye.expand(x.shape[0], n, n)
        for attn in maps:
            a = attn.float().mean(dim=1) + eye  # (B, N, N)
            a = a / a.sum(dim=-1, keepdim=True)
            joint = a @ joint
    to_patches = joint[:, :2, 2:].mean(dim=1)  # (B, f*t): cls and dist rows
    f_dim, t_dim = model.config.grid
    return logits, to_patches.reshape(-1, f_dim, t_dim)  # (B, f, t)


def grid_to_frames(grid: torch.Tensor, model: ASTModel) -> torch.Tensor:
    """Spread a patch-grid map ``[B, f_dim, t_dim]`` onto the input ``[B, frames, mel bins]``.

    Each patch's value covers its 16x16 receptive field; where patches overlap (strides
    below 16) the values are averaged; frames and bins no patch sees get 0.
    """
    cfg = model.config
    stride = (cfg.fstride, cfg.tstride)
    ones = grid.new_ones(1, 1, PATCH, PATCH)
    x = grid.unsqueeze(1).float()  # (B, 1, f, t)
    total = F.conv_transpose2d(x, ones, stride=stride)  # (B, 1, F', T'): sum of covering patches
    count = F.conv_transpose2d(torch.ones_like(x[:1]), ones, stride=stride)  # (1, 1, F', T')
    spread = total / count.clamp_min(1.0)
    pad_f, pad_t = cfg.input_fdim - spread.shape[-2], cfg.input_tdim - spread.shape[-1]
    spread = F.pad(spread, (0, pad_t, 0, pad_f))  # (B, 1, F, T)
    return spread[:, 0].transpose(1, 2)  # (B, T, F)


def window_attention(tagger, audio, sample_rate, start: float, method: str, top_k: int, m) -> AttentionMap:
    """What :meth:`AudioTagger.attention <ast_audio.infer.AudioTagger.attention>` returns for
    member ``m`` of ``tagger``: its model input, attention and top labels for one model window."""
    inputs, single = as_inputs(audio, sample_rate)
    if not single:
        raise ConfigError("attention takes one recording")
    wave = load_input(inputs[0], m.rate)
    a = min(round(check_number(start, "start", low=0, unit="seconds") * m.rate), max(0, len(wave) - 1))
    chunk = wave[a : a + m.window]
    x = tagger._model_input(m, [chunk])  # (1, T, F)
    with torch.inference_mode(), tagger._autocast():
        logits, grid = attention_grid(m.model, x, method)
        spread = grid_to_frames(grid, m.model)  # (1, T, F)
        scores = m.probs(logits)[0].float().cpu().numpy()
    return AttentionMap(
        inputs[0].path, a / m.rate, (a + len(chunk)) / m.rate, method, x[0].float().cpu().numpy(),
        grid[0].float().cpu().numpy(), spread[0].float().cpu().numpy(), top_labels(scores, tagger.labels, top_k),
        frame_sizes(m.rate)[1] / m.rate,
    )  # fmt: skip
