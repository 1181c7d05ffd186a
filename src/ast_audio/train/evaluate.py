"""Scoring models on a datafile: one prediction routine for validation during training
and for ``ast-audio evaluate`` (single checkpoints and their ensemble).

Under ``torchrun`` each rank predicts the clips ``rank, rank + world, ...`` and the
(index, prediction) pairs are gathered, so the metrics are computed over the whole set
exactly once, with no padding duplicates.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..base.fileio import atomic_write
from ..base.runtime import autocast, pick_device
from ..data.datafiles import match_datafile, read_datafile
from ..data.dataset import AudioDataset
from ..data.labels import LabelTable, match_labels, read_label_csv
from ..errors import ConfigError, DataError
from .metrics import Stats, calculate_stats

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
    parts, loss_sum = [], 0.0
    with torch.inference_mode():
        for batch in loader:
            features, targets = dataset.model_input(batch, device)
            with autocast(device, autocast_dtype):
                logits = model(features)
            logits = logits.float()
            loss_sum += float(loss_value(logits, targets, loss)) * len(features)
            parts.append(torch.sigmoid(logits).cpu().numpy())
    scores = np.concatenate(parts) if parts else np.zeros((0, dataset.num_classes), dtype=np.float32)
    mine = (indices, scores, loss_sum)
    if not distributed:
        gathered = [mine]
    else:
        gathered = [None] * world if rank == 0 else None
        dist.gather_object(mine, gathered, dst=0)
        if rank != 0:
            return None
    out = np.zeros((len(dataset), dataset.num_classes), dtype=np.float32)
    total = 0.0
    for idx, part, part_loss in gathered:
        out[idx] = part
        total += part_loss
    return Predictions(scores=out, loss=total / max(len(dataset), 1))


# --------------------------------------------------------------------------- ast-audio evaluate


STATS_COLUMNS = ["model", "mAP", "mAUC", "acc", "d_prime", "avg_precision", "avg_recall"]


def stats_row(name: str, stats: Stats) -> list:
    return [name, stats.mAP, stats.mAUC, stats.acc, stats.d_prime, stats.average_precision, stats.average_recall]


def evaluate_checkpoints(
    checkpoints: list[str | os.PathLike],
    data: str | os.PathLike,
    label_csv: str | os.PathLike | None = None,
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | None = None,
    dataset_mean: float | None = None,
    dataset_std: float | None = None,
) -> list[tuple[str, Stats]]:
    """Stats of each checkpoint on ``data`` and, for several, of the mean of their scores.

    Labels meet each checkpoint by name (:func:`~ast_audio.data.datafiles.match_datafile`):
    those of ``label_csv``, or without it those the datafile names. The ensemble's scores are
    averaged in the first checkpoint's output order, each member's columns matched to it by
    name; members that do not share their label names are refused."""
    from ..checkpoints.load import load_model

    datafile = read_datafile(data, None if label_csv is None else read_label_csv(label_csv))
    device = pick_device(device)
    results: list[tuple[str, Stats]] = []
    members = []
    reference = None  # the first checkpoint's labels, in its output order
    for source in checkpoints:
        model = load_model(source, device=device)
        info, outputs = model.info, model.config.label_dim
        aligned = match_datafile(datafile, info.labels, info.label_ids, outputs, source)
        order = None if reference is None else _member_order(reference, info.labels, info.label_ids, outputs, source)
        contract = model.input_contract
        if dataset_mean is not None:  # statistics given in place of the checkpoint's
            contract = contract.replace(mean=dataset_mean, std=dataset_std)
        dataset = AudioDataset(aligned, contract)
        preds = predict_dataset(model, dataset, batch_size=batch_size, num_workers=num_workers, device=device)
        results.append((str(source), calculate_stats(preds.scores, aligned.targets())))
        if reference is None:
            reference, targets = aligned.labels, aligned.targets()
        members.append(preds.scores if order is None else preds.scores[:, order])
    if len(members) > 1:
        results.append(("ensemble", calculate_stats(np.mean(members, axis=0), targets)))
    return results


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
