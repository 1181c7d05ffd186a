"""AudioSet from the segment lists and whatever clips the user could download.

Layout read: the segment CSVs as Google distributes them (``balanced_train_segments.csv``,
``unbalanced_train_segments.csv``, ``eval_segments.csv``: ``#`` comment lines, then
``YTID, start_seconds, end_seconds, "mid1,mid2,..."``), ``class_labels_indices.csv``
(527 rows; the shipped copy when none is given) and a folder of downloaded clips,
searched recursively (wav, flac, mp3, ogg, opus, aiff; any sample rate, resampled on
the fly).

Matching a file to a YouTube id (11 characters): its stem is the id (``abc-_123XYZ.wav``),
or ``Y`` + the id (``Yabc-_123XYZ.wav``, the DCASE style), either optionally followed by
``_`` and anything (``abc-_123XYZ_30.000.flac``, ``Yabc-_123XYZ_30.000_40.000.wav``);
the exact stem is tried before the prefixed forms. When several files match one id, the
first in path order is used. Segments whose clip is absent are counted and listed in
``{name}_missing.txt``; clips present but undecodable are in ``bad_files.txt``.

Prepare writes one datafile per segment CSV (``balanced_train_segments.csv`` ->
``balanced_train.json``), ``full_train.json`` (balanced + unbalanced) when both are
given, the balanced-sampling weights ``{name}_weight.csv`` of every training datafile
(what ``bal = true`` reads), ``class_labels_indices.csv``, ``bad_files.txt`` and
``prepared.json``. Newly downloaded clips are not noticed by the stamp: run
``ast-audio prepare`` again (or the recipe with ``--force-prepare``).

The recipe (``variant = "balanced"`` by default, ``--set full`` for the full set) takes
``*_segments.csv`` and ``class_labels_indices.csv`` from ``--root`` and the clips from
``audio_dir`` (default: ``--root``). It validates on the eval set, as the original did,
so ``wa_result.csv`` (weight averaging) and ``result.csv`` are the eval-set numbers.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

from ..audio.io import AUDIO_EXTENSIONS
from ..data.datafiles import read_datafile, write_datafile, write_weights
from ..data.labels import builtin_label_path, read_label_csv
from ..errors import ConfigError, DataError
from .common import (
    check_clips,
    copy_label_table,
    ensure_prepared,
    fingerprint,
    write_report,
    write_text_atomic,
)

log = logging.getLogger(__name__)

YTID_LENGTH = 11
LABEL_CSV = "class_labels_indices.csv"


def split_name(segments: Path) -> str:
    """``balanced_train_segments.csv`` -> ``balanced_train``."""
    return segments.stem.removesuffix("_segments")


def read_segments(path: Path, known: dict[str, int]) -> list[tuple[str, list[str]]]:
    """``[(ytid, [mid, ...]), ...]`` of a segment CSV, checked against the label table."""
    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                fields = next(csv.reader([line], skipinitialspace=True))
                if len(fields) < 4 or not fields[0].strip():
                    raise DataError(f"line {number}: expected YTID, start_seconds, end_seconds, \"mid,...\"", path)
                mids = [m.strip() for m in fields[3].split(",") if m.strip()]
                unknown = [m for m in mids if m not in known]
                if unknown or not mids:
                    what = f"label {unknown[0]!r} is not in the label CSV" if unknown else "no labels"
                    raise DataError(f"line {number}: {what}", path)
                rows.append((fields[0].strip(), mids))
    except FileNotFoundError:
        raise DataError("segment CSV not found", path) from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read: {err}", path) from None
    return rows


def match_ytid(stem: str, ids: set[str] | dict) -> str | None:
    """The YouTube id a file stem names, if it is one of ``ids`` (see the module docstring)."""
    for name in (stem, stem[1:] if stem.startswith("Y") else ""):
        if name in ids:
            return name
        if len(name) > YTID_LENGTH and name[YTID_LENGTH] == "_" and name[:YTID_LENGTH] in ids:
            return name[:YTID_LENGTH]
    return None


def index_audio(audio_dir: Path, ids: set[str]) -> dict[str, Path]:
    """``{ytid: file}`` for the clips under ``audio_dir`` (recursively) that name one of ``ids``."""
    if not audio_dir.is_dir():
        raise DataError("audio folder not found", audio_dir)
    found: dict[str, Path] = {}
    duplicates = 0
    for folder, dirs, files in os.walk(audio_dir):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if path.suffix.lower() not in AUDIO_EXTENSIONS:
                continue
            ytid = match_ytid(path.stem, ids)
            if ytid is None:
                continue
            if ytid in found:
                duplicates += 1
            else:
                found[ytid] = path
    if duplicates:
        log.warning("%s: %d more files name a YouTube id already matched; the first one is used", audio_dir, duplicates)
    return found


def prepare(
    segments: list[str | os.PathLike], audio_dir: str | os.PathLike, out: str | os.PathLike, *,
    label_csv: str | os.PathLike | None = None, workers: int | None = None, force: bool = True,
    progress: bool | None = None,
) -> dict:  # fmt: skip
    """Segment CSVs + downloaded clips -> datafiles, missing counts and sampling weights in ``out``."""
    segments = [Path(s).expanduser().resolve() for s in segments]
    if not segments:
        raise ConfigError("give at least one segment CSV")
    names = [split_name(s) for s in segments]
    if len(set(names)) != len(names):
        raise ConfigError(f"two segment CSVs would both be written as {names}: rename one")
    audio_dir, out = Path(audio_dir).expanduser().resolve(), Path(out).expanduser().resolve()
    label_path = builtin_label_path("audioset") if label_csv is None else Path(label_csv).expanduser().resolve()
    inputs = {"segments": [fingerprint(s) for s in segments], "audio_dir": str(audio_dir),
              "label_csv": fingerprint(label_path)}  # fmt: skip
    return ensure_prepared(
        out, "audioset", inputs, lambda: _prepare(segments, audio_dir, out, label_path, workers, progress), force=force
    )


def _prepare(
    segments: list[Path], audio_dir: Path, out: Path, label_path: Path, workers: int | None, progress: bool | None
) -> dict:
    labels = read_label_csv(label_path)
    known = labels.index()
    lists = {split_name(s): read_segments(s, known) for s in segments}
    found = index_audio(audio_dir, {ytid for rows in lists.values() for ytid, _ in rows})
    listing = [found[ytid] for rows in lists.values() for ytid, _ in rows if ytid in found]
    bad = check_clips(listing, workers, progress)
    label_csv = copy_label_table(label_path, out, LABEL_CSV)
    datafiles: dict[str, list[tuple[Path, list[str]]]] = {}
    clips, missing = {}, {}
    for name, rows in lists.items():
        absent = [ytid for ytid, _ in rows if ytid not in found]
        write_text_atomic(out / f"{name}_missing.txt", "".join(y + "\n" for y in absent))
        datafiles[name] = [(found[y], mids) for y, mids in rows if y in found and found[y] not in bad]
        clips[name], missing[name] = len(datafiles[name]), len(absent)
        if absent:
            log.warning("%s: %d of %d segments have no clip in %s", name, len(absent), len(rows), audio_dir)
    if "balanced_train" in datafiles and "unbalanced_train" in datafiles:
        seen: set[Path] = set()
        full = []
        for path, mids in datafiles["balanced_train"] + datafiles["unbalanced_train"]:
            if path not in seen:
                seen.add(path)
                full.append((path, mids))
        datafiles["full_train"] = full
        clips["full_train"] = len(full)
    paths, weights = {}, {}
    for name, rows in datafiles.items():
        if not rows:
            log.warning("%s: no usable clip; no datafile written", name)
            continue
        paths[name] = str(write_datafile(out / f"{name}.json", rows))
        if "train" in name:
            weights[name] = str(write_weights(read_datafile(paths[name], labels, check_files=False)))
    report = write_report(out, [(path, bad[path]) for path in dict.fromkeys(listing) if path in bad])
    return {
        "label_csv": str(label_csv), "datafiles": paths, "weights": weights, "clips": clips, "missing": missing,
        "bad_files": len(bad), "report": str(report),
    }  # fmt: skip


# --------------------------------------------------------------------------- recipe

VARIANTS = {"full": "full_train", "balanced": "balanced_train"}


def run(ctx) -> dict:
    import numpy as np

    from ..train.config import resolve_train_config
    from ..train.loop import train

    variant = ctx.options["variant"]
    if variant not in VARIANTS:
        raise ConfigError(f"variant must be 'full' or 'balanced', got {variant!r}")
    segments = sorted(ctx.root.glob("*_segments.csv"))
    if not segments:
        raise DataError("no *_segments.csv here (expected balanced_train_segments.csv, eval_segments.csv, ...)", ctx.root)
    own_labels = ctx.root / LABEL_CSV
    audio_dir = ctx.root / ctx.options["audio_dir"] if ctx.options["audio_dir"] else ctx.root
    summary = prepare(
        segments, audio_dir, ctx.data_dir, label_csv=own_labels if own_labels.is_file() else None,
        workers=ctx.workers, force=ctx.force_prepare,
    )  # fmt: skip
    train_name = VARIANTS[variant]
    for name, needs in ((train_name, "the training"), ("eval", "the evaluation")):
        if name not in summary["datafiles"]:
            source = "balanced_train_segments.csv and unbalanced_train_segments.csv" if name == "full_train" else (
                f"{name}_segments.csv")  # fmt: skip
            raise DataError(f"{needs} set of the {variant} recipe needs {source} with clips present", ctx.root)
    cfg = resolve_train_config(ctx.train, {
        "data_train": summary["datafiles"][train_name], "data_val": summary["datafiles"]["eval"],
        "label_csv": summary["label_csv"], "n_class": len(read_label_csv(summary["label_csv"])),
        "exp_dir": str(ctx.exp_dir),
    })  # fmt: skip
    state = train(cfg)
    result = {"deliverable": str(ctx.exp_dir / "result.csv"), "variant": variant, "best_epoch": state.best_epoch,
              "best_mAP": state.best_metric, "clips": summary["clips"], "missing": summary["missing"]}  # fmt: skip
    if cfg.bal:
        result["weights"] = summary["weights"].get(train_name)
    wa = ctx.exp_dir / "wa_result.csv"
    if cfg.wa and wa.exists():
        result["deliverable"] = str(wa)
        values = np.loadtxt(wa, ndmin=1).tolist()  # the original's mAP, mAUC, precision, recall, d-prime
        result["wa_mAP"], result["wa_mAUC"] = values[:2]  # (d-prime is inf at AUC 1: not for JSON)
    return result
