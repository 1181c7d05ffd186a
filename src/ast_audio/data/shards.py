"""Training data as WebDataset shards: tar files read front to back, for object stores and
file systems where a million small files are slow.

Writing them (``ast-audio shard``) is :mod:`ast_audio.data.shard_writer` (its
:func:`~ast_audio.data.shard_writer.write_shards` is importable from here too): every usable
clip of a datafile one sample, the shards listed with their sample and label counts in
``DIR/index.json``.

Reading for training (:class:`ShardStream`): see its notes. A shard spec is a folder
holding ``index.json``, a brace pattern (``DIR/shard-{000000..000009}.tar``) or a comma
separated list of ``.tar`` files; the index next to the shards gives their counts.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile
import soxr
import torch

from ..audio.io import RESAMPLE_QUALITY
from ..errors import AudioError, DataError
from ..features.augment import mixup_lambda
from ..features.contract import InputContract
from ..features.pipeline import NONE, Augmentation
from .datafiles import class_weights
from .dataset import collate, draw_item, fbank_place, mix_clips, model_input
from .labels import LabelTable, read_label_csv
from .shard_writer import FORMAT, INDEX, MIN_SHARDS, REPORT, parse_size, write_shards

__all__ = ["FORMAT", "INDEX", "MIN_SHARDS", "REPORT", "Shard", "ShardSet", "ShardStream", "decode", "is_shard_spec",
           "parse_size", "read_shards", "write_shards"]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- reading


@dataclass
class Shard:
    path: Path
    samples: int
    label_counts: dict[str, int]


@dataclass
class ShardSet:
    """The shards a spec names, with their counts from the index (Datafile's place in a run)."""

    path: Path
    labels: LabelTable
    shards: list[Shard]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return sum(s.samples for s in self.shards)

    def label_counts(self) -> np.ndarray:
        """``[classes]`` clip count per class, over all the shards."""
        index = self.labels.index()
        counts = np.zeros(len(self.labels), dtype=np.float64)
        for shard in self.shards:
            for mid, n in shard.label_counts.items():
                counts[index[mid]] += n
        return counts


def is_shard_spec(spec: str | os.PathLike) -> bool:
    """A folder with ``index.json``, or ``.tar`` files (a brace pattern or a comma list)."""
    text = os.fspath(spec)
    if Path(text).is_dir():
        return (Path(text) / INDEX).is_file()
    return all(part.strip().endswith(".tar") for part in text.split(",") if part.strip())


def _expand(spec: str) -> list[Path]:
    from braceexpand import braceexpand

    return [Path(p) for part in spec.split(",") if part.strip() for p in braceexpand(part.strip())]


def read_shards(spec: str | os.PathLike, label_csv: str | os.PathLike | LabelTable) -> ShardSet:
    """The shards of ``spec`` (see :func:`is_shard_spec`), checked against the index next to
    them and the label table: a missing shard, a shard the index does not list or a label
    not in the table is an error naming it."""
    labels = label_csv if isinstance(label_csv, LabelTable) else read_label_csv(label_csv)
    text = os.fspath(spec)
    folder = Path(text) if Path(text).is_dir() else None
    paths = None if folder else _expand(text)
    folder = folder or paths[0].parent
    index_path = folder / INDEX
    try:
        doc = json.loads(index_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"no {INDEX} beside the shards (write them with `ast-audio shard`)", index_path) from None
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read the shard index: {err}", index_path) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DataError("not an ast-audio shard index", index_path)
    listed = {s["name"]: s for s in doc["shards"]}
    names = [s["name"] for s in doc["shards"]] if paths is None else [p.name for p in paths]
    known = labels.index()
    shards = []
    for name, path in zip(names, paths or [folder / n for n in names], strict=True):
        if name not in listed or path.parent.resolve() != folder.resolve():
            raise DataError(f"{INDEX} does not list this shard", path)
        if not path.is_file():
            raise DataError("shard not found", path)
        unknown = [mid for mid in listed[name]["label_counts"] if mid not in known]
        if unknown:
            raise DataError(f"label {unknown[0]!r} is not in the label CSV", path)
        shards.append(Shard(path, int(listed[name]["samples"]), dict(listed[name]["label_counts"])))
    return ShardSet(Path(text), labels, shards)


def decode(audio: bytes, name: str, contract: InputContract) -> tuple[torch.Tensor, int]:
    """A sample's bytes as :func:`~ast_audio.features.pipeline.load_clip` decodes a file: mono, at the
    contract's rate (or the clip's own with ``resample=False``). ``(waveform, rate)``."""
    try:
        data, rate = soundfile.read(io.BytesIO(audio), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioError(f"not decodable ({err})", name) from None
    data = data.mean(axis=1, keepdims=True)  # (S, 1), as load_audio mixes channels
    target = contract.sample_rate if contract.resample else rate
    if target != rate:
        data = soxr.resample(data, rate, target, quality=RESAMPLE_QUALITY)
    return torch.from_numpy(np.ascontiguousarray(data.T, dtype=np.float32))[0], target


def _samples(path: Path):
    """``(key, ext, audio bytes, meta)`` of every sample of one shard, in order."""
    from webdataset.tariterators import tarfile_samples

    for sample in tarfile_samples([{"url": str(path)}]):
        meta = json.loads(sample["json"])
        ext = next(k for k in sample if not k.startswith("__") and k != "json")
        yield sample["__key__"], ext, sample[ext], meta


# --------------------------------------------------------------------------- the training stream


class ShardStream(torch.utils.data.IterableDataset):
    """Training draws from shards, as :class:`~ast_audio.data.dataset.AudioDataset` items (the same
    decoding, mixup, fitting, augmentation, :func:`~ast_audio.data.dataset.collate` and
    :func:`~ast_audio.data.dataset.model_input`).

    - **Splitting.** Each epoch the shards are shuffled by ``(seed, epoch)``, the same on every
      rank, and dealt to ``world x loader workers`` slots, each shard to the slot with the
      fewest draws so far; a slot reads only its shards, so no sample is read twice in an
      epoch. With one process every draw is yielded. Under DDP every rank must take the same
      number of steps, so every slot stops after ``M`` draws, the smallest slot's count: the
      draws past it (at most about one shard's worth per slot, other ones each epoch) are left
      out of that epoch. A spec needs at least as many shards as slots.
    - **Shuffling.** A slot reads its shards in order through a buffer of ``buffer`` draws
      and yields a random one of them each time a new one comes in (then the rest, shuffled).
    - **Balanced sampling** (``balanced=True``, the files' ``--bal``) is approximated without
      random access: a clip's weight is the files' (``1000 / (count + 0.01)`` summed over its
      labels, the counts from the index), its expected number of draws per epoch ``r = N *
      weight / total weight`` is what sampling ``N`` draws with replacement gives, and a shard
      yields each clip ``floor(u + r_1 + ... + r_i) - floor(u + r_1 + ... + r_(i-1))`` times
      (systematic sampling, ``u`` uniform per shard and epoch). So every clip's (and every
      class's) expected number of draws per epoch is exactly the files' and the epoch has
      ``N`` draws to within one per shard; what differs is the spread: a clip with ``r = 2.3``
      is drawn 2 or 3 times, never 0 or 6. Copies of a clip are separate draws, augmented
      afresh. Clips with ``r < 1`` are skipped in some epochs, as with replacement.
    - **Randomness.** A draw's generator is ``default_rng([seed, epoch, copy, index])``
      (``index``: the clip's datafile position, ``copy``: which of its draws this epoch), so
      its augmentation does not depend on the number of processes or workers. A mixup partner
      is a random clip of the shuffle buffer, not of the whole set.
    - **Resuming** works at epoch boundaries as with files: an epoch's draws depend only on
      ``(seed, epoch)`` and the shards, so a resumed run reads the epochs an uninterrupted one
      would have; a run stopped mid-epoch repeats that epoch from its start.
    """

    def __init__(
        self,
        shards: ShardSet,
        contract: InputContract,
        augmentation: Augmentation = NONE,
        *,
        seed: int = 0,
        fbank_on: str = "loader",
        rank: int = 0,
        world: int = 1,
        buffer: int = 1000,
        balanced: bool = False,
        skip_bad: bool = False,
    ):
        self.shards, self.contract, self.augmentation = shards, contract, augmentation
        self.seed, self.rank, self.world, self.buffer, self.balanced = seed, rank, world, max(1, buffer), balanced
        self.fbank_on, _ = fbank_place(contract, fbank_on, None, shards.path)
        self.skip_bad = skip_bad
        self.num_classes = len(shards.labels)
        self.label_index = shards.labels.index()
        counts = shards.label_counts()
        self.class_weight = class_weights(counts)
        self.total_weight = float((counts * self.class_weight).sum())
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    # -- the plan of an epoch: which shards each slot reads and how many draws it yields

    def _offset(self, epoch: int, shard: int) -> float:
        return float(np.random.default_rng([self.seed, epoch, shard, 1]).random())

    def expected_draws(self, epoch: int) -> list[int]:
        """Draws each shard yields in ``epoch`` (from the index; with ``balanced`` the
        systematic-sampling total, give or take one for rounding)."""
        if not self.balanced:
            return [s.samples for s in self.shards.shards]
        out = []
        for i, shard in enumerate(self.shards.shards):
            weight = sum(n * self.class_weight[self.label_index[mid]] for mid, n in shard.label_counts.items())
            out.append(math.floor(self._offset(epoch, i) + len(self.shards) * weight / self.total_weight))
        return out

    def plan(self, epoch: int, slots: int) -> tuple[list[list[int]], int | None]:
        """``(shard indices per slot, draws per slot or None for all)`` of ``epoch``."""
        if len(self.shards.shards) < slots:
            raise DataError(f"{len(self.shards.shards)} shards cannot feed {slots} readers ({self.world} processes x "
                            "loader workers); write smaller shards (--max-size) or use fewer workers",
                            self.shards.path)  # fmt: skip
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.shards.shards), generator=gen).tolist()
        draws = self.expected_draws(epoch)
        order.sort(key=lambda i: -draws[i])  # stable: equal shards stay in the shuffled order
        assigned: list[list[int]] = [[] for _ in range(slots)]
        load = [0] * slots
        for i in order:
            slot = min(range(slots), key=lambda s: load[s])
            assigned[slot].append(i)
            load[slot] += draws[i]
        if self.world == 1:
            return assigned, None
        margin = [len(a) if self.balanced else 0 for a in assigned]  # rounding of the balanced totals
        return assigned, max(0, min(n - m for n, m in zip(load, margin, strict=True)))

    # -- reading

    def _target(self, labels: tuple[int, ...]) -> np.ndarray:
        target = np.zeros(self.num_classes, dtype=np.float32)
        target[list(labels)] = 1.0
        return target

    def _item(self, draw: tuple, pool: list, epoch: int) -> dict:
        """One draw as AudioDataset.__getitem__ makes it (partner: from ``pool``); a sample
        that cannot be decoded is an item that says so, which collate skips or refuses."""
        index, copy, name, audio, labels = draw
        rng = np.random.default_rng([self.seed, epoch, copy, index])
        try:
            waveform, rate = decode(audio, name, self.contract)
            target = self._target(labels)
            if self.augmentation.mixes(rng) and pool:
                partner = pool[int(rng.integers(len(pool)))]
                lam = mixup_lambda(rng)
                other, other_rate = decode(partner[3], partner[2], self.contract)
                waveform, target = mix_clips(waveform, rate, target, other, other_rate, self._target(partner[4]), lam)
        except AudioError as err:
            return {"bad": (err.path or name, err.reason)}
        target = torch.from_numpy(np.asarray(target, dtype=np.float32))
        return draw_item(waveform, rate, target, rng, self.contract, self.augmentation)

    def _draws(self, shard_ids: list[int], epoch: int):
        """``(index, copy, name, audio, labels)`` of every draw of these shards, in order."""
        total = len(self.shards)
        for i in shard_ids:
            shard = self.shards.shards[i]
            offset, cum, taken = self._offset(epoch, i), 0.0, 0
            for key, _, audio, meta in _samples(shard.path):
                labels = tuple(sorted(self.label_index[m] for m in meta["labels"].split(",") if m))
                copies = 1
                if self.balanced:
                    cum += total * float(self.class_weight[list(labels)].sum()) / self.total_weight
                    copies = math.floor(offset + cum) - taken
                    taken += copies
                for copy in range(copies):
                    yield int(meta["index"]), copy, f"{shard.path}:{key}", audio, labels

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        epoch = self.epoch
        assigned, quota = self.plan(epoch, self.world * workers)
        mine = assigned[self.rank * workers + worker]
        log.info("epoch %d, rank %d, worker %d reads shards %s (%s draws)", epoch, self.rank, worker,
                 ",".join(self.shards.shards[i].path.name for i in mine), "all" if quota is None else quota)  # fmt: skip
        rng = np.random.default_rng([self.seed, epoch, self.rank * workers + worker, 2])
        pool: list = []
        yielded = 0
        for draw in self._draws(mine, epoch):
            if quota is not None and yielded >= quota:
                return
            if len(pool) < self.buffer:
                pool.append(draw)
                continue
            j = int(rng.integers(len(pool)))
            out, pool[j] = pool[j], draw
            yield self._item(out, pool, epoch)
            yielded += 1
        rng.shuffle(pool)
        while pool and (quota is None or yielded < quota):
            yield self._item(pool.pop(), pool, epoch)
            yielded += 1

    # -- batching: the same functions as AudioDataset's

    def collate(self, items: list[dict]) -> dict:
        return collate(items, self.contract, self.augmentation, fbank_on=self.fbank_on, skip_bad=self.skip_bad)

    def model_input(self, batch: dict, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        return model_input(batch, device, self.contract, self.augmentation)

    def loader(self, batch_size: int, sampler=None, num_workers: int = 0, **kwargs) -> torch.utils.data.DataLoader:
        """A ``DataLoader`` (the stream splits and shuffles itself: ``sampler`` is not used;
        workers are started each epoch so that they see the epoch)."""
        kwargs["persistent_workers"] = False
        self.plan(self.epoch, self.world * max(1, num_workers))  # too few shards: the error here, not in a worker
        return torch.utils.data.DataLoader(self, batch_size=batch_size, num_workers=num_workers,
                                           collate_fn=self.collate, **kwargs)  # fmt: skip
