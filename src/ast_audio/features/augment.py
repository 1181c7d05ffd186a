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


def draw_masks(rng: np.random.Generator, frames: int, bins: int, freqm: int, timem: int, count: int) -> np.ndarray:
    """SpecAugment's masks for ``count`` clips: ``[count, 4]`` int64 rows ``(f0, f1, t0, t1)``
    (an empty ``[0, 0)`` mask where ``freqm`` or ``timem`` is 0). Frequency first, then time:
    the order in which the generator is drawn from is part of a run's reproducibility."""
    out = np.zeros((count, 4), dtype=np.int64)
    if freqm > 0:
        out[:, 0], out[:, 1] = mask_bounds(rng, bins, freqm, count)
    if timem > 0:
        out[:, 2], out[:, 3] = mask_bounds(rng, frames, timem, count)
    return out


def apply_masks(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Zero ``[f0, f1)`` bins and ``[t0, t1)`` frames of ``[B, T, F]`` features, per clip
    (``masks`` ``[B, 4]``, see :func:`draw_masks`). Returns a new tensor."""
    _, frames, bins = features.shape
    masks = masks.to(features.device)
    f = torch.arange(bins, device=features.device)
    t = torch.arange(frames, device=features.device)
    in_f = (f >= masks[:, 0:1]) & (f < masks[:, 1:2])  # (B, F)
    in_t = (t >= masks[:, 2:3]) & (t < masks[:, 3:4])  # (B, T)
    keep = ~(in_t[:, :, None] | in_f[:, None, :])  # (B, T, F)
    return features * keep


def spec_augment(features: torch.Tensor, freqm: int, timem: int, rng: np.random.Generator) -> torch.Tensor:
    """One frequency mask (width < ``freqm``) and one time mask (width < ``timem``) per clip,
    filled with 0, on ``[T, F]`` or ``[B, T, F]`` features. Returns a new tensor."""
    x = features.unsqueeze(0) if features.dim() == 2 else features  # (B, T, F)
    batch, frames, bins = x.shape
    out = apply_masks(x, torch.from_numpy(draw_masks(rng, frames, bins, freqm, timem, batch)))
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
    batch = x.shape[0]
    scale = torch.from_numpy(rng.random(batch) / 10).to(x)  # (B,)
    noise = torch.from_numpy(rng.random(tuple(x.shape))).to(x)  # (B, T, F)
    shift = torch.from_numpy(rng.integers(-10, 10, size=batch))  # (B,)
    out = add_noise_and_roll(x, noise, scale, shift)
    return out[0] if features.dim() == 2 else out


def add_noise_and_roll(x: torch.Tensor, noise: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``x + noise * scale`` rolled along time by ``shift`` per clip (``x``, ``noise``
    ``[B, T, F]``; ``scale``, ``shift`` ``[B]``)."""
    frames = x.shape[1]
    x = x + noise * scale.to(x)[:, None, None]
    index = (torch.arange(frames, device=x.device)[None, :] - shift.to(x.device)[:, None]) % frames  # (B, T)
    return torch.gather(x, 1, index[:, :, None].expand_as(x))  # torch.roll per clip
