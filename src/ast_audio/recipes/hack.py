"""The seed's own recipe: the "hack" fork of AST (tejasvaidhyadev/IA-for-AI, ``ast/egs/hack``),
seven speech emotions from a hackathon's ``train.csv`` / ``test.csv``, as that fork ran it.

Layout read (``--root``): ``train.csv`` (``filename,emotion``), ``test.csv``
(``filename``), ``TrainAudioFiles/`` and ``TestAudioFiles/`` (mp3 and wav mixed, at
their own sample rates). The fork's steps and ours:

- ``prep_hack.py`` -> :func:`prepare`: every row of ``train.csv`` whose file is usable,
  in file order; the last 20 % of them (``n - n * 4 // 5``) are the validation set,
  the rest the training set (``hack_train_data.json`` / ``hack_eval_data.json``, the
  fork's names). The fork skipped the files of a hand-kept ``corrupt_files.txt``; here
  every file is decoded once, completely, and a missing, empty, undecodable or
  truncated one is left out and listed in ``bad_files.txt`` (``path: reason``).
  ``valid_fraction`` takes another share of the tail (``n_train = floor(n * (1 -
  f))``, exactly), ``stratify = true`` the csv recipe's seeded stratified split instead.
  The labels are the sorted distinct values of the label column (for the hackathon's
  data: anger, disgust, fear, joy, neutral, sadness, surprise, the order of the fork's
  hand-written table).
- ``run.sh`` -> ``hack.toml``: the fork ran ``run.py --dataset esc50``, so ESC-50's
  statistics (-6.6268077 / 5.358466), 512 frames, CE loss and accuracy, MultiStepLR at
  epochs 5, 6, ... with 0.85, no warm-up; from AudioSet weights, lr 1e-5 (1e-4 without
  them, as the script chose), 10 epochs, batch 30, freqm 24, timem 96, no mixup,
  strides 10/10, base384. The best model on the validation set predicts the test list.
- ``prep_test.py`` + ``test.sh`` -> ``final = true``: train on *all* usable rows
  (``hack_full_train_data.json``) for ``n_epochs`` in ``EXP/final`` and predict the test
  list with the model after the last epoch. That model is taken as
  ``train``'s weight average of the last epoch alone (``wa_start = wa_end = n_epochs``:
  exactly its weights), so no checkpoint per epoch is kept. The fork validated on the
  test list with made-up labels (``i % 7``); here validation is the eval split, which
  is then part of the training data, so those numbers are not held-out scores.
- ``resample = false``: features at each file's own sample rate, as the fork's loader
  computed them (``kaldi.fbank(..., sample_frequency=sr)``: 25/10 ms frames and mel
  bands up to that rate's Nyquist frequency). The default resamples every file to
  16 kHz, as every other recipe and the published checkpoints do. It is the training
  setting ``resample`` (``TrainConfig.resample``), saved in the model's input contract
  (``resample = false``), so training, evaluation and this recipe's prediction step all
  compute features at each file's rate (:mod:`ast_audio.features.pipeline`); ``ast-audio
  predict`` refuses such a model with a clear message rather than resampling.

The deliverable is ``submission.csv`` (``EXP/`` or ``EXP/final/``) in the format of the
hackathon's ``sample_submission.csv`` with ``submission_notes.csv`` beside it: see
:func:`ast_audio.recipes.submission.write_submission`.
"""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path

from ..data.datafiles import write_datafile
from ..data.splits import check_valid_fraction, stratified_split
from ..errors import ConfigError, DataError
from .common import ensure_prepared, fingerprint, write_report
from .csvdata import (
    prepare_test_list,
    read_labelled,
    write_labels,
)
from .submission import majority_label, predict_test_list

log = logging.getLogger(__name__)

TRAIN = "hack_train_data.json"
VALID = "hack_eval_data.json"
FULL = "hack_full_train_data.json"


def tail_split(n: int, valid_fraction: float) -> int:
    """How many of ``n`` rows train when the last ``valid_fraction`` validate: ``floor(n * (1 - f))``
    in exact arithmetic, so 0.2 gives the fork's ``n * 4 // 5``."""
    f = Fraction(str(valid_fraction))
    return n * (f.denominator - f.numerator) // f.denominator


def prepare(
    root: str | os.PathLike, out: str | os.PathLike, *, train_csv: str = "train.csv",
    train_audio_dir: str = "TrainAudioFiles", test_csv: str | None = "test.csv",
    test_audio_dir: str = "TestAudioFiles", label_column: str | None = None, valid_fraction: float = 0.2,
    stratify: bool = False, seed: int = 0, workers: int | None = None, force: bool = True,
    progress: bool | None = None,
) -> dict:  # fmt: skip
    """The hackathon's folder -> the fork's datafiles (train, eval, and all usable rows for the
    final step), the label CSV and the test list in ``out``. A missing ``test.csv`` is a
    warning (no test list)."""
    check_valid_fraction(valid_fraction)
    root = Path(root).expanduser().resolve()
    out = Path(out).expanduser().resolve()
    if not root.is_dir():
        raise DataError("dataset folder not found", root)
    tests = root / test_csv if test_csv else None
    if tests is not None and not tests.is_file():
        log.warning("%s not found: no test list", tests)
        tests = None
    inputs = {
        "train_csv": fingerprint(root / train_csv), "audio_dir": str(root / train_audio_dir),
        "test_csv": fingerprint(tests) if tests else None, "test_audio_dir": str(root / test_audio_dir),
        "label_column": label_column or "", "valid_fraction": valid_fraction, "stratify": bool(stratify), "seed": seed,
    }  # fmt: skip

    def work() -> dict:
        column, items, bad = read_labelled(root / train_csv, root / train_audio_dir, label_column, workers, progress)
        good = [(p, label) for p, label in items if p not in bad]
        names = sorted({label for _, label in good})
        if stratify:
            is_valid = stratified_split([names.index(label) for _, label in good], valid_fraction, seed)
        else:
            n_train = tail_split(len(good), valid_fraction)
            is_valid = [i >= n_train for i in range(len(good))]
        if not any(is_valid) or all(is_valid):
            raise DataError(f"too few usable clips ({len(good)}) for a validation split", root / train_csv)
        write_labels(out, names)
        rows = [(p, [label]) for p, label in good]
        paths = {
            "train": write_datafile(out / TRAIN, [r for r, v in zip(rows, is_valid, strict=True) if not v]),
            "valid": write_datafile(out / VALID, [r for r, v in zip(rows, is_valid, strict=True) if v]),
            "full": write_datafile(out / FULL, rows),
        }
        report = [(p, bad[p]) for p, _ in items if p in bad]
        test_summary = None
        if tests is not None:
            test_summary, test_bad = prepare_test_list(tests, root / test_audio_dir, out, workers, progress)
            report += test_bad
        report_path = write_report(out, report)
        return {
            "label_csv": str(out / "class_labels_indices.csv"), "label_column": column, "labels": names,
            "majority_label": majority_label([label for _, label in good]),
            "split": "stratified" if stratify else "tail", "datafiles": {k: str(v) for k, v in paths.items()},
            "clips": {"train": len(good) - sum(is_valid), "valid": sum(is_valid), "full": len(good)},
            "test": test_summary, "bad_files": len(report), "report": str(report_path),
        }  # fmt: skip

    return ensure_prepared(out, "hack", inputs, work, force=force)


# --------------------------------------------------------------------------- recipe


def _flag(options: dict, key: str) -> bool:
    if not isinstance(options[key], bool):
        raise ConfigError(f"the hack recipe's option {key} must be true or false, got {options[key]!r}")
    return options[key]


def run(ctx) -> dict:
    from ..train.config import resolve_train_config
    from ..train.loop import train

    opts = ctx.options
    final = _flag(opts, "final")
    summary = prepare(
        ctx.root, ctx.data_dir, train_csv=opts["train_csv"], train_audio_dir=opts["train_audio_dir"],
        test_csv=opts["test_csv"] or None, test_audio_dir=opts["test_audio_dir"],
        label_column=opts["label_column"] or None, valid_fraction=float(opts["valid_fraction"]),
        stratify=_flag(opts, "stratify"), seed=int(opts["split_seed"]), workers=ctx.workers, force=ctx.force_prepare,
    )  # fmt: skip
    values = dict(ctx.train)
    native = values.get("resample") is False
    if values.get("audioset_pretrain") is False and "lr" not in ctx.user_set:
        values["lr"] = float(opts["lr_without_audioset"])
    data = summary["datafiles"]
    if final:
        exp = ctx.exp_dir / "final"
        if {"wa", "wa_start", "wa_end"} & ctx.user_set:
            if not values.get("wa"):
                raise ConfigError("final = true predicts with the weight-averaged model: leave wa unset or true")
        else:  # the average of the last epoch alone: the model after the last epoch
            values.update(wa=True, wa_start=values["n_epochs"], wa_end=values["n_epochs"])
        checkpoint = exp / "models" / "audio_model_wa.safetensors"
    else:
        exp = ctx.exp_dir
        checkpoint = exp / "models" / "best_audio_model.safetensors"
    cfg = resolve_train_config(values, {
        "data_train": data["full" if final else "train"], "data_val": data["valid"],
        "label_csv": summary["label_csv"], "n_class": len(summary["labels"]), "exp_dir": str(exp),
    })  # fmt: skip
    log.info("hack recipe: %s on %d clips, features at %s", "final model" if final else "train/valid",
             summary["clips"]["full" if final else "train"], "each file's rate" if native else "16 kHz")  # fmt: skip
    state = train(cfg)
    result = {
        "mode": "final" if final else "validation", "epochs": cfg.n_epochs, "sample_rate": "native" if native else 16000,
        "split": summary["split"], "labels": summary["labels"], "clips": summary["clips"], "model": str(checkpoint),
    }  # fmt: skip
    if not final:
        result.update({"best_epoch": state.best_epoch, f"best_{cfg.metrics}": state.best_metric})
    if summary["test"] is None:
        result["deliverable"] = str(checkpoint)
        return result
    result.update(predict_test_list(
        checkpoint, summary["test"]["path"], exp, label_column=summary["label_column"],
        fallback=summary["majority_label"], batch_size=max(1, cfg.batch_size), device=cfg.device,
    ))  # fmt: skip
    return result
