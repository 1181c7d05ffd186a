"""What ``ast-audio evaluate`` writes besides its totals: per-class table, confusion, mistakes.

From an :class:`~ast_audio.train.evaluate.Evaluation` (its last row: the checkpoint, or the
ensemble of several), :func:`write_report_files` writes into a folder

- ``stats.csv``: the rows ``evaluate --out`` writes;
- ``classes.csv``: per class ``label,precision,recall,f1,ap,support`` (an empty cell where a
  value is undefined: precision of a class never predicted, recall and AP of a class with no
  clip). AP is the ranking-based average precision whose mean is the printed mAP;
  precision, recall and F1 are those of the model's decisions;
- ``confusion.png`` and ``confusion.csv``: a single-label model's decisions are its top
  score, and the matrix counts ``[true, predicted]`` clips (a clip with several true labels
  counts once under each). A multi-label model decides each class at its threshold (the
  checkpoint's calibrated ones, else 0.5) and there is no matrix: the grid has one row per
  class with its true positives, misses, false positives and true negatives;
- ``mistakes.csv``: ``file,true_label,predicted_label,score``, most confident first, at most
  ``mistakes`` rows (several labels joined by ``;``). For a single-label model a mistake is a
  clip whose top label is not a true one, and the score is the probability of that top label.
  For a multi-label model it is a clip whose decided labels differ from the true ones; the
  score is that of its most confident wrong decision (the false positive or the miss farthest
  from its threshold), and clips are ordered by that distance;
- ``curves.png`` when the checkpoint lies in a run folder (beside ``result.csv``, or in its
  ``models/``): the training curves.

:func:`write_html` puts them into one page (:mod:`ast_audio.train.report_html`), and
:func:`write_evaluation_report` does all of it for a recipe.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..base.fileio import atomic_write
from ..base.plots import plot_confusion, plot_curves
from .evaluate import STATS_COLUMNS, Evaluation, evaluate, stats_row, write_stats_csv
from .metrics import confusion_matrix

log = logging.getLogger(__name__)

__all__ = ["Mistake", "class_rows", "find_mistakes", "summary_lines", "write_evaluation_report", "write_report_files"]

CLASS_COLUMNS = ["label", "precision", "recall", "f1", "ap", "support"]
MISTAKE_COLUMNS = ["file", "true_label", "predicted_label", "score"]
MULTI_COUNT_COLUMNS = ["true positive", "missed", "false positive", "true negative"]
SINGLE_SUMMARY = ["acc", "balanced_acc", "macro_F1", "mAP", "mAUC", "d_prime"]
MULTI_SUMMARY = ["mAP", "mAUC", "d_prime", "macro_F1", "micro_F1"]
PRINTED_CLASSES = 50  # more classes than this: the per-class table goes to classes.csv only


@dataclass
class Mistake:
    index: int  # clip in the datafile
    file: Path
    true: list[str]
    predicted: list[str]
    score: float
    confidence: float  # what orders the list: the score, or the distance from the threshold


def class_rows(ev: Evaluation) -> list[dict]:
    """Per class: ``label, precision, recall, f1, ap, support`` (NaN where undefined)."""
    counts, stats = ev.counts(), ev.results[-1][1]
    return [
        {"label": name, "precision": p, "recall": r, "f1": f, "ap": ap, "support": int(n)}
        for name, p, r, f, ap, n in zip(ev.labels, counts.precision, counts.recall, counts.f1, stats.ap,
                                        counts.support, strict=True)
    ]  # fmt: skip


def summary(ev: Evaluation, row: int = -1) -> dict[str, float]:
    """The totals that mean something for the model's kind (:data:`SINGLE_SUMMARY` or :data:`MULTI_SUMMARY`)."""
    values = dict(zip(STATS_COLUMNS, stats_row(*ev.results[row]), strict=True))
    return {key: values[key] for key in (SINGLE_SUMMARY if ev.top1 else MULTI_SUMMARY)}


def find_mistakes(ev: Evaluation, limit: int | None = None) -> list[Mistake]:
    """The clips decided wrong, most confident first (see the module's description)."""
    probs, decided, truth = ev.probabilities[-1], ev.decisions(), ev.datafile.targets() > 0.5
    names = np.asarray(ev.labels, dtype=object)
    found = []
    for i, entry in enumerate(ev.datafile.entries):
        if ev.top1:
            top = int(probs[i].argmax())
            if truth[i, top]:
                continue
            score = confidence = float(probs[i, top])
        else:
            wrong = np.flatnonzero(decided[i] != truth[i])
            if not wrong.size:
                continue
            distance = np.abs(probs[i, wrong] - ev.thresholds[wrong])
            worst = wrong[int(distance.argmax())]
            score, confidence = float(probs[i, worst]), float(distance.max())
        found.append(Mistake(i, entry.wav, list(names[truth[i]]), list(names[decided[i]]), score, confidence))
    found.sort(key=lambda m: (-m.confidence, m.index))
    return found if limit is None else found[:limit]


def _cell(value: float) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6g}"


def _write_rows(path: Path, header: list[str], rows: list[list]) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)

    return atomic_write(path, write)


def confusion(ev: Evaluation) -> tuple[np.ndarray, list[str]]:
    """``(grid, column names)``: the single-label confusion matrix, or the multi-label per-class counts."""
    truth, decided = ev.datafile.targets() > 0.5, ev.decisions()
    if ev.top1:
        clips, true_idx = np.nonzero(truth)  # one pair per true label of each clip
        return confusion_matrix(true_idx, decided.argmax(1)[clips], len(ev.labels)), ev.labels
    counts = ev.counts()
    negatives = (~decided & ~truth).sum(0)
    return np.stack([counts.tp, counts.fn, counts.fp, negatives], axis=1), MULTI_COUNT_COLUMNS


def run_folder(checkpoint: str | os.PathLike) -> Path | None:
    """The training run a checkpoint file belongs to: its folder or the one above, whichever
    holds ``result.csv`` (``None`` for a published name or a checkpoint outside a run)."""
    path = Path(checkpoint)
    if not path.is_file():
        return None
    return next((f for f in (path.parent, path.parent.parent) if (f / "result.csv").is_file()), None)


def _curves(checkpoint: str, out: Path) -> Path | None:
    folder = run_folder(checkpoint)
    if folder is None:
        return None
    try:
        rows = np.loadtxt(folder / "result.csv", delimiter=",", ndmin=2)
    except (OSError, ValueError) as err:
        log.warning("%s: no training curves (%s)", folder / "result.csv", err)
        return None
    if not len(rows) or rows.shape[1] < 8:
        log.warning("%s: no training curves (not the result.csv of ast-audio train)", folder / "result.csv")
        return None
    try:
        metric = str(json.loads((folder / "config.json").read_text())["config"]["metrics"])
    except (OSError, ValueError, KeyError, TypeError):
        metric = "main metric"
    return plot_curves(rows, out / "curves.png", metric)


def write_report_files(ev: Evaluation, out_dir: str | os.PathLike, mistakes: int = 20) -> dict[str, Path]:
    """Write the tables and figures of the module's description into ``out_dir``; returns them by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"stats": write_stats_csv(out / "stats.csv", ev.results)}
    rows = [[r["label"], *(_cell(r[k]) for k in CLASS_COLUMNS[1:5]), r["support"]] for r in class_rows(ev)]
    files["classes"] = _write_rows(out / "classes.csv", CLASS_COLUMNS, rows)
    grid, columns = confusion(ev)
    files["confusion_csv"] = _write_rows(out / "confusion.csv", ["true \\ predicted" if ev.top1 else "label", *columns],
                                         [[name, *map(int, counts)] for name, counts in zip(ev.labels, grid, strict=True)])  # fmt: skip
    title = "confusion (top score)" if ev.top1 else "decisions per class at the thresholds"
    files["confusion"] = plot_confusion(grid, ev.labels, out / "confusion.png", title,
                                        **({} if ev.top1 else {"columns": columns, "xlabel": "", "ylabel": "label"}))  # fmt: skip
    listed = find_mistakes(ev, mistakes)
    files["mistakes"] = _write_rows(out / "mistakes.csv", MISTAKE_COLUMNS,
                                    [[str(m.file), ";".join(m.true), ";".join(m.predicted), f"{m.score:.6g}"] for m in listed])  # fmt: skip
    curves = _curves(ev.checkpoints[0], out)
    if curves is not None:
        files["curves"] = curves
    return files


def _fmt(value: float) -> str:
    return "-" if isinstance(value, float) and math.isnan(value) else f"{value:.4f}" if isinstance(value, float) else str(value)


def summary_lines(ev: Evaluation, mistakes: int = 5) -> list[str]:
    """What ``evaluate`` prints: the totals of every row, the per-class table, the first mistakes."""
    keys = SINGLE_SUMMARY if ev.top1 else MULTI_SUMMARY
    lines = ["\t".join(["model", *keys])]
    for row, (name, _) in enumerate(ev.results):
        lines.append("\t".join([name, *(f"{value:.6f}" for value in summary(ev, row).values())]))
    rows = class_rows(ev)
    if len(rows) <= PRINTED_CLASSES:
        lines.append("\t".join(CLASS_COLUMNS))
        lines += ["\t".join([r["label"], *(_fmt(r[k]) for k in CLASS_COLUMNS[1:])]) for r in rows]
    else:
        lines.append(f"({len(rows)} classes: the per-class table is written by --out-dir or --report)")
    found = find_mistakes(ev)
    lines.append(f"{len(found)} of {len(ev.datafile)} clips decided wrong" + (", most confident first:" if found else ""))
    lines += [f"  {m.file}\t{';'.join(m.true)} -> {';'.join(m.predicted) or '(none)'}\t{m.score:.4f}" for m in found[:mistakes]]
    return lines


def write_html(ev: Evaluation, path: str | os.PathLike, files: dict[str, Path], mistakes: int = 20) -> Path:
    """The one-page report (:func:`ast_audio.train.report_html.render`) at ``path``."""
    from .report_html import render

    page = render(ev, class_rows(ev), summary(ev), find_mistakes(ev, mistakes), files, Path(path).parent)
    return atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))


def write_evaluation_report(
    checkpoint: str | os.PathLike, data: str | os.PathLike, label_csv: str | os.PathLike | None, out_dir: str | os.PathLike,
    *, thresholds: list[float] | None = None, mistakes: int = 20, device: str | None = None,
) -> dict[str, Path]:  # fmt: skip
    """Evaluate ``checkpoint`` on ``data`` (datafile JSON, CSV or class folders) and write the
    tables, figures and ``report.html`` into ``out_dir``; returns the files by name."""
    ev = evaluate([checkpoint], data, label_csv, device=device, thresholds=thresholds)
    files = write_report_files(ev, out_dir, mistakes)
    files["report"] = write_html(ev, Path(out_dir) / "report.html", files, mistakes)
    return files
