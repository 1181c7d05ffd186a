"""A run's training data: the one place that decides between a datafile and shards.

:func:`training_data` reads the ``data_train`` spec and returns the dataset and what deals
its draws: a datafile gives an :class:`~ast_audio.data.dataset.AudioDataset` and an
:class:`~ast_audio.data.dataset.EpochSampler` (balanced by the weight file or the class
weights, optionally grouped by length); shards give a
:class:`~ast_audio.data.shards.ShardStream`, which splits, shuffles and balances itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..features.contract import InputContract
from ..features.pipeline import Augmentation
from .datafiles import Datafile, balanced_weights, read_datafile, read_weights, weight_file_for
from .dataset import AudioDataset, EpochSampler
from .labels import LabelTable
from .shards import ShardSet, ShardStream, is_shard_spec, read_shards

__all__ = ["TrainingData", "training_data"]


@dataclass
class TrainingData:
    """The training set of a run and how its epochs are drawn."""

    source: Datafile | ShardSet  # what was read: its entries (or shards), labels and skipped lines
    dataset: AudioDataset | ShardStream
    sampler: EpochSampler | None  # None: the shard stream deals its own draws

    def set_epoch(self, epoch: int) -> None:
        (self.sampler or self.dataset).set_epoch(epoch)

    def loader(self, batch_size: int, num_workers: int = 0, **kwargs) -> torch.utils.data.DataLoader:
        return self.dataset.loader(batch_size, self.sampler, num_workers, **kwargs)

    def model_input(self, batch: dict, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset.model_input(batch, device)


def training_data(
    spec: str | os.PathLike,
    labels: LabelTable,
    contract: InputContract,
    augmentation: Augmentation,
    *,
    seed: int = 0,
    rank: int = 0,
    world: int = 1,
    fbank_on: str = "loader",
    cache_dir: str | None = None,
    skip_bad: bool = False,
    balanced: bool = False,
    batch_size: int | None = None,
    by_length: bool = False,
) -> TrainingData:
    """The training data of ``spec``, a datafile or shards (see the module notes).
    ``batch_size`` is the global loader batch that length bucketing (``by_length``) groups."""
    if is_shard_spec(spec):
        if by_length:
            raise ConfigError("--bucket-by-length needs a datafile: shards stream their clips in a fixed order, "
                              "which cannot be grouped by length")  # fmt: skip
        shards = read_shards(spec, labels)
        stream = ShardStream(shards, contract, augmentation, seed=seed, fbank_on=fbank_on, rank=rank, world=world,
                             balanced=balanced, skip_bad=skip_bad)  # fmt: skip
        return TrainingData(shards, stream, None)
    datafile = read_datafile(spec, labels, skip_bad=skip_bad)
    dataset = AudioDataset(datafile, contract, augmentation, seed=seed, fbank_on=fbank_on, cache_dir=cache_dir,
                           skip_bad=skip_bad)  # fmt: skip
    weights = None
    if balanced:
        weight_file = weight_file_for(spec)
        weights = read_weights(weight_file, len(datafile)) if weight_file.exists() else balanced_weights(datafile)
    lengths = dataset.natural_frames() if by_length else None
    sampler = EpochSampler(len(dataset), seed, rank, world, weights, lengths=lengths, batch_size=batch_size)
    return TrainingData(datafile, dataset, sampler)
