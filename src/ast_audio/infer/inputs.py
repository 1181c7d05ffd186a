"""What the tagger accepts, normalised: paths and waveforms in, mono waveforms at a rate out.

A path is decoded by :func:`~ast_audio.audio.io.load_audio` (mono, resampled); a waveform
``[samples]`` comes with its sample rate and is checked (not empty, finite) and
resampled. A batch ``[n, samples]`` or a list gives a list of results, one input one
result.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..audio.io import load_audio, resample
from ..errors import ConfigError

__all__ = ["Audio", "Input", "as_inputs", "load_input", "one_or_list"]

Audio = str | os.PathLike | np.ndarray | torch.Tensor


@dataclass(frozen=True)
class Input:
    """One input: a path or a waveform ``[samples]`` at ``sample_rate``."""

    path: str | None
    waveform: torch.Tensor | None = None
    sample_rate: int | None = None


def as_inputs(audio: Audio | Sequence[Audio], sample_rate: int | None) -> tuple[list[Input], bool]:
    """Normalise the accepted inputs; ``single`` says whether one result (not a list) is returned."""

    def one(obj) -> Input:
        if isinstance(obj, str | os.PathLike):
            return Input(os.fspath(obj))
        if isinstance(obj, np.ndarray | torch.Tensor):
            if sample_rate is None:
                raise ConfigError("a waveform needs its sample_rate")
            wave = torch.as_tensor(obj).detach().cpu().float()
            if wave.dim() != 1:
                raise ConfigError(f"a waveform must be [samples], got shape {tuple(wave.shape)}")
            return Input(None, wave, int(sample_rate))
        raise ConfigError(f"audio must be a path or a waveform, got {type(obj).__name__}")

    if isinstance(audio, np.ndarray | torch.Tensor) and audio.ndim == 2:
        return [one(row) for row in audio], False
    if isinstance(audio, list | tuple):
        return [one(obj) for obj in audio], False
    return [one(audio)], True


def load_input(item: Input, rate: int) -> torch.Tensor:
    """The input's mono waveform ``[samples]`` at ``rate``."""
    if item.path is not None:
        return load_audio(item.path, sample_rate=rate)
    wave = item.waveform
    assert wave is not None and item.sample_rate is not None
    if wave.numel() == 0:
        raise ConfigError("empty waveform (no samples)")
    if not torch.isfinite(wave).all():
        raise ConfigError("waveform contains NaN or Inf samples")
    return resample(wave, item.sample_rate, rate) if item.sample_rate != rate else wave


def one_or_list(out: list, single: bool):
    """One result (``None`` if it failed) for a single input, else the list."""
    return (out[0] if out else None) if single else out
