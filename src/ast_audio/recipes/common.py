"""What every recipe's ``prepare`` shares: checking clips, the bad-files report, the stamp.

- **Checking.** Every clip is decoded once, completely, with ``load_audio(strict=True)``
  (in a thread pool: libsndfile releases the GIL). A missing, empty (0 bytes),
  undecodable, truncated or NaN-holding file is *bad*: it is left out of the datafiles
  and listed in ``DIR/bad_files.txt``, one ``path: reason`` line per file, in the order
  of the dataset's own listing. The file is always written (empty when nothing is bad),
  so its presence says the check ran.
- **Stamp.** ``DIR/prepared.json`` records what was prepared from what: the recipe, the
  inputs (absolute paths, options, and the size and modification time of the dataset's
  metadata files) and a summary (datafiles, clip counts, bad and missing counts).
  ``ast-audio recipe`` prepares again only when the inputs differ from the stamp's (or
  with ``--force-prepare``); ``ast-audio prepare`` always prepares.
- **Replacing.** A preparation that replaces an earlier one (a stamp is there, and no input
  of the preparation lies inside the folder) moves the old folder aside (``.data.previous`` beside ``data``) and prepares a fresh one: a preparation
  that fails puts the old folder back, so a failed prepare never leaves half of one. Inside
  :func:`replacing_data` (``ast-audio recipe``) the old folder is kept until the run is over:
  a run refused before it trains (the experiment folder holds a run of other labels or
  settings, or another run holds its lock) gets the old data back beside its old models.
- **Resampling.** Nothing is converted or cached: datafiles point at the files as
  distributed, and the loader resamples on the fly to 16 kHz (soxr "HQ", about a
  millisecond per 5 s ESC-50 clip). No second copy of the dataset on disk, and the
  same samples the original's sox-converted 16 kHz copies held, without their 16-bit
  rounding.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from .. import __version__
from ..base.fileio import atomic_write
from ..data.datafiles import check_audio_files
from ..errors import DataError

log = logging.getLogger(__name__)

STAMP = "prepared.json"
REPORT = "bad_files.txt"
STAMP_FORMAT = 1


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def check_clips(
    paths: Iterable[Path], workers: int | None = None, progress: bool | None = None
) -> dict[Path, str]:
    """Decode every file once (:func:`ast_audio.data.datafiles.check_audio_files`, the check of
    ``ast-audio check``); ``{path: reason}`` for the bad ones."""
    paths = list(dict.fromkeys(paths))
    bad = check_audio_files(paths, workers or default_workers(), progress)
    if bad:
        log.warning("%d of %d clips are unusable (listed in %s)", len(bad), len(paths), REPORT)
    return bad


def write_report(out: Path, bad: Iterable[tuple[Path | str, str]]) -> Path:
    """``out/bad_files.txt``: one ``path: reason`` line per bad file (empty file if none)."""
    lines = [f"{path}: {reason}" for path, reason in bad]
    return write_text_atomic(out / REPORT, "".join(line + "\n" for line in lines))


def fingerprint(path: Path) -> list:
    """What identifies a metadata file's version: ``[path, size, mtime_ns]`` (or ``[path, None]``)."""
    try:
        st = path.stat()
    except OSError:
        return [str(path), None]
    return [str(path), st.st_size, st.st_mtime_ns]


def ensure_prepared(
    out: Path, recipe: str, inputs: dict, prepare: Callable[[], dict], *, force: bool = True
) -> dict:
    """Run ``prepare()`` (which returns a JSON-able summary) unless ``out``'s stamp says the
    same inputs were prepared already; returns the summary either way."""
    inputs = json.loads(json.dumps(inputs))  # the stamp's own normal form (lists, str keys)
    stamp_path = out / STAMP
    if not force and stamp_path.exists():
        try:
            stamp = json.loads(stamp_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            stamp = {}
        if (
            stamp.get("format") == STAMP_FORMAT
            and stamp.get("recipe") == recipe
            and stamp.get("inputs") == inputs
            and isinstance(stamp.get("summary"), dict)
        ):
            log.info("%s: already prepared from the same inputs, reusing it", out)
            return stamp["summary"]
    previous, pending = previous_of(out), _REPLACED.get()
    aside = pending is not None and out in pending  # this run set the old preparation aside already
    if previous.exists() and not aside:  # set aside by a run killed before it ended: that run is over
        shutil.rmtree(previous)
    replaced = stamp_path.exists() and not aside and not _holds_inputs(out, inputs)
    if replaced:  # ours: the old preparation goes aside until this one (and the run) is through
        os.replace(out, previous)
    elif aside:  # this run's own earlier preparation
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    stamp_path.unlink(missing_ok=True)  # a half-finished prepare must not look finished
    try:
        summary = prepare()
        doc = {"format": STAMP_FORMAT, "recipe": recipe, "version": __version__, "inputs": inputs, "summary": summary}
        write_text_atomic(stamp_path, json.dumps(doc, indent=2) + "\n")
    except BaseException:
        if replaced:
            _put_back(out, previous)
        raise
    if replaced:
        if pending is None:
            shutil.rmtree(previous, ignore_errors=True)
        else:
            pending.append(out)
    return summary


# The folders a preparation replaced inside replacing_data, their old content aside.
_REPLACED: contextvars.ContextVar[list[Path] | None] = contextvars.ContextVar("replaced_data", default=None)


def _holds_inputs(out: Path, inputs: object) -> bool:
    """Whether a path among the preparation's ``inputs`` lies in ``out`` (the dataset prepared
    into its own folder): such a folder is prepared in place, never moved aside."""
    if isinstance(inputs, dict):
        return any(_holds_inputs(out, v) for v in inputs.values())
    if isinstance(inputs, list):
        return any(_holds_inputs(out, v) for v in inputs)
    if isinstance(inputs, str) and os.path.isabs(inputs):
        path = Path(inputs)
        return path == out.resolve() or out.resolve() in path.parents
    return False


def previous_of(out: Path) -> Path:
    """Where a replaced preparation waits: ``.NAME.previous`` beside ``out``."""
    return out.with_name(f".{out.name}.previous")


def _put_back(out: Path, previous: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    os.replace(previous, out)


@contextlib.contextmanager
def replacing_data(refusals: tuple[type[BaseException], ...]) -> Iterator[None]:
    """Within the block, a preparation that replaces an earlier one keeps the old folder aside
    (see the module notes); leaving by one of ``refusals`` (the run refused before it trained)
    puts every replaced folder back, any other way of leaving removes the old ones."""
    replaced: list[Path] = []
    token = _REPLACED.set(replaced)
    try:
        yield
    except refusals:
        for out in replaced:
            _put_back(out, previous_of(out))
            log.warning("%s: the run was refused; the data prepared before is back in place", out)
        replaced.clear()
        raise
    finally:
        _REPLACED.reset(token)
        for out in replaced:
            shutil.rmtree(previous_of(out), ignore_errors=True)


def copy_label_table(source: Path, out: Path, name: str) -> Path:
    return atomic_write(out / name, lambda tmp: shutil.copyfile(source, tmp))


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{what} not found", path)
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def fold_datafile(out: Path, k: int, split: str) -> Path:
    """``out/fold{k}_{train|valid}.json`` of a cross-validated preparation."""
    return out / f"fold{k}_{split}.json"


def train_folds(ctx, values: dict, owned: dict, folds: int, recipe: str) -> dict:
    """K-fold cross-validation, as the ESC-50 recipe: a run per fold in ``EXP/fold{k}`` on the
    preparation's ``fold{k}_{train|valid}.json``, then ``acc_fold.csv`` (``map_fold.csv`` for
    mAP) of each fold's main metric at the epoch best on the folds' mean, and their mean
    (:func:`fold_summary`)."""
    from ..train.config import resolve_train_config
    from ..train.loop import train

    ks = list(range(1, folds + 1))
    cfg = None
    for k in ks:
        log.info("%s recipe: fold %d of %d", recipe, k, folds)
        cfg = resolve_train_config(values, {
            "data_train": str(fold_datafile(ctx.data_dir, k, "train")),
            "data_val": str(fold_datafile(ctx.data_dir, k, "valid")), **owned, "exp_dir": str(ctx.exp_dir / f"fold{k}"),
        })  # fmt: skip
        train(cfg)
    name = "map_fold.csv" if cfg.metrics == "mAP" else "acc_fold.csv"
    scores, best_epoch = fold_summary(ctx.exp_dir, ks, name)
    return {"deliverable": str(ctx.exp_dir / name), "folds": ks, cfg.metrics: scores[:-1], "mean": scores[-1],
            "best_epoch": best_epoch}  # fmt: skip


def fold_summary(exp: Path, folds: list[int], name: str = "acc_fold.csv") -> tuple[list[float], int]:
    """The original ``get_esc_result.py``: average the folds' ``result.csv`` epoch by epoch,
    take the epoch with the best averaged accuracy (main metric), and report each fold's there.
    Writes ``result.csv``, ``best_result.csv`` and ``acc_fold.csv`` (or ``name``) in ``exp``;
    returns ``(per-fold main metric + [mean], best epoch (1-based))``."""
    results = [np.loadtxt(exp / f"fold{k}" / "result.csv", delimiter=",", ndmin=2) for k in folds]
    epochs = min(len(r) for r in results)
    averaged = np.mean([r[:epochs] for r in results], axis=0)  # (epochs, 10)
    best = int(np.argmax(averaged[:, 0]))
    acc = [float(r[best, 0]) for r in results]
    acc.append(float(np.mean(acc)))
    np.savetxt(exp / "result.csv", averaged, delimiter=",")
    np.savetxt(exp / "best_result.csv", averaged[best], delimiter=",")
    np.savetxt(exp / name, acc, delimiter=",")
    return acc, best + 1
