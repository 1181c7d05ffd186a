"""ESC-50: five-fold cross-validation from ``ESC-50-master`` as distributed.

Layout read: ``meta/esc50.csv`` (``filename,fold,target,category,esc10,src_file,take``)
and ``audio/{fold}-{clip}-{take}-{target}.wav`` (5 s, 44.1 kHz mono). The CSV is the
authority: each row's ``target`` is the class index. When every (target, category) pair is
ESC-50's, the shipped label table is used (mids ``/m/07rwj00`` .. ``/m/07rwj49``). Another
dataset in ESC-50's layout (``ast-audio synth`` writes one) has its own categories: then the
table is taken from the CSV (targets 0..N-1, one category each, mids ``/m/esc_{target}``). A
target listed with two categories means a damaged CSV and stops prepare.

Prepare writes, in the original's names, ``esc_train_data_{k}.json`` (every fold but k)
and ``esc_eval_data_{k}.json`` (fold k) for k = 1..5, ``esc_class_labels_indices.csv``,
``bad_files.txt`` and ``prepared.json``. Clips stay 44.1 kHz on disk and are resampled
to 16 kHz on the fly by the loader (see :mod:`ast_audio.recipes.common`).

The recipe trains one run per fold in ``EXP/fold{k}``, validating on the held-out fold
(as the original did: its validation set is the test fold). The deliverable follows the
original ``get_esc_result.py``: the folds' ``result.csv`` are averaged epoch by epoch
into ``EXP/result.csv``; the best epoch is the one with the best *averaged* accuracy
(not each fold's own best, which would be optimistic); ``EXP/best_result.csv`` is that
averaged row, and ``EXP/acc_fold.csv`` holds each fold's accuracy at that epoch, one
per line in the order of ``folds``, then their mean (no header, as the original).

``folds`` (a ``[recipe]`` option, default ``[1, 2, 3, 4, 5]``) runs a subset. With
``audioset_pretrain = false`` the learning rate becomes ``lr_without_audioset``
(1e-4), as the original script chose, unless ``lr`` is set explicitly.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

from ..data.datafiles import write_datafile
from ..data.labels import LabelTable, read_label_csv, write_label_table
from ..errors import ConfigError, DataError
from .common import check_clips, ensure_prepared, fingerprint, fold_summary, require_file, write_report

log = logging.getLogger(__name__)

FOLDS = (1, 2, 3, 4, 5)
LABEL_CSV = "esc_class_labels_indices.csv"


def train_datafile(out: Path, fold: int) -> Path:
    return out / f"esc_train_data_{fold}.json"


def eval_datafile(out: Path, fold: int) -> Path:
    return out / f"esc_eval_data_{fold}.json"


def read_meta(root: Path) -> tuple[list[tuple[Path, int, int]], LabelTable]:
    """``[(audio path, fold, target), ...]`` from ``meta/esc50.csv``, checked, and the label table."""
    meta = require_file(root / "meta" / "esc50.csv", "ESC-50 metadata (meta/esc50.csv under ESC-50-master)")
    categories: dict[int, str] = {}
    try:
        with open(meta, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = {"filename", "fold", "target", "category"} - set(reader.fieldnames or [])
            if missing:
                raise DataError(f"expected the columns filename,fold,target,category,...; missing {sorted(missing)}", meta)
            rows = []
            for line, row in enumerate(reader, start=2):
                try:
                    fold, target = int(row["fold"]), int(row["target"])
                except (TypeError, ValueError):
                    raise DataError(f"line {line}: fold and target must be integers", meta) from None
                if fold not in FOLDS or target < 0:
                    raise DataError(f"line {line}: fold {fold} or target {target} out of range (1-5, >= 0)", meta)
                known = categories.setdefault(target, row["category"])
                if row["category"] != known:
                    raise DataError(
                        f"line {line}: target {target} is {row['category']!r} here but {known!r} above", meta
                    )
                if not row["filename"]:
                    raise DataError(f"line {line}: empty filename", meta)
                rows.append((root / "audio" / row["filename"], fold, target))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read: {err}", meta) from None
    if not rows:
        raise DataError("no clips listed", meta)
    return rows, _label_table(categories, meta)


def _label_table(categories: dict[int, str], meta: Path) -> LabelTable:
    esc50 = read_label_csv("esc50")
    if all(t < len(esc50) and esc50.names[t] == name for t, name in categories.items()):
        return esc50
    if sorted(categories) != list(range(len(categories))):
        raise DataError(f"targets must be 0..N-1 for a dataset with its own classes; found {sorted(categories)[:8]}", meta)
    log.info("%s: %d classes that are not ESC-50's; the label table comes from the CSV", meta, len(categories))
    names = [categories[t] for t in range(len(categories))]
    return LabelTable(mids=[f"/m/esc_{t}" for t in range(len(names))], names=names)


def prepare(
    root: str | os.PathLike, out: str | os.PathLike, *, workers: int | None = None, force: bool = True,
    progress: bool | None = None,
) -> dict:  # fmt: skip
    """``ESC-50-master`` -> five folds of datafiles + label CSV in ``out``; returns the summary."""
    root, out = Path(root).expanduser().resolve(), Path(out).expanduser().resolve()
    inputs = {"root": str(root), "meta": fingerprint(root / "meta" / "esc50.csv")}
    return ensure_prepared(out, "esc50", inputs, lambda: _prepare(root, out, workers, progress), force=force)


def _prepare(root: Path, out: Path, workers: int | None, progress: bool | None) -> dict:
    rows, labels = read_meta(root)
    bad = check_clips([path for path, _, _ in rows], workers, progress)
    mids = labels.mids
    good = [(path, fold, target) for path, fold, target in rows if path not in bad]
    counts = {}
    for k in FOLDS:
        held_out = [(p, [mids[t]]) for p, f, t in good if f == k]
        if not held_out:
            raise DataError(f"fold {k} has no usable clip", root / "meta" / "esc50.csv")
        write_datafile(train_datafile(out, k), [(p, [mids[t]]) for p, f, t in good if f != k])
        write_datafile(eval_datafile(out, k), held_out)
        counts[str(k)] = len(held_out)
    label_csv = write_label_table(labels, out / LABEL_CSV)
    report = write_report(out, [(path, bad[path]) for path, _, _ in rows if path in bad])
    return {
        "label_csv": str(label_csv), "n_class": len(labels), "clips": len(good), "clips_per_fold": counts,
        "bad_files": len(bad),
        "report": str(report),
    }  # fmt: skip


# --------------------------------------------------------------------------- recipe


def check_folds(folds: object) -> list[int]:
    folds = folds if isinstance(folds, list) else [folds]
    if not folds or any(not isinstance(k, int) or k not in FOLDS for k in folds) or len(set(folds)) != len(folds):
        raise ConfigError(f"folds must be distinct numbers among 1-5, got {folds!r}")
    return folds


def result_lines(result: dict) -> list[str]:
    """What ``ast-audio recipe esc50`` prints of :func:`run`'s result: each fold's accuracy, then the mean."""
    lines = [f"fold {fold}: accuracy {acc:.4f}" for fold, acc in zip(result["folds"], result["accuracy"], strict=True)]
    lines.append(f"mean accuracy {result['mean']:.4f} (epoch {result['best_epoch']}, best by the folds' mean)")
    return lines


def run(ctx) -> dict:
    from ..train.config import resolve_train_config
    from ..train.loop import train

    folds = check_folds(ctx.options["folds"])
    summary = prepare(ctx.root, ctx.data_dir, workers=ctx.workers, force=ctx.force_prepare)
    values = dict(ctx.train)
    if values.get("audioset_pretrain") is False and "lr" not in ctx.user_set:
        values["lr"] = float(ctx.options["lr_without_audioset"])
    for k in folds:
        log.info("ESC-50 fold %d of %s", k, folds)
        train(resolve_train_config(values, {
            "data_train": str(train_datafile(ctx.data_dir, k)), "data_val": str(eval_datafile(ctx.data_dir, k)),
            "label_csv": summary["label_csv"], "n_class": summary["n_class"], "exp_dir": str(ctx.exp_dir / f"fold{k}"),
        }))  # fmt: skip
    acc, best_epoch = fold_summary(ctx.exp_dir, folds)
    return {
        "deliverable": str(ctx.exp_dir / "acc_fold.csv"), "folds": folds, "accuracy": acc[:-1], "mean": acc[-1],
        "best_epoch": best_epoch,
    }  # fmt: skip
