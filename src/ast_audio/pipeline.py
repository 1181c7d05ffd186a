"""The one batched feature pipeline: waveforms and drawn augmentation in, model input out.

Every consumer of model input goes through here: the training and evaluation datasets
(in the loader's ``collate`` on the CPU, or per batch on the model's device), the
tagger's windows, the recipes' prediction steps, the demo and export's checks. The
steps, in the original data loader's order:

1. per clip (:func:`fit_waveform`): remove the mean over the whole clip, then pad with
   zeros or cut so that the waveform holds exactly ``target_length`` frames;
2. per clip (:func:`draw_augmentation`): draw SpecAugment's masks and the noise
   parameters from the clip's own generator (mixup happens before, on waveforms);
3. per batch (:func:`batch_input`): Kaldi fbank, zero the frames that only padding made
   (so a padded clip equals ``waveform_to_input`` of the clip: fbank, then zero frames),
   SpecAugment, normalisation ``(x - mean) / (2 std)``, then noise and roll.

Step 3 computes the filterbank only up to the longest clip's real frames, so a batch of
short clips in a long input costs what its audio costs. The per-bin noise is drawn on the
CPU from each clip's seed whatever the device, so the loader and the device paths give
the same features for the same draws, on any device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .augment import add_noise_and_roll, apply_masks, draw_masks
from .errors import ConfigError
from .features import InputContract, fbank, normalize

__all__ = ["Augmentation", "batch_input", "draw_augmentation", "fit_waveform"]


@dataclass(frozen=True)
class Augmentation:
    """The original's training-time augmentation (same names and meaning)."""

    freqm: int = 0  # SpecAugment: frequency mask width < freqm
    timem: int = 0  # SpecAugment: time mask width < timem
    mixup: float = 0.0  # probability of mixing a clip with a random partner
    noise: bool = False  # uniform noise per bin and a random roll in time

    def __post_init__(self) -> None:
        if self.freqm < 0 or self.timem < 0 or not 0.0 <= self.mixup <= 1.0:
            raise ConfigError(f"bad augmentation: freqm={self.freqm}, timem={self.timem}, mixup={self.mixup}")


NONE = Augmentation()


def fit_waveform(waveform: torch.Tensor, contract: InputContract) -> tuple[torch.Tensor, int]:
    """A clip's ``[samples]`` waveform, mean removed and cut or zero-padded to exactly
    ``contract.samples``, and how many of its ``target_length`` frames are real audio."""
    waveform = waveform - waveform.mean()  # over the whole clip, as waveform_to_input
    size, shift = contract.window
    length = waveform.shape[-1]
    frames = 0 if length < size else 1 + (length - size) // shift
    samples = contract.samples
    if length < samples:
        waveform = F.pad(waveform, (0, samples - length))
    return waveform[:samples].float(), min(frames, contract.target_length)


def draw_augmentation(rng: np.random.Generator, contract: InputContract, aug: Augmentation) -> dict:
    """One clip's augmentation as tensors: ``masks`` ``(4,)`` (f0, f1, t0, t1), ``noise``
    ``(1,)`` (the noise scale) and ``roll`` ``(2,)`` (time shift, noise seed). Drawn in this
    order from ``rng``; the order is part of a run's reproducibility."""
    masks = draw_masks(rng, contract.target_length, contract.num_mel_bins, aug.freqm, aug.timem, 1)[0]
    scale, shift, seed = 0.0, 0, 0
    if aug.noise:
        scale = float(rng.random()) / 10
        shift = int(rng.integers(-10, 10))
        seed = int(rng.integers(2**62))
    return {
        "masks": torch.from_numpy(masks),
        "noise": torch.tensor([scale], dtype=torch.float64),
        "roll": torch.tensor([shift, seed]),
    }


def batch_input(
    waveforms: torch.Tensor,
    frames: torch.Tensor,
    contract: InputContract,
    aug: Augmentation = NONE,
    *,
    masks: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    roll: torch.Tensor | None = None,
) -> torch.Tensor:
    """Model input ``[B, target_length, mel]`` from ``[B, contract.samples]`` fitted
    waveforms (:func:`fit_waveform`) and their real frame counts ``[B]``, on the
    waveforms' device. ``masks``/``noise``/``roll`` come from :func:`draw_augmentation`
    (stacked) and are needed only where ``aug`` uses them. Normalised unless
    ``contract.normalize`` is false."""
    device = waveforms.device
    batch, target = waveforms.shape[0], contract.target_length
    frames = frames.to(device)
    longest = int(frames.max()) if batch else 0
    size, shift = contract.window
    x = waveforms.new_zeros((batch, target, contract.num_mel_bins))  # (B, T, F)
    if longest > 0:
        head = waveforms[:, : size + (longest - 1) * shift]  # (B, S'): exactly `longest` frames
        x[:, :longest] = fbank(head, contract.sample_rate, contract.num_mel_bins, contract.frame_shift,
                               contract.frame_length)  # fmt: skip
        real = torch.arange(target, device=device)[None, :] < frames[:, None]  # (B, T): the rest is padding
        x = torch.where(real[:, :, None], x, 0.0)
    if aug.freqm > 0 or aug.timem > 0:
        x = apply_masks(x, masks)
    if contract.normalize:
        x = normalize(x, contract.mean, contract.std)
    if aug.noise:
        per_bin = torch.stack([
            torch.rand(x.shape[1:], generator=torch.Generator().manual_seed(int(s)))
            for s in roll[:, 1].tolist()
        ]).to(device)  # fmt: skip  # (B, T, F), drawn on the CPU so every device sees the same numbers
        x = add_noise_and_roll(x, per_bin, noise[:, 0], roll[:, 0])
    return x.float()
