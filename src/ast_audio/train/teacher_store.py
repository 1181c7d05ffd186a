"""Consistent teaching: the teacher's outputs computed once per clip and augmentation draw,
kept on disk, and the exact draw replayed for the student.

- :class:`ReplayDataset` makes a draw's item from the draw's own seed: the time shift of a
  long unlabelled recording, the mixup partner and weight, the SpecAugment masks and the
  noise are all drawn from ``numpy.random.default_rng(seed)``, so the item of a draw is the
  same whoever asks (the teacher filling the store, the student in any epoch, any number
  of loader workers or processes).
- :class:`Teacher` is one checkpoint or an ensemble: the mean of the members' scores
  (sigmoid or softmax as the first member says), each member's columns matched to the
  first one's by label name, as ``evaluate`` averages an ensemble; with
  ``transformers_only``, each member's clip-statistics branch is left out
  (:func:`~ast_audio.train.clipstats.transformer_logits`).
- :class:`TeacherStore` is a folder: ``store.json`` (what the store was made from) and
  ``chunk-NNNNN.npz`` files of :data:`CHUNK_ROWS` draws each, written atomically. Row
  ``clip * draws + draw`` holds the draw's seed (uint64), the teacher's top-k scores
  (float16) and their class indices (int32). A fill that stops keeps its finished chunks
  and resumes with the next; under ``torchrun`` rank ``r`` fills chunks ``r, r + world...``
  and every rank reads the whole store once all are written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..base.fileio import atomic_write
from ..data.datafiles import Datafile
from ..data.dataset import AudioDataset, Draw, draw_item, mix_clips
from ..data.labels import LabelTable, match_labels
from ..errors import AudioError, ConfigError, DataError
from ..features.augment import mixup_lambda
from ..features.contract import InputContract
from ..features.pipeline import Augmentation
from ..model.ast import ASTModel
from .clipstats import transformer_logits
from .resume import RunRefused

__all__ = ["CHUNK_ROWS", "ReplayDataset", "StoredOutputs", "Teacher", "TeacherStore", "draw_seeds", "soft_targets"]

log = logging.getLogger(__name__)

CHUNK_ROWS = 256  # draws per chunk file: what an interrupted fill loses at most
STORE_FORMAT = "ast-audio-teacher-store"


def draw_seeds(seed: int, clips: int, draws: int) -> np.ndarray:
    """``[clips, draws]`` uint64 seeds, one per (clip, draw), from the run's ``seed``."""
    seeds = np.empty((clips, draws), dtype=np.uint64)
    for clip in range(clips):
        for draw in range(draws):
            seeds[clip, draw] = np.random.SeedSequence([seed, clip, draw]).generate_state(1, np.uint64)[0]
    return seeds


class ReplayDataset(AudioDataset):
    """Training items by draw. A key is a store row (``clip * draws + draw``, what the teacher
    fills) or a sampler's :class:`~ast_audio.data.dataset.Draw` (epoch ``e`` takes draw
    ``(e - 1) % draws`` of each clip). ``labelled[clip]`` says whether a clip has labels
    (unlabelled clips have an all-zero target and are taught by the teacher alone); a mix
    has labels only when both its clips have. Each item adds its ``row`` and ``labelled``."""

    def __init__(self, datafile: Datafile, contract: InputContract, augmentation: Augmentation, seeds: np.ndarray,
                 labelled: np.ndarray, *, fbank_on: str = "loader", cache_dir: str | None = None):  # fmt: skip
        super().__init__(datafile, contract, augmentation, fbank_on=fbank_on, cache_dir=cache_dir)
        assert seeds.shape[0] == len(datafile) == len(labelled)
        self.seeds, self.labelled, self.draws = seeds, labelled, seeds.shape[1]

    def row_of(self, key: int | Draw) -> int:
        if isinstance(key, tuple):
            draw = Draw(*key)
            return draw.index * self.draws + (draw.epoch - 1) % self.draws
        return int(key)

    def _cropped(self, clip: int, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
        """A clip's waveform; an unlabelled recording longer than the model's input is cut to a
        window of that length at a random offset (its labels, if any, belong to the whole clip)."""
        waveform, rate = self._waveform(clip)
        if not self.labelled[clip]:
            samples = self.contract.replace(sample_rate=rate).samples
            if waveform.shape[-1] > samples:
                start = int(rng.integers(waveform.shape[-1] - samples + 1))
                waveform = waveform[start : start + samples]
        return waveform, rate

    def __getitem__(self, key: int | Draw) -> dict:
        row = self.row_of(key)
        clip = row // self.draws
        rng = np.random.default_rng(int(self.seeds.flat[row]))
        entries, classes = self.datafile.entries, self.num_classes
        try:
            waveform, rate = self._cropped(clip, rng)
            target, labelled = entries[clip].target(classes), bool(self.labelled[clip])
            if self.augmentation.mixes(rng):
                partner = int(rng.integers(len(self)))
                lam = mixup_lambda(rng)
                other, other_rate = self._cropped(partner, rng)
                waveform, target = mix_clips(waveform, rate, target, other, other_rate, entries[partner].target(classes),
                                             lam)  # fmt: skip
                labelled = labelled and bool(self.labelled[partner])
        except AudioError as err:  # an unreadable clip: collate decides
            return {"bad": (err.path or str(entries[clip].wav), err.reason)}
        item = draw_item(waveform, rate, torch.from_numpy(np.asarray(target, dtype=np.float32)), rng, self.contract,
                         self.augmentation)  # fmt: skip
        return {**item, "row": torch.tensor(row), "labelled": torch.tensor(float(labelled))}


class Teacher:
    """One or several checkpoints scoring model input ``[B, T, F]``: the mean of their scores
    (probabilities), in the first member's output order. The members must take the same input."""

    def __init__(self, models: list[tuple[str, ASTModel]], transformers_only: bool = False):
        first_source, first = models[0]
        self.sources = [source for source, _ in models]
        self.models = [model.eval() for _, model in models]
        self.transformers_only = transformers_only
        self.labels = LabelTable(mids=list(first.info.label_ids or first.info.labels or []),
                                 names=list(first.info.labels or []))  # fmt: skip
        if not first.info.labels:
            raise ConfigError(f"{first_source}: the teacher stores no label names; the student needs them")
        self.contract = first.input_contract.replace(thresholds=None)
        self.orders: list[list[int] | None] = [None]
        for source, model in models[1:]:
            if model.input_contract.replace(thresholds=None) != self.contract:
                raise ConfigError(f"{source}: the ensemble's teachers take different input (sample rate, mel bins, "
                                  f"length, statistics or activation) than {first_source}")  # fmt: skip
            try:
                self.orders.append(match_labels(self.labels, model.info.labels, model.info.label_ids,
                                                model.config.label_dim, source))  # fmt: skip
            except DataError as err:
                raise ConfigError(f"the teachers disagree on their labels: {err.reason}") from None

    @property
    def activation(self) -> str:
        return self.contract.activation

    @torch.no_grad()
    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        total = None
        for model, order in zip(self.models, self.orders, strict=True):
            logits = transformer_logits(model, features) if self.transformers_only else model(features).float()
            scores = logits.softmax(-1) if self.activation == "softmax" else logits.sigmoid()
            scores = scores if order is None else scores[:, order]
            total = scores if total is None else total + scores
        return total / len(self.models)


def soft_targets(scores: torch.Tensor, top: torch.Tensor, num_classes: int, activation: str) -> torch.Tensor:
    """Full ``[B, C]`` teacher targets from stored top-k ``scores`` and class indices ``top``
    ``[B, k]``: classes outside the top k score 0 (sigmoid), or share the probability the top
    k leave equally (softmax; each row then sums to 1)."""
    scores = scores.float()
    out = torch.zeros(len(scores), num_classes, dtype=torch.float32, device=scores.device)
    if activation == "softmax":
        rest = num_classes - scores.shape[1]
        if rest:
            out += ((1 - scores.sum(1)).clamp_min(0) / rest)[:, None]
        out.scatter_(1, top.long(), scores)
        return out / out.sum(1, keepdim=True)
    return out.scatter_(1, top.long(), scores)


@dataclass
class StoredOutputs:
    """The whole store in memory: per row, the seed, the top-k scores and their classes."""

    seeds: np.ndarray  # [rows] uint64
    scores: torch.Tensor  # [rows, k] float16
    top: torch.Tensor  # [rows, k] int32
    num_classes: int
    activation: str

    def targets(self, rows: torch.Tensor, device: torch.device | str) -> torch.Tensor:
        """The teacher's ``[B, C]`` scores of these draws (:func:`soft_targets`)."""
        rows = rows.cpu().long()
        return soft_targets(self.scores[rows].to(device), self.top[rows].to(device), self.num_classes, self.activation)


def clip_digest(datafile: Datafile, labelled: np.ndarray) -> str:
    """What identifies the clips of a store: their paths, order and whether each is labelled."""
    h = hashlib.sha256()
    for entry, flag in zip(datafile.entries, labelled, strict=True):
        h.update(os.fsencode(str(entry.wav)) + (b"\x01" if flag else b"\x00") + b"\n")
    return h.hexdigest()


class TeacherStore:
    """The store folder (see the module notes). ``settings`` is everything the outputs depend
    on (teachers, clips, draws, seed, augmentation, k, ...): a folder made with other settings
    is refused, so outputs are never mixed across runs."""

    def __init__(self, folder: str | os.PathLike, settings: dict, rows: int, k: int):
        self.folder, self.settings, self.rows, self.k = Path(folder), settings, rows, k

    @property
    def chunks(self) -> int:
        return -(-self.rows // CHUNK_ROWS)

    def chunk_path(self, chunk: int) -> Path:
        return self.folder / f"chunk-{chunk:05d}.npz"

    def open(self) -> None:
        """Write ``store.json`` (a new store) or check it against ``settings`` (a resumed fill)."""
        meta = self.folder / "store.json"
        wanted = {"format": STORE_FORMAT, "rows": self.rows, "k": self.k, **self.settings}
        if meta.exists():
            try:
                found = json.loads(meta.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise DataError(f"cannot read the teacher store ({err})", meta) from None
            if found.get("format") != STORE_FORMAT:
                raise DataError("not an ast-audio teacher store", meta)
            changed = [key for key in {**wanted, **found} if found.get(key) != wanted.get(key)]
            if changed:
                key = changed[0]
                there, now = (repr(side[key]) if key in side else "not set" for side in (found, wanted))
                raise RunRefused(f"this experiment folder holds a distillation with other settings ({key}: "
                                 f"{there} there, {now} now); use another --exp-dir",
                                 self.folder.parent)  # fmt: skip
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps(wanted, indent=2) + "\n"
        atomic_write(meta, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def missing(self, rank: int = 0, world: int = 1) -> list[int]:
        """The chunks of this rank's share (``rank, rank + world...``) not written yet."""
        return [c for c in range(rank, self.chunks, world) if not self.chunk_path(c).exists()]

    def fill(self, teacher: Teacher, dataset: ReplayDataset, device: torch.device, *, batch_size: int = 16,
             num_workers: int = 0, rank: int = 0, world: int = 1, progress: bool | None = None) -> int:  # fmt: skip
        """Run the teacher on the draws of this rank's missing chunks and write each chunk
        (atomically) as soon as it is done. Returns the number of chunks written."""
        from tqdm.auto import tqdm

        todo = self.missing(rank, world)
        bar = tqdm(todo, desc="teacher", leave=False, disable=None if progress is None else not progress)  # None: a terminal
        for chunk in bar:
            rows = list(range(chunk * CHUNK_ROWS, min((chunk + 1) * CHUNK_ROWS, self.rows)))
            loader = dataset.loader(batch_size, sampler=rows, num_workers=num_workers)
            scores, top = [], []
            for batch in loader:
                features, _ = dataset.model_input(batch, device)
                values, indices = teacher(features).topk(self.k, dim=-1)
                scores.append(values.half().cpu().numpy())
                top.append(indices.int().cpu().numpy())
            seeds = dataset.seeds.reshape(-1)[rows]
            arrays = {"rows": np.asarray(rows, dtype=np.int64), "seeds": seeds,
                      "scores": np.concatenate(scores), "top": np.concatenate(top)}  # fmt: skip
            atomic_write(self.chunk_path(chunk), lambda tmp, a=arrays: _save_npz(tmp, a))
        return len(todo)

    def read(self, num_classes: int, activation: str) -> StoredOutputs:
        """The complete store; a missing or damaged chunk is one line naming it."""
        seeds = np.zeros(self.rows, dtype=np.uint64)
        scores = np.zeros((self.rows, self.k), dtype=np.float16)
        top = np.zeros((self.rows, self.k), dtype=np.int32)
        for chunk in range(self.chunks):
            path = self.chunk_path(chunk)
            if not path.exists():
                raise DataError("missing from the teacher store (run the same command to fill it)", path)
            try:
                with np.load(path) as data:
                    rows = data["rows"]
                    seeds[rows], scores[rows], top[rows] = data["seeds"], data["scores"], data["top"]
            except (OSError, ValueError, KeyError, IndexError) as err:
                raise DataError(f"damaged teacher store chunk ({type(err).__name__}: {err}); delete it and run the "
                                "same command to compute it again", path) from None  # fmt: skip
        if np.any((top < 0) | (top >= num_classes)):
            raise DataError(f"the store names classes outside the teacher's {num_classes}", self.folder)
        return StoredOutputs(seeds, torch.from_numpy(scores), torch.from_numpy(top), num_classes, activation)


def _save_npz(tmp: Path, arrays: dict) -> None:
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
