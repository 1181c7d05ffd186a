"""Any CSV-labelled dataset (the seed's "hack" recipe, done properly).

Layout read: ``train.csv`` with a ``filename`` column and one label column (e.g.
``emotion``; found by itself when it is the only other column; ``a;b`` for several labels
of one clip), or several 0/1 columns, one per class (taken as such when no label column is
named and every value besides ``filename`` is 0 or 1), the files under a folder
(``TrainAudioFiles/``: wav, mp3, flac, ogg mixed; a name without an extension is also
looked up with each of them), and optionally ``test.csv`` with ``filename`` only under
``TestAudioFiles/``.

Prepare:
- **labels from the data**: the distinct values of the label column among the usable
  clips, sorted, become ``class_labels_indices.csv`` (``mid`` = ``display_name`` = the
  value); no hand-written label table;
- **every file checked** (decoded once, completely): missing, empty, undecodable or
  truncated files, and rows without a label, are listed in ``bad_files.txt``
  (``path: reason``) and left out; no hand-kept list of corrupt files;
- **multi-label** (a ``;`` in a label, or 0/1 columns): the labels are the names found
  (sorted) or the 0/1 columns (in their order); the run trains with BCE and mAP (unless
  ``loss``/``metrics`` are set) and writes ``EXP/thresholds.csv`` (``label,threshold,f1``:
  per class the score threshold with the best F1 on the validation clips), with which the
  test files are labelled (``a;b``, or a 0/1 per column);
- **stratified validation split**: within each class (in label order; for multi-label
  data, each distinct label set is a stratum) the clips are
  shuffled by ``numpy.random.default_rng(seed)`` (one generator, drawn class after
  class; ``seed`` = ``--seed``/``split_seed``, default 0) and ``round(n * valid_fraction)``
  of them, at least one when the class has two clips or more and never all of them, go
  to validation; both datafiles keep the order of ``train.csv``;
- **cross-validation** (``folds = K``, K >= 2): the usable clips are also dealt into K
  stratified folds (per stratum, shuffled by the same seeded generator, dealt in turn):
  ``fold{k}_train.json`` / ``fold{k}_valid.json``; the recipe then trains one run per fold in
  ``EXP/fold{k}`` and writes ``EXP/acc_fold.csv`` (``map_fold.csv`` for mAP) as the ESC-50
  recipe does (each fold's main metric at the epoch best on the folds' mean, then the mean),
  without test predictions;
- **class imbalance**: ``--set bal=true`` draws training clips with the balanced sampler,
  weights from the training datafile's label counts (``1000 / count`` summed over a clip's labels);
- **normalisation statistics** of the training clips (mean and std of the un-normalised,
  un-augmented fbanks padded/cut to ``audio_length`` frames, as ``ast-audio stats``) in
  ``stats.json``; the recipe trains with them (unless ``dataset_mean``/``dataset_std``
  are set);
- **the test list kept unlabelled**: ``test_list.json`` holds ``filename``, ``wav``,
  ``error`` (``null``, or why nothing of the file decodes) and ``note`` (``null``, or why
  the prediction rests on part of the file: a truncated file is predicted from what
  decodes) for every row of ``test.csv``, in order, duplicates included; unreadable test
  files are also in ``bad_files.txt``.

The recipe trains on train, keeps the best model on valid (best-on-valid, by the main
metric), writes its evaluation report on the validation clips in ``EXP/report/``
(``report.html``, per-class table, confusion, mistakes; multi-label decisions at the
thresholds of ``thresholds.csv``) and predicts every test file with it. ``EXP/submission.csv`` is in the format of
a ``sample_submission.csv``: the header ``filename,<label column>``, then one row per row
of ``test.csv`` in its order, each with a label of the training set, ``\n`` line ends and
nothing else. A test file that cannot be decoded still gets a row, with the most frequent
training label (ties: the first in label order); ``EXP/submission_notes.csv``
(``filename,<label column>,note``, always written) lists every such row and every row
predicted from a truncated file, with the reason.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

from ..audio.io import AUDIO_EXTENSIONS as EXTENSIONS
from ..audio.io import load_audio
from ..base.checks import is_int
from ..data.datafiles import read_datafile, write_datafile
from ..data.labels import LabelTable, read_label_csv, write_label_table
from ..data.splits import check_valid_fraction, stratified_folds, stratified_split
from ..errors import AudioError, ConfigError, DataError
from .common import (
    check_clips,
    ensure_prepared,
    fingerprint,
    fold_datafile,
    train_folds,
    write_report,
    write_text_atomic,
)
from .submission import majority_label, predict_test_list, write_thresholds

log = logging.getLogger(__name__)

LABEL_CSV = "class_labels_indices.csv"
TEST_LIST = "test_list.json"
THRESHOLDS = "thresholds.csv"
REPORT_DIR = "report"


def _read_csv(path: Path, what: str) -> tuple[list[str], list[tuple[int, dict]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = [(number, row) for number, row in enumerate(reader, start=2)]
            columns = [c.strip() for c in reader.fieldnames or []]
    except FileNotFoundError:
        raise DataError(f"{what} not found", path) from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read: {err}", path) from None
    if "filename" not in columns:
        raise DataError(f"expected a 'filename' column, found {columns}", path)
    rows = [(n, {(k or "").strip(): (v or "").strip() for k, v in row.items()}) for n, row in rows]
    return columns, rows


def _label_column(columns: list[str], wanted: str | None, path: Path) -> str:
    if wanted:
        if wanted not in columns:
            raise ConfigError(f"{path}: no column {wanted!r} (columns: {', '.join(columns)})")
        return wanted
    others = [c for c in columns if c != "filename"]
    if len(others) != 1:
        raise ConfigError(f"{path}: say which column holds the labels (--label-column); columns: {', '.join(columns)}")
    return others[0]


def _audio_path(folder: Path, filename: str) -> Path:
    path = folder / filename
    if path.suffix or path.exists():
        return path
    for ext in EXTENSIONS:
        if path.with_name(path.name + ext).exists():
            return path.with_name(path.name + ext)
    return path


def read_labelled(
    train_csv: Path, audio_dir: Path, label_column: str | None, workers: int | None, progress: bool | None
) -> tuple[str, list[tuple[Path, str]], dict[Path, str]]:
    """``(label column, [(path, label), ...] in file order, {path: reason} of the unusable ones)``:
    every listed file decoded once; rows without a label are unusable too."""
    column, _, items, bad = read_labels(train_csv, audio_dir, label_column, workers, progress, multilabel=False)
    return column, [(path, labels[0] if labels else "") for path, labels in items], bad


def _binary_columns(columns: list[str], rows: list[tuple[int, dict]]) -> list[str] | None:
    """The columns besides ``filename`` when there are several and every value of them is 0 or 1."""
    others = [c for c in columns if c != "filename"]
    if len(others) < 2 or not all(row.get(c, "") in ("0", "1") for _, row in rows for c in others):
        return None
    return others


def read_labels(
    train_csv: Path, audio_dir: Path, label_column: str | None, workers: int | None, progress: bool | None,
    multilabel: bool = True,
) -> tuple[str, list[str] | None, list[tuple[Path, list[str]]], dict[Path, str]]:  # fmt: skip
    """``(label column, 0/1 columns or None, [(path, [label, ...]), ...] in file order, {path: reason}
    of the unusable ones)``. Labels are one column's value, several of them separated by ``;``
    (multi-label), or (no ``label_column`` and several columns besides ``filename``, all 0/1) the
    names of the columns holding 1. Every listed file is decoded once; rows without a label are
    unusable too."""
    if not audio_dir.is_dir():
        raise DataError("audio folder not found", audio_dir)
    columns, rows = _read_csv(train_csv, "training CSV")
    binary = _binary_columns(columns, rows) if multilabel and not label_column else None
    column = ";".join(binary) if binary else _label_column(columns, label_column, train_csv)
    items: list[tuple[Path, list[str]]] = []
    seen: set[Path] = set()
    unlabelled: dict[Path, str] = {}
    for number, row in rows:
        if not row.get("filename"):
            raise DataError(f"line {number}: empty filename", train_csv)
        path = _audio_path(audio_dir, row["filename"])
        if path in seen:
            log.warning("%s line %d: %s is listed again; the first row is used", train_csv, number, row["filename"])
            continue
        seen.add(path)
        if binary:
            labels = [c for c in binary if row[c] == "1"]
        else:
            value = row.get(column, "")
            labels = [v.strip() for v in value.split(";") if v.strip()] if multilabel else [value] if value else []
            if "," in value:
                raise DataError(f"line {number}: label {value!r} contains a comma", train_csv)
        if not labels:
            where = "in the 0/1 columns" if binary else f"in column {column!r}"
            unlabelled[path] = f"no label {where} (line {number} of {train_csv.name})"
        items.append((path, list(dict.fromkeys(labels))))
    if not items:
        raise DataError("no rows", train_csv)
    checked = check_clips([p for p, _ in items if p not in unlabelled], workers, progress)
    bad = {**checked, **unlabelled}
    if len(bad) == len(items):
        raise DataError("no usable clip", train_csv)
    return column, binary, items, bad


def write_labels(out: Path, names: list[str]) -> Path:
    """``class_labels_indices.csv`` with ``mid`` = ``display_name`` = each label, in the given order."""
    return write_label_table(LabelTable(mids=list(names), names=list(names)), out / LABEL_CSV)


def prepare_test_list(
    test_csv: Path, test_audio_dir: Path, out: Path, workers: int | None, progress: bool | None
) -> tuple[dict, list[tuple[Path, str]]]:
    """Write ``out/test_list.json`` (one entry per row of ``test_csv``); returns its summary
    and the ``(path, reason)`` of the test files nothing of which decodes.

    A file that fails the complete check only because it is truncated, and whose first
    part decodes, is kept with a ``note``: its prediction comes from what decodes."""
    _, test_rows = _read_csv(test_csv, "test CSV")
    tests = [(row.get("filename", ""), _audio_path(test_audio_dir, row.get("filename", ""))) for _, row in test_rows]
    failed = check_clips([p for _, p in tests], workers, progress)
    errors, notes = {}, {}
    for path, reason in failed.items():
        if reason.startswith("truncated file"):
            try:
                load_audio(path, sample_rate=None)
            except AudioError as err:
                errors[path] = err.reason
            else:
                notes[path] = f"{reason}; predicted from the part that decodes"
                continue
        errors[path] = reason
    entries = [{"filename": name, "wav": str(p), "error": errors.get(p), "note": notes.get(p)} for name, p in tests]
    write_text_atomic(out / TEST_LIST, json.dumps({"data": entries}, indent=1) + "\n")
    summary = {"path": str(out / TEST_LIST), "files": len(entries), "unreadable": len(errors), "truncated": len(notes)}
    return summary, [(p, errors[p]) for p in dict.fromkeys(p for _, p in tests) if p in errors]


def prepare(
    train_csv: str | os.PathLike, audio_dir: str | os.PathLike, out: str | os.PathLike, *,
    label_column: str | None = None, test_csv: str | os.PathLike | None = None,
    test_audio_dir: str | os.PathLike | None = None, valid_fraction: float = 0.2, seed: int = 0,
    audio_length: int = 512, num_mel_bins: int = 128, folds: int = 0, workers: int | None = None, force: bool = True,
    progress: bool | None = None,
) -> dict:  # fmt: skip
    """A CSV-labelled dataset -> train / valid datafiles, label CSV, statistics and test list in ``out``."""
    check_valid_fraction(valid_fraction)
    if not is_int(folds) or folds == 1 or folds < 0:
        raise ConfigError(f"folds must be 0 (one validation split) or 2 or more, got {folds!r}")
    train_csv = Path(train_csv).expanduser().resolve()
    audio_dir = Path(audio_dir).expanduser().resolve()
    out = Path(out).expanduser().resolve()
    test_csv = Path(test_csv).expanduser().resolve() if test_csv else None
    test_audio_dir = Path(test_audio_dir).expanduser().resolve() if test_audio_dir else audio_dir
    inputs = {
        "train_csv": fingerprint(train_csv), "audio_dir": str(audio_dir), "label_column": label_column or "",
        "test_csv": fingerprint(test_csv) if test_csv else None, "test_audio_dir": str(test_audio_dir) if test_csv else None,
        "valid_fraction": valid_fraction, "seed": seed, "audio_length": audio_length, "num_mel_bins": num_mel_bins,
        "test_list": 2,  # the test list's format (note, truncated files kept)
        "labels": 2, "folds": folds,  # multi-label rows; cross-validation folds
    }  # fmt: skip

    def work() -> dict:
        return _prepare(train_csv, audio_dir, out, label_column, test_csv, test_audio_dir, valid_fraction, seed,
                        audio_length, num_mel_bins, workers, progress, folds)  # fmt: skip

    return ensure_prepared(out, "csv", inputs, work, force=force)


def _prepare(
    train_csv, audio_dir, out, label_column, test_csv, test_audio_dir, valid_fraction, seed, audio_length,
    num_mel_bins, workers, progress, folds=0,
) -> dict:  # fmt: skip
    from ..data.dataset import AudioDataset, norm_stats
    from ..features.contract import InputContract

    column, binary, items, bad = read_labels(train_csv, audio_dir, label_column, workers, progress)
    good = [(p, labels) for p, labels in items if p not in bad]
    names = binary or sorted({label for _, labels in good for label in labels})
    multilabel = bool(binary) or any(len(labels) > 1 for _, labels in good)
    # strata: the label (set) of each clip, in label order (single-label data: one stratum per class)
    order = {name: i for i, name in enumerate(names)}
    keys = [tuple(sorted(order[label] for label in labels)) for _, labels in good]
    strata = {key: i for i, key in enumerate(sorted(set(keys)))}
    is_valid = stratified_split([strata[key] for key in keys], valid_fraction, seed)
    if not any(is_valid):
        raise DataError("too few clips per class for a validation split (a class needs at least 2)", train_csv)
    write_labels(out, names)
    train_path = write_datafile(out / "train.json", [(p, labs) for (p, labs), v in zip(good, is_valid, strict=True) if not v])
    valid_path = write_datafile(out / "valid.json", [(p, labs) for (p, labs), v in zip(good, is_valid, strict=True) if v])
    if folds:
        fold = stratified_folds([strata[key] for key in keys], folds, seed)
        for k in range(1, folds + 1):
            write_datafile(fold_datafile(out, k, "train"), [item for item, f in zip(good, fold, strict=True) if f != k])
            write_datafile(fold_datafile(out, k, "valid"), [item for item, f in zip(good, fold, strict=True) if f == k])

    conf = InputContract(num_mel_bins=num_mel_bins, target_length=audio_length)
    mean, std = norm_stats(AudioDataset(read_datafile(train_path, out / LABEL_CSV), conf))
    stats = {"dataset_mean": mean, "dataset_std": std, "audio_length": audio_length, "num_mel_bins": num_mel_bins}
    write_text_atomic(out / "stats.json", json.dumps(stats, indent=2) + "\n")

    report = [(p, bad[p]) for p, _ in items if p in bad]
    test_summary = None
    if test_csv is not None:
        test_summary, test_bad = prepare_test_list(test_csv, test_audio_dir, out, workers, progress)
        report += test_bad
    report_path = write_report(out, report)
    return {
        "label_csv": str(out / LABEL_CSV), "label_column": column, "labels": names, "multilabel": multilabel,
        "label_columns": binary, "folds": folds,
        "majority_label": majority_label([";".join(labels) for _, labels in good]),
        "datafiles": {"train": str(train_path), "valid": str(valid_path)},
        "clips": {"train": len(good) - sum(is_valid), "valid": sum(is_valid)}, "stats": stats, "test": test_summary,
        "bad_files": len(report), "report": str(report_path),
    }  # fmt: skip


# --------------------------------------------------------------------------- recipe

def run(ctx) -> dict:
    from ..train.config import resolve_train_config
    from ..train.loop import train

    opts = ctx.options
    test_csv = ctx.root / opts["test_csv"] if opts["test_csv"] else None
    if test_csv is not None and not test_csv.is_file():
        log.warning("%s not found: training without test predictions", test_csv)
        test_csv = None
    summary = prepare(
        ctx.root / opts["train_csv"], ctx.root / opts["train_audio_dir"], ctx.data_dir,
        label_column=opts["label_column"] or None, test_csv=test_csv, test_audio_dir=ctx.root / opts["test_audio_dir"],
        valid_fraction=float(opts["valid_fraction"]), seed=int(opts["split_seed"]),
        audio_length=ctx.train.get("audio_length", 1024), num_mel_bins=ctx.train.get("num_mel_bins", 128),
        folds=int(opts["folds"]), workers=ctx.workers, force=ctx.force_prepare,
    )  # fmt: skip
    values = dict(ctx.train)
    for key in ("dataset_mean", "dataset_std"):
        if key not in ctx.user_set:
            values[key] = summary["stats"][key]
    if summary["multilabel"]:  # several labels per clip: sigmoid scores, BCE, mAP (unless set)
        values.update({k: v for k, v in (("loss", "BCE"), ("metrics", "mAP")) if k not in ctx.user_set})
    owned = {"label_csv": summary["label_csv"], "n_class": len(read_label_csv(summary["label_csv"]))}
    if summary["folds"]:
        return {**train_folds(ctx, values, owned, summary["folds"], "csv"), "labels": summary["labels"]}
    cfg = resolve_train_config(values, {
        "data_train": summary["datafiles"]["train"], "data_val": summary["datafiles"]["valid"], **owned,
        "exp_dir": str(ctx.exp_dir),
    })  # fmt: skip
    state = train(cfg)
    result = {"best_epoch": state.best_epoch, f"best_{cfg.metrics}": state.best_metric, "labels": summary["labels"],
              "clips": summary["clips"]}  # fmt: skip
    best = ctx.exp_dir / "models" / "best_audio_model.safetensors"
    thresholds = None
    if cfg.loss == "BCE" and summary["multilabel"]:
        thresholds = write_thresholds(best, cfg.data_val, cfg.label_csv, ctx.exp_dir / THRESHOLDS, cfg.device)
        result["thresholds"] = str(ctx.exp_dir / THRESHOLDS)
    result["report"] = str(write_validation_report(best, cfg, ctx.exp_dir, thresholds))
    if summary["test"] is None:
        result["deliverable"] = str(best)
        return result
    result.update(predict_test_list(
        best, summary["test"]["path"], ctx.exp_dir, label_column=summary["label_column"],
        fallback=summary["majority_label"], batch_size=max(1, cfg.batch_size), device=cfg.device,
        thresholds=thresholds, columns=summary["label_columns"],
    ))  # fmt: skip
    return result


def write_validation_report(best: Path, cfg, exp_dir: Path, thresholds: list[float] | None = None) -> Path:
    """The best model's evaluation report on the validation clips in ``EXP/report/``
    (:func:`ast_audio.train.report.write_evaluation_report`: tables, figures, ``report.html``)."""
    from ..train.report import write_evaluation_report

    files = write_evaluation_report(best, cfg.data_val, cfg.label_csv, exp_dir / REPORT_DIR, thresholds=thresholds,
                                    device=cfg.device)  # fmt: skip
    log.info("evaluation report on the validation clips: %s", files["report"])
    return files["report"]
