"""The training/evaluation dataset with the original data loader's audio configuration.

Per clip: load (mono, resampled) -> [mixup with a random partner] -> fbank, pad or cut
(``waveform_to_input``, the one feature path) -> SpecAugment -> normalise -> [noise + roll].

Where the filterbank is computed (``fbank_on``):

- ``"loader"`` (the original's way): each item is ``(features [T, F], target [C])``,
  all of the above done in the ``DataLoader`` workers;
- ``"device"``: the workers only decode (and mix); each item is a dict with the mean-
  removed waveform cut or padded to exactly ``T`` frames' worth of samples, its number of
  real frames, the target and the augmentation drawn for it. :meth:`AudioDataset.model_input`
  then computes fbank, padding, SpecAugment, normalisation and noise for the whole batch
  on the model's device, so that a GPU, not the loader's CPU cores, does the filterbanks
  (see BENCHMARKS.md for what each stage costs per core). Same features as ``"loader"`` (to float
  rounding) for the same seed; the one difference is ``noise``: its per-bin noise is
  drawn on the device from a per-clip seed, the same distribution with other numbers.

Randomness: each item draws from ``numpy.random.default_rng([seed, epoch, index])``, so
an epoch's augmentation is the same whatever the number of workers or processes, and a
resumed run repeats exactly what an uninterrupted one would have done.

``cache_dir`` keeps decoded, resampled waveforms on disk (:mod:`ast_audio.cache`): epochs
after the first read them instead of decoding again, with identical samples.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import torch

from .audio import load_audio
from .augment import (
    add_noise_and_roll,
    apply_masks,
    draw_masks,
    mix_targets,
    mix_waveforms,
    mixup_lambda,
    noise_and_roll,
    spec_augment,
)
from .cache import WaveformCache
from .data import Datafile
from .errors import ConfigError
from .features import FeatureConfig, fbank, frame_sizes, normalize, waveform_to_input
from .presets import PRESETS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioConf:
    """The original's ``audio_conf`` (same names and meaning)."""

    num_mel_bins: int = 128
    target_length: int = 1024
    freqm: int = 0
    timem: int = 0
    mixup: float = 0.0
    mean: float = PRESETS["audioset"].mean
    std: float = PRESETS["audioset"].std
    noise: bool = False
    skip_norm: bool = False
    sample_rate: int = 16000

    def features(self) -> FeatureConfig:
        return FeatureConfig(
            sample_rate=self.sample_rate, num_mel_bins=self.num_mel_bins, target_length=self.target_length,
            mean=self.mean, std=self.std, normalize=False,
        )  # fmt: skip

    def for_evaluation(self) -> AudioConf:
        """The same features without any augmentation."""
        return replace(self, freqm=0, timem=0, mixup=0.0, noise=False)


FBANK_ON = ("loader", "device")


class AudioDataset(torch.utils.data.Dataset):
    """Items are ``(features [target_length, num_mel_bins], target [classes])`` float32
    (``fbank_on="loader"``) or dicts of waveforms to finish with :meth:`model_input`
    (``fbank_on="device"``); see the module notes."""

    def __init__(
        self,
        datafile: Datafile,
        conf: AudioConf,
        *,
        seed: int = 0,
        fbank_on: str = "loader",
        cache_dir: str | None = None,
    ):
        if fbank_on not in FBANK_ON:
            raise ConfigError(f"fbank_on must be one of {', '.join(FBANK_ON)}, got {fbank_on!r}")
        self.datafile = datafile
        self.conf = conf
        self.seed = seed
        self.epoch = 0
        self.fbank_on = fbank_on
        self.num_classes = len(datafile.labels)
        self._features = conf.features()
        self._cache = WaveformCache(cache_dir) if cache_dir else None
        self._window, self._shift, _ = frame_sizes(conf.sample_rate)
        self.samples = self._window + (conf.target_length - 1) * self._shift  # one model input

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.datafile)

    def _waveform(self, index: int) -> torch.Tensor:
        path = self.datafile.entries[index].wav
        if self._cache is not None:
            return self._cache.load(path, self.conf.sample_rate)
        return load_audio(path, sample_rate=self.conf.sample_rate)

    def _mixed(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The clip's waveform and target, mixed with a random partner's with probability ``mixup``."""
        waveform = self._waveform(index)
        target = self.datafile.entries[index].target(self.num_classes)
        if self.conf.mixup > 0 and rng.random() < self.conf.mixup:
            partner = int(rng.integers(len(self)))
            lam = mixup_lambda(rng)
            waveform = mix_waveforms(waveform, self._waveform(partner), lam)
            target = mix_targets(target, self.datafile.entries[partner].target(self.num_classes), lam)
        return waveform, torch.from_numpy(np.asarray(target, dtype=np.float32))

    def __getitem__(self, index: int):
        conf = self.conf
        rng = np.random.default_rng([self.seed, self.epoch, index])
        waveform, target = self._mixed(index, rng)
        if self.fbank_on == "device":
            return self._raw_item(waveform, target, rng)
        features = waveform_to_input(waveform, self._features)  # (T, F) un-normalised
        if conf.freqm > 0 or conf.timem > 0:
            features = spec_augment(features, conf.freqm, conf.timem, rng)
        if not conf.skip_norm:
            features = normalize(features, conf.mean, conf.std)
        if conf.noise:
            features = noise_and_roll(features, rng)
        return features.float(), target

    def _raw_item(self, waveform: torch.Tensor, target: torch.Tensor, rng: np.random.Generator) -> dict:
        """What ``model_input`` needs, drawing from ``rng`` in the order ``__getitem__`` does."""
        conf = self.conf
        waveform = waveform - waveform.mean()  # over the whole clip, as waveform_to_input
        length = waveform.shape[-1]
        frames = 0 if length < self._window else 1 + (length - self._window) // self._shift
        if length < self.samples:
            waveform = torch.nn.functional.pad(waveform, (0, self.samples - length))
        masks = draw_masks(rng, conf.target_length, conf.num_mel_bins, conf.freqm, conf.timem, 1)[0]
        scale, shift, seed = 0.0, 0, 0
        if conf.noise:
            scale = float(rng.random()) / 10
            shift = int(rng.integers(-10, 10))
            seed = int(rng.integers(2**62))
        return {
            "waveform": waveform[: self.samples].float(),  # (S,)
            "frames": torch.tensor(min(frames, conf.target_length)),
            "target": target,
            "masks": torch.from_numpy(masks),  # (4,) f0, f1, t0, t1
            "noise": torch.tensor([scale], dtype=torch.float64),
            "roll": torch.tensor([shift, seed]),
        }

    def model_input(self, batch, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """A collated batch as ``(features [B, T, F], targets [B, C])`` on ``device``, in either mode."""
        if not isinstance(batch, dict):
            features, targets = batch
            return features.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        conf = self.conf
        device = torch.device(device)
        wave = batch["waveform"].to(device, non_blocking=True)  # (B, S)
        x = fbank(wave, conf.sample_rate, conf.num_mel_bins)  # (B, T, F): S holds exactly T frames
        frames = torch.arange(conf.target_length, device=device)
        real = frames[None, :] < batch["frames"].to(device)[:, None]  # (B, T): the rest is padding
        x = torch.where(real[:, :, None], x, 0.0)
        if conf.freqm > 0 or conf.timem > 0:
            x = apply_masks(x, batch["masks"])
        if not conf.skip_norm:
            x = normalize(x, conf.mean, conf.std)
        if conf.noise:
            seeds = batch["roll"][:, 1].tolist()
            noise = torch.stack([
                torch.rand(x.shape[1:], generator=torch.Generator(device).manual_seed(s), device=device)
                for s in seeds
            ])  # fmt: skip
            x = add_noise_and_roll(x, noise, batch["noise"][:, 0], batch["roll"][:, 0])
        return x.float(), batch["target"].to(device, non_blocking=True)


def norm_stats(dataset: AudioDataset, batch_size: int = 32, num_workers: int = 0) -> tuple[float, float]:
    """Mean and standard deviation of the un-normalised, un-augmented model inputs of a dataset
    (padding frames included, as the original's statistics were taken from the loader)."""
    plain = AudioDataset(dataset.datafile, replace(dataset.conf.for_evaluation(), skip_norm=True))
    loader = torch.utils.data.DataLoader(plain, batch_size=batch_size, num_workers=num_workers)
    total, total_sq, count = 0.0, 0.0, 0
    for features, _ in loader:
        x = features.double()
        total += float(x.sum())
        total_sq += float((x * x).sum())
        count += x.numel()
    mean = total / count
    return mean, float(np.sqrt(max(total_sq / count - mean * mean, 0.0)))
