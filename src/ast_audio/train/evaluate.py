"""Scoring models on labelled clips: one prediction routine for validation during training
and for ``ast-audio evaluate`` (single checkpoints and their ensemble), whose
:class:`Evaluation` (clips from a datafile JSON, a CSV or a folder of class folders, scores,
decisions) :mod:`ast_audio.train.report` turns into tables, figures and a page.

Under ``torchrun`` each rank predicts the clips ``rank, rank + world, ...`` and the
(index, prediction) pairs are gathered, so the metrics are computed over the whole set
exactly once, with no padding duplicates.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..base.fileio import atomic_write
from ..base.runtime import autocast, pick_device
from ..data.datafiles import Datafile, match_datafile, read_datafile
from ..data.dataset import AudioDataset
from ..data.labelled import data_kind, datafile_from
from ..data.labels import LabelTable, match_labels, read_label_csv
from ..errors import ConfigError, DataError
from .metrics import ClassCounts, Stats, calculate_stats, decisions

log = logging.getLogger(__name__)


def loss_value(logits: torch.Tensor, targets: torch.Tensor, loss: str, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean ``BCE`` (with logits, on the label vector) or ``CE`` (on its argmax, with
    ``label_smoothing`` as ``torch.nn.functional.cross_entropy`` takes it)."""
    if loss == "BCE":
        return F.binary_cross_entropy_with_logits(logits, targets)
    if loss == "CE":
        return F.cross_entropy(logits, targets.argmax(dim=1), label_smoothing=label_smoothing)
    raise ConfigError(f"unknown loss {loss!r}; use 'BCE' or 'CE'")


@dataclass
class Predictions:
    scores: np.ndarray  # [clips, classes] sigmoid of the logits, in datafile order
    loss: float  # mean loss over clips, computed on the logits
    logits: np.ndarray | None = None  # [clips, classes], in datafile order

    def probabilities(self, activation: str) -> np.ndarray:
        """The scores a user sees: ``softmax`` (single-label) or ``sigmoid`` of the logits."""
        if activation == "softmax":
            shifted = self.logits - self.logits.max(axis=1, keepdims=True)
            exp = np.exp(shifted)
            return exp / exp.sum(axis=1, keepdims=True)
        return self.scores


def predict_dataset(
    model: torch.nn.Module,
    dataset: AudioDataset,
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    loss: str = "BCE",
    autocast_dtype: torch.dtype | None = None,
) -> Predictions | None:
    """Sigmoid scores and mean loss of ``model`` over ``dataset``; every rank takes part,
    rank 0 gets the result (other ranks get ``None``)."""
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    indices = list(range(rank, len(dataset), world))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices), batch_size=batch_size, num_workers=num_workers,
        collate_fn=dataset.collate,
    )  # fmt: skip
    device = torch.device(device)
    model.eval()
    parts, raw, loss_sum = [], [], 0.0
    with torch.inference_mode():
        for batch in loader:
            features, targets = dataset.model_input(batch, device)
            with autocast(device, autocast_dtype):
                logits = model(features)
            logits = logits.float()
            loss_sum += float(loss_value(logits, targets, loss)) * len(features)
            parts.append(torch.sigmoid(logits).cpu().numpy())
            raw.append(logits.cpu().numpy())
    empty = np.zeros((0, dataset.num_classes), dtype=np.float32)
    scores = np.concatenate(parts) if parts else empty
    mine = (indices, scores, np.concatenate(raw) if raw else empty, loss_sum)
    if not distributed:
        gathered = [mine]
    else:
        gathered = [None] * world if rank == 0 else None
        dist.gather_object(mine, gathered, dst=0)
        if rank != 0:
            return None
    out = np.zeros((len(dataset), dataset.num_classes), dtype=np.float32)
    out_logits = np.zeros_like(out)
    total = 0.0
    for idx, part, part_logits, part_loss in gathered:
        out[idx], out_logits[idx] = part, part_logits
        total += part_loss
    return Predictions(scores=out, loss=total / max(len(dataset), 1), logits=out_logits)


# --------------------------------------------------------------------------- ast-audio evaluate

# The rows of ``evaluate --out``: the original's statistics (``avg_precision`` / ``avg_recall``
# are its middle points of each class's precision-recall curve, averaged; not a precision or
# recall at a decision), then the decisions' balanced accuracy and macro / micro F1.
STATS_COLUMNS = ["model", "mAP", "mAUC", "acc", "d_prime", "avg_precision", "avg_recall", "balanced_acc", "macro_F1",
                 "micro_F1"]  # fmt: skip
DECISION_COLUMNS = STATS_COLUMNS[-3:]


def stats_row(name: str, stats: Stats) -> list:
    decided = [stats.extra.get(column, math.nan) for column in DECISION_COLUMNS]
    return [name, stats.mAP, stats.mAUC, stats.acc, stats.d_prime, stats.average_precision, stats.average_recall,
            *decided]  # fmt: skip


@dataclass
class Evaluation:
    """Checkpoints (and their ensemble) scored on one set of labelled clips.

    ``results`` and ``probabilities`` have one row per checkpoint, then the ensemble when
    there are several; the last row is the one a report describes. Probabilities are the
    scores a user sees (``softmax`` for single-label models, ``sigmoid`` otherwise; the
    ensemble's is the members' mean). A single-label model decides each clip's label by
    its top score, a multi-label one by the per-class ``thresholds``.
    """

    datafile: Datafile
    results: list[tuple[str, Stats]]
    probabilities: list[np.ndarray]  # [clips, classes] per row of results
    activation: str
    thresholds: np.ndarray  # [classes]
    checkpoints: list[str]

    @property
    def top1(self) -> bool:
        return self.activation == "softmax"

    @property
    def labels(self) -> list[str]:
        return list(self.datafile.labels.names)

    def decisions(self, row: int = -1) -> np.ndarray:
        return decisions(self.probabilities[row], self.top1, self.thresholds)

    def counts(self, row: int = -1) -> ClassCounts:
        return ClassCounts.of(self.decisions(row), self.datafile.targets())


def checkpoint_labels(model: torch.nn.Module, source: object) -> LabelTable:
    """The label table a checkpoint stores (ids where it has them, else its names)."""
    info = model.info
    if not info.labels:
        raise ConfigError(f"{source}: the checkpoint stores no label names; give --label-csv")
    return LabelTable(mids=list(info.label_ids or info.labels), names=list(info.labels))


def evaluate(
    checkpoints: list[str | os.PathLike],
    data: str | os.PathLike,
    label_csv: str | os.PathLike | LabelTable | None = None,
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | None = None,
    dataset_mean: float | None = None,
    dataset_std: float | None = None,
    thresholds: list[float] | None = None,
) -> Evaluation:
    """Score each checkpoint (and, for several, the mean of their scores) on ``data``: a
    datafile JSON, a CSV or a folder of class folders (:func:`~ast_audio.data.labelled.datafile_from`),
    labelled against ``label_csv`` or, without it, the datafile's own label names (JSON) or
    the first checkpoint's labels (CSV, folder). Labels meet each checkpoint by name
    (:func:`~ast_audio.data.datafiles.match_datafile`), so a table in another order scores the
    same; the ensemble averages the members' scores in the first checkpoint's output order,
    each member's columns matched to it by name (members that do not share their label names
    are refused). Multi-label decisions use ``thresholds``, else the first checkpoint's
    calibrated ones, else 0.5."""
    from ..checkpoints.load import load_model

    device = pick_device(device)
    models = [(str(source), load_model(source, device=device)) for source in checkpoints]
    if label_csv is not None:
        labels = label_csv if isinstance(label_csv, LabelTable) else read_label_csv(label_csv)
        datafile = datafile_from(data, labels)
    elif data_kind(Path(data)) == "json":  # its own label names, matched to each checkpoint's below
        datafile = read_datafile(data, None)
    else:
        datafile = datafile_from(data, checkpoint_labels(models[0][1], models[0][0]))
    first = models[0][1].input_contract
    results: list[tuple[str, Stats]] = []
    members, shown = [], []
    reference: Datafile | None = None  # the data in the first checkpoint's output order
    for source, model in models:
        info, outputs = model.info, model.config.label_dim
        aligned = match_datafile(datafile, info.labels, info.label_ids, outputs, source)
        order = None if reference is None else _member_order(reference.labels, info.labels, info.label_ids, outputs, source)
        contract = model.input_contract
        if dataset_mean is not None:  # statistics given in place of the checkpoint's
            contract = contract.replace(mean=dataset_mean, std=dataset_std)
        dataset = AudioDataset(aligned, contract)
        preds = predict_dataset(model, dataset, batch_size=batch_size, num_workers=num_workers, device=device)
        results.append((source, calculate_stats(preds.scores, aligned.targets())))
        if reference is None:
            reference = aligned
        probabilities = preds.probabilities(first.activation)
        members.append(preds.scores if order is None else preds.scores[:, order])
        shown.append(probabilities if order is None else probabilities[:, order])
    assert reference is not None
    targets, n_labels = reference.targets(), len(reference.labels)
    if len(members) > 1:
        results.append(("ensemble", calculate_stats(np.mean(members, axis=0), targets)))
        shown.append(np.mean(shown, axis=0))
    cut = np.asarray(thresholds if thresholds is not None else first.thresholds or [0.5] * n_labels, dtype=np.float64)
    if cut.shape != (n_labels,):
        raise ConfigError(f"expected {n_labels} thresholds, one per label, got {cut.size}")
    ev = Evaluation(reference, results, shown, first.activation, cut, [source for source, _ in models])
    for row, (_, stats) in enumerate(results):
        counts = ev.counts(row)
        stats.extra.update(balanced_acc=counts.balanced_accuracy, macro_F1=counts.macro_f1, micro_F1=counts.micro_f1)
    return ev


def evaluate_checkpoints(
    checkpoints: list[str | os.PathLike],
    data: str | os.PathLike,
    label_csv: str | os.PathLike | None = None,
    **options,
) -> list[tuple[str, Stats]]:
    """Stats of each checkpoint on ``data`` and, for several, of the mean of their scores
    (:func:`evaluate`'s ``results``)."""
    return evaluate(checkpoints, data, label_csv, **options).results


def _member_order(reference: LabelTable, names, ids, outputs: int, source) -> list[int]:
    """The columns of an ensemble member that are the first member's outputs, matched by name."""
    try:
        return match_labels(reference, names, ids, outputs, source)
    except DataError as err:
        raise ConfigError(f"ensemble members disagree on their labels: {err.reason}") from None


def write_stats_csv(path: str | os.PathLike, results: list[tuple[str, Stats]]) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(STATS_COLUMNS)
            writer.writerows(stats_row(name, stats) for name, stats in results)

    return atomic_write(path, write)
