"""Predicting a prepared test list and writing ``submission.csv`` (the csv and hack recipes),
and per-class decision thresholds of a multi-label model (``thresholds.csv``)."""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np

from ..base.fileio import atomic_write
from ..data.datafiles import match_datafile, read_datafile
from ..errors import AudioError

log = logging.getLogger(__name__)

SUBMISSION = "submission.csv"
NOTES = "submission_notes.csv"


def majority_label(labels: list[str]) -> str:
    """The most frequent label (ties: the first in sorted order)."""
    counts = Counter(labels)
    return min(counts, key=lambda name: (-counts[name], name))


def predict_files(
    checkpoint: Path, wavs: list[str], *, batch_size: int = 16, device: str | None = None,
    thresholds: list[float] | None = None,
) -> list[tuple[str | None, str | None]]:  # fmt: skip
    """``[(label or None, error or None), ...]``: the model's top class for each file (with
    per-class ``thresholds``: the ``;``-joined classes whose sigmoid score reaches its
    threshold, in label order, possibly none), its input made as the checkpoint's input
    contract says (:func:`ast_audio.features.pipeline.file_input`: resampled to the model's rate, or at
    the file's own rate for a ``resample=false`` model)."""
    import torch

    from ..base.runtime import pick_device
    from ..checkpoints.load import load_model
    from ..features.pipeline import file_input

    device = pick_device(device)
    model = load_model(checkpoint, device=device)
    contract = model.input_contract
    results: list[tuple[str | None, str | None]] = [(None, None)] * len(wavs)
    for start in range(0, len(wavs), batch_size):
        batch, where = [], []
        for i in range(start, min(start + batch_size, len(wavs))):
            try:
                batch.append(file_input(wavs[i], contract))  # (T, F)
                where.append(i)
            except AudioError as err:
                results[i] = (None, err.reason)
        if not batch:
            continue
        with torch.inference_mode():
            logits = model(torch.stack(batch).to(device))  # (B, T, F) -> (B, C)
        if thresholds is not None:
            above = (logits.sigmoid().cpu() >= torch.tensor(thresholds)).tolist()  # (B, C)
            for i, row in zip(where, above, strict=True):
                results[i] = (";".join(name for name, on in zip(model.info.labels, row, strict=True) if on), None)
            continue
        for i, k in zip(where, logits.argmax(dim=1).tolist(), strict=True):
            results[i] = (model.info.labels[k], None)
    return results


def write_submission(
    out_dir: Path, entries: list[dict], predictions: list[tuple[str | None, str | None]], label_column: str,
    fallback: str, columns: list[str] | None = None,
) -> dict:  # fmt: skip
    """``out_dir/submission.csv`` (``filename,<label column>``, one row per entry, in order; with
    0/1 ``columns``, ``filename,<column>...`` and a 0 or 1 each, from ``;``-joined labels) and
    ``out_dir/submission_notes.csv`` (``filename,<label column>,note``: the rows filled with
    ``fallback`` because nothing decodes, and those predicted from a truncated file)."""
    rows, notes = [], []
    for entry, (label, error) in zip(entries, predictions, strict=True):
        error = entry.get("error") or error
        if error is not None:
            label = fallback
            notes.append([entry["filename"], label, f"unreadable ({error}): the most frequent training label"])
        elif entry.get("note"):
            notes.append([entry["filename"], label, entry["note"]])
        assert label is not None  # every readable file was predicted
        if columns:
            rows.append([entry["filename"], *("1" if c in label.split(";") else "0" for c in columns)])
        else:
            rows.append([entry["filename"], label])

    def writer(table: list[list[str]], header: list[str]):
        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh, lineterminator="\n")  # as sample_submission.csv: \n line ends
                w.writerow(header)
                w.writerows(table)

        return write

    submission = atomic_write(out_dir / SUBMISSION, writer(rows, ["filename", *(columns or [label_column])]))
    atomic_write(out_dir / NOTES, writer(notes, ["filename", label_column, "note"]))
    unreadable = sum(1 for row in notes if row[2].startswith("unreadable"))
    if unreadable:
        log.warning("%d test files cannot be decoded: they got %r, the most frequent training label (listed in %s)",
                    unreadable, fallback, out_dir / NOTES)  # fmt: skip
    return {"deliverable": str(submission), "notes": str(out_dir / NOTES), "test_files": len(rows),
            "unreadable": unreadable, "truncated": len(notes) - unreadable, "fallback_label": fallback}  # fmt: skip


def predict_test_list(
    checkpoint: Path, test_list: str | os.PathLike, out_dir: Path, *, label_column: str, fallback: str,
    batch_size: int, device: str | None, thresholds: list[float] | None = None, columns: list[str] | None = None,
) -> dict:  # fmt: skip
    """Predict every readable file of a prepared test list with ``checkpoint`` and write the submission."""
    entries = json.loads(Path(test_list).read_text(encoding="utf-8"))["data"]
    readable = [i for i, e in enumerate(entries) if not e["error"]]
    predicted = predict_files(checkpoint, [entries[i]["wav"] for i in readable], batch_size=batch_size, device=device,
                              thresholds=thresholds)  # fmt: skip
    predictions: list[tuple[str | None, str | None]] = [(None, None)] * len(entries)
    for i, prediction in zip(readable, predicted, strict=True):
        predictions[i] = prediction
    return write_submission(out_dir, entries, predictions, label_column, fallback, columns)


def write_thresholds(checkpoint: Path, valid: str | os.PathLike, label_csv: str | os.PathLike, out: Path,
                     device: str | None = None) -> list[float]:  # fmt: skip
    """Per-class thresholds of a multi-label model: the best F1 of each class on the validation
    clips (:func:`ast_audio.train.metrics.f1_thresholds`), written to ``out`` as ``label,threshold,f1``."""
    from ..base.runtime import pick_device
    from ..checkpoints.load import load_model
    from ..data.dataset import AudioDataset
    from ..train.evaluate import predict_dataset
    from ..train.metrics import f1_thresholds

    model = load_model(checkpoint, device=pick_device(device))
    datafile = match_datafile(read_datafile(valid, label_csv), model.info.labels, model.info.label_ids,
                              model.config.label_dim, checkpoint)  # fmt: skip
    scores = predict_dataset(model, AudioDataset(datafile, model.input_contract), device=pick_device(device)).scores
    thresholds, f1 = f1_thresholds(scores, datafile.targets())
    table = [[name, f"{t:.6g}", "" if np.isnan(v) else f"{v:.4f}"]
             for name, t, v in zip(datafile.labels.names, thresholds, f1, strict=True)]  # fmt: skip

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["label", "threshold", "f1"])
            w.writerows(table)

    atomic_write(out, write)
    return [float(t) for t in thresholds]
