"""The clip-statistics branch: a linear model of the clip's per-band log-mel statistics whose
logits are added to the transformer's.

On a few hundred recordings a transformer trained from nothing sees too little to learn
what the classic baseline reads off at once: the mean and spread of each mel band and of
its frame-to-frame change (a voice's timbre, a drum's spectral shape). The branch gives
the model those same numbers, ``4 x input_fdim`` of them, standardised with the training
set's statistics and weighed by one linear layer. :mod:`ast_audio.train.clipstats` fits it
after the transformer has trained (a convex fit, to convergence) and chooses on the
validation split how much each side counts; that weight is folded into the two heads, so
the model stays one function: ``logits = head(pooled tokens) + branch(input)``.

The statistics are taken over the clip's own frames. A frame whose bins are all equal is
not audio: it is padding (zeros in log-mel, one constant after normalisation), digital
silence (Kaldi's log floor in every bin) or a SpecAugment time mask; such frames are left
out, so a short clip in a long input reads the same as the clip alone.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ClipStatsHead", "clip_statistics", "n_statistics"]


def n_statistics(input_fdim: int) -> int:
    """How many numbers describe a clip: the mean and std of each band and of its difference."""
    return 4 * input_fdim


def clip_statistics(x: torch.Tensor) -> torch.Tensor:
    """``(B, 4F)`` statistics of model inputs ``x`` ``(B, T, F)`` over their audio frames.

    Per band: the mean and standard deviation of the frames, then of the differences of
    consecutive frames (pairs where both are audio). Computed in fp32 whatever ``x`` is.
    An input without two audio frames gives zeros where nothing can be measured.
    """
    x = x.float()
    audio = ~(x == x[..., :1]).all(-1)  # (B, T): False on padding, digital silence and time masks
    mean, std = _weighted_moments(x, audio)
    pairs = audio[:, 1:] & audio[:, :-1]
    d_mean, d_std = _weighted_moments(x[:, 1:] - x[:, :-1], pairs)
    return torch.cat([mean, std, d_mean, d_std], dim=1)


def _weighted_moments(x: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = keep.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
    n = w.sum(1).clamp(min=1.0)
    mean = (x * w).sum(1) / n
    var = ((x - mean.unsqueeze(1)) ** 2 * w).sum(1) / n
    return mean, var.clamp(min=0.0).sqrt()


class ClipStatsHead(nn.Module):
    """``linear((clip_statistics(x) - mean) / std)``: logits ``(B, label_dim)``.

    ``mean`` and ``std`` are buffers (saved with the model); until fitted they are 0 and 1
    and the layer is zero, so the branch adds nothing.
    """

    def __init__(self, input_fdim: int, label_dim: int):
        super().__init__()
        n = n_statistics(input_fdim)
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))
        self.linear = nn.Linear(n, label_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.mean.zero_()
        self.std.fill_(1.0)

    def standardise(self, stats: torch.Tensor) -> torch.Tensor:
        return (stats - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stats = self.standardise(clip_statistics(x))
        return self.linear(stats.to(self.linear.weight.dtype))
