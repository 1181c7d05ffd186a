"""The one batched feature pipeline: waveforms and drawn augmentation in, model input out.

Every consumer of model input goes through here: the training and evaluation datasets
(in the loader's ``collate`` on the CPU, or per batch on the model's device), the
tagger's windows, the recipes' prediction steps, the demo and export's checks. The
steps, in the original data loader's order:

1. per clip (:func:`fit_waveform`): remove the mean over the whole clip, then pad with
   zeros or cut so that the waveform holds exactly ``target_length`` frames;
2. per clip (:func:`draw_augmentation`): draw SpecAugment's masks and the noise
   parameters from the clip's own generator (mixup happens before, on waveforms);
3. per batch (:func:`batch_input` = :func:`batch_fbank` + :func:`finish_input`): Kaldi
   fbank, zero the frames that only padding made (so a padded clip equals
   ``waveform_to_input`` of the clip: fbank, then zero frames), SpecAugment, normalisation
   ``(x - mean) / (2 std)``, then noise and roll.

A contract with ``resample=False`` (the "hack" fork computed filterbanks at each file's
own rate) decodes clips at their rate (:func:`load_clip`) and makes each clip's filterbanks
on its own (:func:`clip_fbank`, in the loader); the rest of step 3 is the same.

Step 3 computes the filterbank only up to the longest clip's real frames, so a batch of
short clips in a long input costs what its audio costs. The per-bin noise is drawn on the
CPU from each clip's seed whatever the device, so the loader and the device paths give
the same features for the same draws, on any device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..audio.io import audio_info, load_audio
from ..errors import ConfigError
from .augment import add_noise_and_roll, apply_masks, draw_masks
from .contract import InputContract, normalize
from .kaldi import fbank

__all__ = [
    "Augmentation", "batch_fbank", "batch_input", "clip_fbank", "draw_augmentation", "file_input", "finish_input",
    "fit_waveform", "load_clip",
]  # fmt: skip


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

    def mixes(self, rng: np.random.Generator) -> bool:
        """Whether a draw mixes its clip with a partner (probability ``mixup``); draws one
        number from ``rng`` when mixup is on, which is part of a run's reproducibility."""
        return self.mixup > 0 and rng.random() < self.mixup


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


def load_clip(path: str | os.PathLike, contract: InputContract) -> tuple[torch.Tensor, int]:
    """A file decoded as the contract says: mono, resampled to ``contract.sample_rate``, or at
    its own rate when ``contract.resample`` is false. ``(waveform [samples], rate)``."""
    if contract.resample:
        return load_audio(path, sample_rate=contract.sample_rate), contract.sample_rate
    return load_audio(path, sample_rate=None), audio_info(path).sample_rate


def clip_fbank(waveform: torch.Tensor, rate: int, contract: InputContract) -> tuple[torch.Tensor, int]:
    """One clip's un-normalised filterbanks ``[target_length, mel]`` at its own ``rate`` (the
    contract's frame length and shift in ms; mel bins from 20 Hz to that rate's Nyquist), the
    frames past its end zero, and its number of real frames. What ``resample=False`` needs:
    clips at different rates have different sample counts, so they cannot share a batch of
    waveforms."""
    at_rate = contract.replace(sample_rate=rate)
    fitted, frames = fit_waveform(waveform, at_rate)
    return batch_fbank(fitted[None], torch.tensor([frames]), at_rate)[0], frames


def batch_fbank(waveforms: torch.Tensor, frames: torch.Tensor, contract: InputContract) -> torch.Tensor:
    """Un-normalised filterbanks ``[B, target_length, mel]`` of ``[B, contract.samples]`` fitted
    waveforms (:func:`fit_waveform`) with ``frames`` ``[B]`` real frames each, on the
    waveforms' device; frames that only padding made are zero."""
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
        padding = torch.arange(longest, device=device)[None, :] >= frames[:, None]  # (B, T'): frames of padding
        x[:, :longest].masked_fill_(padding[:, :, None], 0.0)  # in place: no copy of the batch
    return x


def finish_input(
    x: torch.Tensor,
    contract: InputContract,
    aug: Augmentation = NONE,
    *,
    masks: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    roll: torch.Tensor | None = None,
) -> torch.Tensor:
    """SpecAugment, normalisation (unless ``contract.normalize`` is false), noise and roll on
    un-normalised filterbanks ``[B, T, F]``. ``masks``/``noise``/``roll`` come from
    :func:`draw_augmentation` (stacked) and are needed only where ``aug`` uses them."""
    if aug.freqm > 0 or aug.timem > 0:
        x = apply_masks(x, masks)
    if contract.normalize:
        x = normalize(x, contract.mean, contract.std)
    if aug.noise:
        per_bin = torch.stack([
            torch.rand(x.shape[1:], generator=torch.Generator().manual_seed(int(s)))
            for s in roll[:, 1].tolist()
        ]).to(x.device)  # fmt: skip  # (B, T, F), drawn on the CPU so every device sees the same numbers
        x = add_noise_and_roll(x, per_bin, noise[:, 0], roll[:, 0])
    return x.float()


def batch_input(
    waveforms: torch.Tensor,
    frames: torch.Tensor,
    contract: InputContract,
    aug: Augmentation = NONE,
    **drawn: torch.Tensor,
) -> torch.Tensor:
    """Model input ``[B, target_length, mel]`` from fitted waveforms: :func:`batch_fbank`
    then :func:`finish_input` (``drawn``: its ``masks``/``noise``/``roll``)."""
    return finish_input(batch_fbank(waveforms, frames, contract), contract, aug, **drawn)


def file_input(path: str | os.PathLike, contract: InputContract) -> torch.Tensor:
    """One file's model input ``[target_length, mel]`` as the contract says (what a recipe's
    prediction step feeds the model): :func:`load_clip`, then the pipeline."""
    waveform, rate = load_clip(path, contract)
    x, _ = clip_fbank(waveform, rate, contract)
    return finish_input(x[None], contract)[0]
