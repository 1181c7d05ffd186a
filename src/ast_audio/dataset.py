"""The training/evaluation dataset with the original data loader's audio configuration.

Per clip: load (mono, resampled) -> [mixup with a random partner] -> fbank, pad or cut
(``waveform_to_input``, the one feature path) -> SpecAugment -> normalise -> [noise + roll].

Randomness: each item draws from ``numpy.random.default_rng([seed, epoch, index])``, so
an epoch's augmentation is the same whatever the number of workers or processes, and a
resumed run repeats exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import torch

from .audio import load_audio
from .augment import mix_targets, mix_waveforms, mixup_lambda, noise_and_roll, spec_augment
from .data import Datafile
from .features import FeatureConfig, normalize, waveform_to_input
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


class AudioDataset(torch.utils.data.Dataset):
    """Items are ``(features [target_length, num_mel_bins], target [classes])`` float32."""

    def __init__(self, datafile: Datafile, conf: AudioConf, *, seed: int = 0):
        self.datafile = datafile
        self.conf = conf
        self.seed = seed
        self.epoch = 0
        self.num_classes = len(datafile.labels)
        self._features = conf.features()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.datafile)

    def _waveform(self, index: int) -> torch.Tensor:
        return load_audio(self.datafile.entries[index].wav, sample_rate=self.conf.sample_rate)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        conf = self.conf
        entry = self.datafile.entries[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        waveform = self._waveform(index)
        target = entry.target(self.num_classes)
        if conf.mixup > 0 and rng.random() < conf.mixup:
            partner = int(rng.integers(len(self)))
            lam = mixup_lambda(rng)
            waveform = mix_waveforms(waveform, self._waveform(partner), lam)
            target = mix_targets(target, self.datafile.entries[partner].target(self.num_classes), lam)
        features = waveform_to_input(waveform, self._features)  # (T, F) un-normalised
        if conf.freqm > 0 or conf.timem > 0:
            features = spec_augment(features, conf.freqm, conf.timem, rng)
        if not conf.skip_norm:
            features = normalize(features, conf.mean, conf.std)
        if conf.noise:
            features = noise_and_roll(features, rng)
        return features.float(), torch.from_numpy(np.asarray(target, dtype=np.float32))


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
