"""The input contract, and one clip's model input.

:class:`InputContract` is what a checkpoint takes (rate, mono policy, bins, frames,
length, statistics, activation, calibrated thresholds). ``waveform_to_input`` is what
AST's data loader does to one clip (remove the mean, fbank, pad or cut to
``target_length``, normalise); the batched pipeline of training, evaluation and inference
(:mod:`ast_audio.features.pipeline`) equals it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..audio.io import load_audio, resample
from ..base.checks import is_number
from ..errors import ConfigError
from .kaldi import fbank, frame_sizes
from .presets import PRESETS

__all__ = ["InputContract", "file_to_input", "normalize", "pad_or_cut", "waveform_to_input"]

MONO_POLICIES = ("mean",)  # how channels become one: their mean (the original took channel 0)
ACTIVATIONS = ("sigmoid", "softmax")


@dataclass(frozen=True)
class InputContract:
    """Everything that turns audio into a model's input and its outputs into scores.

    A checkpoint carries one (the way Hugging Face keeps ``preprocessor_config.json``
    beside the weights): training writes it, and evaluation, the tagger, every recipe's
    prediction step and export read it back instead of deciding again. Defaults are
    AudioSet's.
    """

    sample_rate: int = 16000
    mono: str = "mean"
    num_mel_bins: int = 128
    frame_length: float = 25.0  # ms
    frame_shift: float = 10.0  # ms
    target_length: int = PRESETS["audioset"].target_length  # frames fed to the model
    mean: float = PRESETS["audioset"].mean  # normalisation: (x - mean) / (2 * std)
    std: float = PRESETS["audioset"].std
    activation: str = "sigmoid"  # sigmoid (multi-label) | softmax (single-label)
    resample: bool = True  # False: features at each file's own rate (the "hack" fork's way); see pipeline
    thresholds: tuple[float, ...] | None = None  # per-class decision thresholds (ast-audio calibrate)
    normalize: bool = True  # a usage switch, not part of the saved contract

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.num_mel_bins < 3 or self.target_length < 1:
            raise ConfigError(
                f"bad feature config: sample_rate={self.sample_rate}, num_mel_bins={self.num_mel_bins}, "
                f"target_length={self.target_length}"
            )
        for name in ("mean", "std", "frame_length", "frame_shift"):
            value = getattr(self, name)
            if not is_number(value) or not np.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
        if self.normalize and not self.std > 0:
            raise ConfigError(f"normalisation std must be positive, got {self.std}")
        if self.mono not in MONO_POLICIES:
            raise ConfigError(f"mono policy must be one of {', '.join(MONO_POLICIES)}, got {self.mono!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        frame_sizes(self.sample_rate, self.frame_length, self.frame_shift)  # raises on a degenerate frame
        if self.thresholds is not None:  # a JSON list read back: one hashable, comparable form
            object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))

    @classmethod
    def preset(cls, name: str, **overrides: object) -> InputContract:
        """The contract of a dataset of the original recipes (``audioset``, ``esc50``, ``speechcommands``)."""
        if name not in PRESETS:
            raise ConfigError(f"unknown feature preset {name!r}; known: {', '.join(sorted(PRESETS))}")
        p = PRESETS[name]
        fields = dict(
            sample_rate=p.sample_rate,
            num_mel_bins=p.num_mel_bins,
            target_length=p.target_length,
            mean=p.mean,
            std=p.std,
            activation="sigmoid" if p.multilabel else "softmax",
        )
        fields.update(overrides)
        return cls(**fields)  # type: ignore[arg-type]

    @property
    def window(self) -> tuple[int, int]:
        """``(window_size, window_shift)`` in samples."""
        size, shift, _ = frame_sizes(self.sample_rate, self.frame_length, self.frame_shift)
        return size, shift

    @property
    def samples(self) -> int:
        """Samples that make exactly ``target_length`` frames (one model input)."""
        size, shift = self.window
        return size + (self.target_length - 1) * shift

    def to_dict(self) -> dict:
        """The saved form (``normalize`` is a usage switch and is left out)."""
        out = dataclasses.asdict(self)
        del out["normalize"]
        if out["thresholds"] is not None:
            out["thresholds"] = list(out["thresholds"])
        return out

    @classmethod
    def from_dict(cls, data: dict) -> InputContract:
        known = {f.name for f in dataclasses.fields(cls)} - {"normalize"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown input contract keys: {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes: object) -> InputContract:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]



def pad_or_cut(features: torch.Tensor, target_length: int) -> torch.Tensor:
    """Pad with zero frames or cut at the end so the time axis (``-2``) is ``target_length``."""
    difference = target_length - features.shape[-2]
    if difference > 0:
        return F.pad(features, (0, 0, 0, difference))  # (..., target_length, F)
    return features[..., :target_length, :]


def normalize(features: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """AST's normalisation ``(x - mean) / (2 * std)``."""
    return (features - mean).div_(2.0 * std)


def waveform_to_input(
    waveform: torch.Tensor | np.ndarray,
    cfg: InputContract | None = None,
    *,
    sample_rate: int | None = None,
    normalized: bool | None = None,
) -> torch.Tensor:
    """AST's model input from ``[samples]`` -> ``[T, F]`` or ``[batch, samples]`` -> ``[batch, T, F]``.

    The one path from waveform to model for training, evaluation and inference.

    Removes each clip's mean, computes ``fbank``, pads or cuts to ``cfg.target_length``
    and normalises with ``cfg.mean``/``cfg.std`` (unless ``cfg.normalize`` is false or
    ``normalized=False``: augmentation such as SpecAugment goes between the
    un-normalised features and ``normalize``). A waveform at another ``sample_rate`` is
    resampled first (on the CPU, with soxr).
    """
    cfg = cfg or InputContract()
    waveform = torch.as_tensor(waveform)
    if sample_rate is not None and sample_rate != cfg.sample_rate:
        waveform = resample(waveform, sample_rate, cfg.sample_rate)
    waveform = waveform - waveform.mean(-1, keepdim=True)  # per clip
    features = fbank(waveform, cfg.sample_rate, cfg.num_mel_bins, cfg.frame_shift, cfg.frame_length)  # (..., T', F)
    features = pad_or_cut(features, cfg.target_length)  # (..., target_length, F)
    do_normalize = cfg.normalize if normalized is None else normalized
    return normalize(features, cfg.mean, cfg.std) if do_normalize else features


def file_to_input(
    path: str | os.PathLike,
    cfg: InputContract | None = None,
    *,
    device: torch.device | str | None = None,
    normalized: bool | None = None,
) -> torch.Tensor:
    """``load_audio`` (mono, resampled to ``cfg.sample_rate``) then ``waveform_to_input``: ``[T, F]``."""
    cfg = cfg or InputContract()
    waveform = load_audio(path, sample_rate=cfg.sample_rate)
    if device is not None:
        waveform = waveform.to(device)
    return waveform_to_input(waveform, cfg, normalized=normalized)
