"""The training/evaluation dataset: one kind of item, randomness per draw.

Per draw of a clip: load (mono, resampled; from the waveform cache when asked) ->
[mixup with a random partner] -> :func:`~ast_audio.features.pipeline.fit_waveform` -> the
augmentation drawn for it. Each item is a dict of the fitted ``waveform``, its real
``frames``, the ``target`` and the drawn ``masks``/``noise``/``roll``; the one batched
feature pipeline (:func:`~ast_audio.features.pipeline.batch_input`) turns a batch of them into
model input, either

- in the loader's ``collate`` on the CPU (``fbank_on="loader"``, the original's way: the
  workers return finished ``features``), or
- on the model's device in :func:`model_input` (``fbank_on="device"``: the
  workers only decode and mix, a GPU does the filterbanks).

Both give the same features for the same draws. A contract with ``resample=False`` (the
"hack" fork's features at each file's own rate) decodes each clip at its rate and makes its
filterbanks in the loader (:func:`~ast_audio.features.pipeline.clip_fbank`); mixup partners at
another rate are resampled to the clip's.

Randomness: a clip's generator is ``numpy.random.default_rng([seed, epoch, position,
index])`` where ``(index, epoch, position)`` is the :class:`Draw` the sampler hands to the
dataset: the clip, the epoch and the draw's place in that epoch's sampling order. So every
draw is augmented afresh (a clip drawn twice in an epoch by balanced sampling gets two
draws, as in the original), and the augmentation is the same for any number of loader
workers or processes and after a resume: nothing depends on state kept in a worker's copy
of the dataset. A plain integer index (evaluation) is the draw ``(index, 0, index)``.

A clip that turns out unreadable when drawn (undecodable, empty, gone: only existence is
checked when the datafile is read) does not stop the loader: its item says so, and
:func:`collate` leaves it out of the batch (``skip_bad=True``; the batch's
``skipped`` lists ``(path, reason)``) or makes the batch one that :func:`model_input`
refuses with a :class:`~ast_audio.errors.DataError` naming the file and how to skip it
(the error is raised in the main process, so it reads the same with any number of workers).
:class:`SkippedLog` records what was left out, each file once.

``cache_dir`` keeps decoded, resampled waveforms on disk (:mod:`ast_audio.audio.cache`): epochs
after the first read them instead of decoding again, with identical samples.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..audio.cache import WaveformCache
from ..audio.io import resample
from ..errors import AudioError, ConfigError, DataError
from ..features.augment import mix_targets, mix_waveforms, mixup_lambda
from ..features.contract import InputContract
from ..features.pipeline import (
    NONE,
    Augmentation,
    batch_fbank,
    clip_fbank,
    draw_augmentation,
    finish_input,
    fit_waveform,
    load_clip,
)
from .datafiles import Datafile

log = logging.getLogger(__name__)

FBANK_ON = ("loader", "device")


class Draw(NamedTuple):
    """One draw of a clip: what the sampler hands to the dataset."""

    index: int  # the clip, in datafile order
    epoch: int
    position: int  # the draw's place in the epoch's sampling order (over all processes)


BUCKET_CHUNK = 16  # length bucketing sorts draws within chunks of this many batches


class EpochSampler(torch.utils.data.Sampler):
    """The draws of one epoch: shuffled indices (or, with weights, drawn with replacement),
    the same on every rank for a given (seed, epoch), then split ``rank::world`` (wrapped
    so every rank gets the same number of draws). Yields :class:`Draw` tuples.

    With ``lengths`` (each clip's frames) and ``batch_size`` (the global batch: every
    rank's loader batch together), draws are grouped by length: the shuffled order is cut
    into chunks of :data:`BUCKET_CHUNK` batches, each chunk sorted by length (ties keep the
    shuffled order) and cut into batches, and the order of the full batches shuffled (a
    short last batch stays last). Each rank's consecutive ``batch_size / world`` draws then
    come from one such batch. Still the same on every rank for a given (seed, epoch), and
    every draw of the plain order exactly once."""

    def __init__(
        self,
        size: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        weights: np.ndarray | None = None,
        *,
        lengths: list[int] | None = None,
        batch_size: int | None = None,
    ):
        self.size, self.seed, self.rank, self.world = size, seed, rank, world
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.epoch = 0
        self.per_rank = math.ceil(size / world)
        if lengths is not None and (len(lengths) != size or not batch_size or batch_size % world):
            raise ConfigError("length bucketing needs a length per clip and a batch size divisible by the processes")
        self.lengths, self.batch_size = lengths, batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is None:
            order = torch.randperm(self.size, generator=gen)
        else:
            order = torch.multinomial(self.weights, self.size, replacement=True, generator=gen)
        order = order.tolist()
        order += order[: self.per_rank * self.world - len(order)]
        if self.lengths is not None:
            order = self._bucketed(order, gen)
        mine = range(self.rank, len(order), self.world)
        return iter(Draw(order[p], self.epoch, p) for p in mine)

    def _bucketed(self, order: list[int], gen: torch.Generator) -> list[int]:
        size, chunk = self.batch_size, self.batch_size * BUCKET_CHUNK
        batches = []
        for start in range(0, len(order), chunk):
            part = sorted(order[start : start + chunk], key=self.lengths.__getitem__)
            batches += [part[k : k + size] for k in range(0, len(part), size)]
        tail = batches.pop() if batches and len(batches[-1]) < size else []
        shuffled = torch.randperm(len(batches), generator=gen).tolist()
        return [i for b in shuffled for i in batches[b]] + tail


def mix_clips(waveform, rate, target, other, other_rate, other_target, lam):
    """``(waveform, target)`` of a clip mixed with its mixup partner (resampled to the clip's
    rate when it has another), as the original's mixup mixes them."""
    other = other if other_rate == rate else resample(other, other_rate, rate)
    return mix_waveforms(waveform, other, lam), mix_targets(target, other_target, lam)


def draw_item(waveform, rate, target, rng, contract: InputContract, augmentation: Augmentation) -> dict:
    """One training item from a draw's (mixed) waveform: the signal fitted to the contract
    (or, with ``resample=False``, the clip's own filterbanks), its frame count, its target
    and the augmentation drawn from ``rng``. Files and shards both make their items here."""
    if contract.resample:
        waveform, frames = fit_waveform(waveform, contract)
        signal = {"waveform": waveform}  # (S,)
    else:  # each clip at its own rate: its filterbanks here, the rest per batch
        fbank, frames = clip_fbank(waveform, rate, contract)
        signal = {"fbank": fbank}  # (T, F) un-normalised
    return {**signal, "frames": torch.tensor(frames), "target": target,
            **draw_augmentation(rng, contract, augmentation)}  # fmt: skip


class AudioDataset(torch.utils.data.Dataset):
    """Items are dicts for :func:`~ast_audio.features.pipeline.batch_input` (see the module notes);
    batch them with :meth:`loader` (or ``collate_fn=dataset.collate``) and turn a batch into
    ``(features [B, T, F], targets [B, C])`` with :meth:`model_input`."""

    def __init__(
        self,
        datafile: Datafile,
        contract: InputContract,
        augmentation: Augmentation = NONE,
        *,
        seed: int = 0,
        fbank_on: str = "loader",
        cache_dir: str | None = None,
        skip_bad: bool = False,
    ):
        self.datafile = datafile
        self.contract = contract
        self.augmentation = augmentation
        self.seed = seed
        self.skip_bad = skip_bad
        self.num_classes = len(datafile.labels)
        self.fbank_on, cache_dir = fbank_place(contract, fbank_on, cache_dir, datafile.path)
        self._cache = WaveformCache(cache_dir) if cache_dir else None

    def __len__(self) -> int:
        return len(self.datafile)

    def natural_frames(self) -> list[int]:
        """Each clip's number of real frames (at most ``target_length``), from its file's header
        (no decoding): what length bucketing sorts by. A file whose header cannot be read
        counts as full length (it is reported when it is drawn)."""
        from ..audio.io import audio_info

        contract, out = self.contract, []
        for entry in self.datafile.entries:
            try:
                info = audio_info(entry.wav)
            except AudioError:
                out.append(contract.target_length)
                continue
            if contract.resample:  # the length it will have at the contract's rate
                samples, (size, shift) = math.ceil(info.frames * contract.sample_rate / info.sample_rate), contract.window
            else:
                samples, (size, shift) = info.frames, contract.replace(sample_rate=info.sample_rate).window
            frames = 0 if samples < size else 1 + (samples - size) // shift
            out.append(min(frames, contract.target_length))
        return out

    def _waveform(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.datafile.entries[index].wav
        if self._cache is not None:
            return self._cache.load(path, self.contract.sample_rate), self.contract.sample_rate
        return load_clip(path, self.contract)

    def _mixed(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, int, torch.Tensor]:
        """The clip's waveform, its rate and its target, mixed with a random partner's with
        probability ``mixup`` (a partner at another rate is resampled to the clip's)."""
        waveform, rate = self._waveform(index)
        target = self.datafile.entries[index].target(self.num_classes)
        if self.augmentation.mixes(rng):
            partner = int(rng.integers(len(self)))
            lam = mixup_lambda(rng)
            other, other_rate = self._waveform(partner)
            waveform, target = mix_clips(waveform, rate, target, other, other_rate,
                                         self.datafile.entries[partner].target(self.num_classes), lam)  # fmt: skip
        return waveform, rate, torch.from_numpy(np.asarray(target, dtype=np.float32))

    def __getitem__(self, key: int | Draw) -> dict:
        draw = Draw(*key) if isinstance(key, tuple) else Draw(int(key), 0, int(key))
        rng = np.random.default_rng([self.seed, draw.epoch, draw.position, draw.index])
        try:
            waveform, rate, target = self._mixed(draw.index, rng)
        except AudioError as err:  # the clip (or its mixup partner) cannot be read: collate decides
            return {"bad": (err.path or str(self.datafile.entries[draw.index].wav), err.reason)}
        return {**draw_item(waveform, rate, target, rng, self.contract, self.augmentation), "index": draw.index}

    def collate(self, items: list[dict]) -> dict:
        """:func:`collate` with this dataset's contract and settings."""
        return collate(items, self.contract, self.augmentation, fbank_on=self.fbank_on, skip_bad=self.skip_bad)

    def loader(self, batch_size: int, sampler=None, num_workers: int = 0, **kwargs) -> torch.utils.data.DataLoader:
        """A ``DataLoader`` over this dataset with its :meth:`collate`."""
        return torch.utils.data.DataLoader(
            self, batch_size=batch_size, sampler=sampler, num_workers=num_workers, collate_fn=self.collate, **kwargs
        )

    def model_input(self, batch: dict, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`model_input` with this dataset's contract and augmentation."""
        return model_input(batch, device, self.contract, self.augmentation)


def fbank_place(contract: InputContract, fbank_on: str, cache_dir: str | None, source: object) -> tuple[str, str | None]:
    """Where a dataset computes filterbanks and the waveform cache it uses: as asked, except
    that a contract with ``resample=False`` computes them in the loader, without a cache."""
    if fbank_on not in FBANK_ON:
        raise ConfigError(f"fbank_on must be one of {', '.join(FBANK_ON)}, got {fbank_on!r}")
    if contract.resample:
        return fbank_on, cache_dir
    log.info("%s: features at each file's own sample rate (resample=false)", source)
    if cache_dir or fbank_on == "device":
        log.warning("resample=false: filterbanks in the loader, no waveform cache (fbank_on=device and "
                    "cache_dir are not used)")  # fmt: skip
    return "loader", None


def collate(items: list[dict], contract: InputContract, augmentation: Augmentation = NONE, *,
            fbank_on: str = "loader", skip_bad: bool = False) -> dict:  # fmt: skip
    """Stack items; with ``fbank_on="loader"`` also compute the features here (in the loader
    worker), so the batch carries ``features`` instead of the signal. Unreadable clips are
    left out (``skip_bad``; listed in ``batch["skipped"]``, and a batch of nothing else has
    no ``target``) or turn the batch into ``{"bad": [...]}``, which :func:`model_input` refuses."""
    bad = [item["bad"] for item in items if "bad" in item]
    if bad and not skip_bad:
        return {"bad": bad}
    items = [item for item in items if "bad" not in item]
    if not items:
        return {"skipped": bad}
    batch = torch.utils.data.default_collate(items)
    batch["skipped"] = bad
    if fbank_on == "loader":
        batch["features"] = _features(batch, contract, augmentation)
        batch.pop("waveform", None)
        batch.pop("fbank", None)
    return batch


def _features(batch: dict, contract: InputContract, augmentation: Augmentation) -> torch.Tensor:
    x = batch["fbank"] if "fbank" in batch else batch_fbank(batch["waveform"], batch["frames"], contract)
    drawn = {k: batch[k] for k in ("masks", "noise", "roll")}
    return finish_input(x, contract, augmentation, **drawn)


def model_input(batch: dict, device: torch.device | str, contract: InputContract,
                augmentation: Augmentation = NONE) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """A collated batch as ``(features [B, T, F], targets [B, C])`` on ``device``, whether the
    loader computed the features or the batch carries the signal."""
    if "bad" in batch:
        path, reason = batch["bad"][0]
        raise DataError(
            f"{reason}; `ast-audio check DATAFILE` lists every such file, and training with --skip-bad True "
            "leaves them out", path,
        )  # fmt: skip
    device = torch.device(device)
    targets = batch["target"].to(device, non_blocking=True)
    if "features" in batch:
        return batch["features"].to(device, non_blocking=True), targets
    moved = {k: batch[k].to(device, non_blocking=True) for k in ("waveform", "fbank", "frames", "masks") if k in batch}
    return _features({**batch, **moved}, contract, augmentation), targets


class SkippedLog:
    """A run's ``skipped_entries.txt``: one line per datafile entry or clip left out, each once
    (lines already in the file, from before a resume or from another process, count as seen)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def _seen(self) -> set[str]:
        try:
            return set(self.path.read_text(encoding="utf-8", errors="surrogateescape").splitlines())
        except FileNotFoundError:
            return set()

    def add(self, lines: list[str]) -> list[str]:
        """Append the lines not yet in the file; returns them."""
        if not lines:
            return []
        seen = self._seen()
        new = [line for line in dict.fromkeys(lines) if line not in seen]
        if new:
            with open(self.path, "a", encoding="utf-8", errors="surrogateescape") as fh:
                fh.write("".join(line + "\n" for line in new))
        return new

    def add_clips(self, skipped: list[tuple[str, str]]) -> list[str]:
        """Record clips a batch left out (``batch["skipped"]``); logs each new one once."""
        new = self.add([f"{path}: {reason}" for path, reason in skipped])
        for line in new:
            log.warning("%s; left out of training (--skip-bad), listed in %s", line, self.path)
        return new


def norm_stats(dataset: AudioDataset, batch_size: int = 32, num_workers: int = 0) -> tuple[float, float]:
    """Mean and standard deviation of the un-normalised, un-augmented model inputs of a dataset
    (padding frames included, as the original's statistics were taken from the loader)."""
    plain = AudioDataset(dataset.datafile, dataset.contract.replace(normalize=False))
    total, total_sq, count = 0.0, 0.0, 0
    for batch in plain.loader(batch_size, num_workers=num_workers):
        x = plain.model_input(batch, "cpu")[0].double()  # (an unreadable clip: DataError naming it)
        total += float(x.sum())
        total_sq += float((x * x).sum())
        count += x.numel()
    mean = total / count
    return mean, float(np.sqrt(max(total_sq / count - mean * mean, 0.0)))
