"""Training-time augmentation of the original recipes, batched where it can be.

Order, as in the original data loader: mixup on waveforms -> fbank -> SpecAugment on
the un-normalised features (fill value 0) -> normalisation -> optional noise + roll.

Every function draws from a ``numpy.random.Generator`` that the caller owns, so a run
is reproducible from its seed and per-worker generators stay independent.
"""

from __future__ import annotations

import numpy as np
import torch

MIXUP_ALPHA = 10.0  # lambda ~ Beta(10, 10)


def mask_bounds(rng: np.random.Generator, size: int, max_width: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` masks ``[start, end)`` on an axis of ``size``: integer width uniform in
    [0, max_width), start uniform over the positions where it fits."""
    width = np.minimum((rng.random(count) * max_width).astype(np.int64), size)
    start = (rng.random(count) * (size - width + 1)).astype(np.int64)
    return start, start + width


def spec_augment(features: torch.Tensor, freqm: int, timem: int, rng: np.random.Generator) -> torch.Tensor:
    """One frequency mask (width < ``freqm``) and one time mask (width < ``timem``) per clip,
    filled with 0, on ``[T, F]`` or ``[B, T, F]`` features. Returns a new tensor."""
    x = features.unsqueeze(0) if features.dim() == 2 else features  # (B, T, F)
    batch, frames, bins = x.shape
    keep = torch.ones_like(x, dtype=torch.bool)
    if freqm > 0:
        f0, f1 = (torch.from_numpy(a).to(x.device) for a in mask_bounds(rng, bins, freqm, batch))
        f = torch.arange(bins, device=x.device)
        keep &= ~((f >= f0[:, None]) & (f < f1[:, None]))[:, None, :]  # (B, 1, F)
    if timem > 0:
        t0, t1 = (torch.from_numpy(a).to(x.device) for a in mask_bounds(rng, frames, timem, batch))
        t = torch.arange(frames, device=x.device)
        keep &= ~((t >= t0[:, None]) & (t < t1[:, None]))[:, :, None]  # (B, T, 1)
    out = x * keep
    return out[0] if features.dim() == 2 else out


def mixup_lambda(rng: np.random.Generator) -> float:
    return float(rng.beta(MIXUP_ALPHA, MIXUP_ALPHA))


def mix_waveforms(first: torch.Tensor, second: torch.Tensor, lam: float) -> torch.Tensor:
    """``lam * first + (1 - lam) * second`` with both mean-removed, ``second`` padded with
    zeros or cut to ``first``'s length, and the mixture's mean removed again."""
    first = first - first.mean()
    second = second - second.mean()
    n = first.shape[-1]
    if second.shape[-1] < n:
        second = torch.nn.functional.pad(second, (0, n - second.shape[-1]))
    else:
        second = second[..., :n]
    mixed = lam * first + (1.0 - lam) * second
    return mixed - mixed.mean()


def mix_targets(first: np.ndarray, second: np.ndarray, lam: float) -> np.ndarray:
    return lam * first + (1.0 - lam) * second


def noise_and_roll(features: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """The original's ``noise`` option on normalised ``[T, F]`` or ``[B, T, F]`` features:
    add ``uniform(0,1) * u / 10`` per bin (``u`` uniform per clip), then roll the time
    axis by a shift uniform in [-10, 10)."""
    x = features.unsqueeze(0) if features.dim() == 2 else features  # (B, T, F)
    batch, frames, _ = x.shape
    scale = torch.from_numpy(rng.random(batch) / 10).to(x)  # (B,)
    noise = torch.from_numpy(rng.random(tuple(x.shape))).to(x)  # (B, T, F)
    x = x + noise * scale[:, None, None]
    shift = torch.from_numpy(rng.integers(-10, 10, size=batch)).to(x.device)  # (B,)
    index = (torch.arange(frames, device=x.device)[None, :] - shift[:, None]) % frames  # (B, T)
    out = torch.gather(x, 1, index[:, :, None].expand_as(x))  # torch.roll per clip
    return out[0] if features.dim() == 2 else out
