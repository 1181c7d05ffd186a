"""A folder of your own sounds, one subfolder per class: ``ast-audio recipe folder DIR``.

Layout read: ``DIR/<class>/...`` (any depth below a class folder: everything under it is that
class), files of any of :data:`~ast_audio.audio.io.AUDIO_EXTENSIONS`; the class names are the
folder names, sorted. Other files, and hidden files and folders, are not read; an audio file
directly in ``DIR`` belongs to no class and is listed in ``bad_files.txt``. One label per clip:
a dataset with several labels per clip is the csv recipe's (``ast-audio recipe csv``).

Prepare:
- **labels from the folders**: ``class_labels_indices.csv`` (``mid`` = ``display_name`` = the
  folder name), written by the recipe; no label table or ``n_class`` to write;
- **every file checked** (decoded once): bad files are listed in ``bad_files.txt`` and left out;
- **groups**: related clips form a group, and a group never straddles the split nor two folds.
  A clip's group is, first found: its row in ``DIR/groups.csv`` (``filename,group``, the
  filename relative to ``DIR``, e.g. ``dog/bark_01.wav``); the first subfolder below its class
  folder (a recording session: ``dog/session3/...``); else its name with the take number
  removed (:func:`~ast_audio.data.folders.take_stem`: ``dog_01.wav``, ``dog-take3.flac``,
  ``Dog (2).wav`` -> ``dog``);
- **grouped, stratified validation split**: about ``valid_fraction`` of each class's clips, whole
  groups at a time (:func:`~ast_audio.data.splits.grouped_split`, seeded by ``split_seed``);
  or ``valid_dir``: a second folder of the same layout is the validation set, no split;
- **cross-validation** (``folds = K``): K folds of whole groups
  (:func:`~ast_audio.data.splits.grouped_folds`); one run per fold in ``EXP/fold{k}``, then
  ``acc_fold.csv`` as the ESC-50 recipe;
- **input length from the data**: ``audio_length`` is the number of frames (10 ms each) that
  covers the 90th percentile of the training clips' durations, rounded up to a multiple of 16
  and kept within [96, 1024] (:func:`audio_length_for`); ``--set audio_length=N`` wins;
- **normalisation statistics** of the training clips at that length in ``stats.json``;
- ``split.csv`` (``filename,label,group,split,fold``): every usable clip with its label, group,
  side (``train``, ``valid``, ``test``) and fold, to see what the split did.

A class folder named ``_background``, ``background``, ``none`` or ``other`` (any case) holds
sounds of none of the classes: it trains as an ordinary class and the checkpoint records its
name (``ModelInfo.extra["none_label"]``), so inference can answer "none of these".

Presets: with no AudioSet weights at hand (the published ``audioset_10_10_0.4593`` is not in
:func:`~ast_audio.checkpoints.hub.cache_dir` and ``audioset_pretrain`` is not set), the recipe
trains from scratch with ``scratch.toml`` and never tries a download; with them, it fine-tunes
the AudioSet-trained AST with ``folder.toml``. ``--set preset=scratch|pretrained`` forces one.
One logged line says which it took and why. The run keeps the best model on validation and
scores it on the validation folder and on ``test_dir`` when given (:func:`evaluate_splits`);
``recipe_result.json`` holds those accuracies.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from importlib import resources
from pathlib import Path

import numpy as np

from ..audio.io import audio_info
from ..base.checks import is_int
from ..base.fileio import read_toml
from ..data.datafiles import read_datafile, write_datafile
from ..data.folders import Clip, background_label, listing_digest, read_groups, scan
from ..data.labels import LabelTable, write_label_table
from ..data.splits import check_valid_fraction, grouped_folds, grouped_split
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
from .deliver import calibrate_open_set, evaluate_splits

log = logging.getLogger(__name__)

LABEL_CSV = "class_labels_indices.csv"
GROUPS_CSV = "groups.csv"
SPLIT_CSV = "split.csv"
PRESETS = ("auto", "scratch", "pretrained")
SCRATCH = "scratch.toml"  # the from-scratch preset (folder.toml, the recipe's own config, is the AudioSet one)
MIN_FRAMES, MAX_FRAMES, FRAME_MULTIPLE = 96, 1024, 16


def audio_length_for(durations: list[float]) -> int:
    """Frames covering the 90th percentile of ``durations`` (seconds; 100 frames a second),
    rounded up to a multiple of 16 and kept within [96, 1024]."""
    frames = int(float(np.percentile(durations, 90)) * 100) if durations else MIN_FRAMES
    frames = -(-frames // FRAME_MULTIPLE) * FRAME_MULTIPLE
    return min(max(frames, MIN_FRAMES), MAX_FRAMES)


def _held_out(folder: Path | None, names: list[str]) -> tuple[list[Clip], list[tuple[Path, str]]]:
    """The clips and stray files of a validation or test folder, whose class folders must be
    classes of the training folder."""
    if folder is None:
        return [], []
    held_names, clips, stray = scan(folder)
    unknown = [name for name in held_names if name not in names]
    if unknown:
        raise DataError(f"class folder {unknown[0]!r} is not a class of the training folder ({', '.join(names)})",
                        folder / unknown[0])  # fmt: skip
    return clips, stray


# --------------------------------------------------------------------------- prepare


def prepare(
    root: str | os.PathLike, out: str | os.PathLike, *, valid_dir: str | os.PathLike | None = None,
    test_dir: str | os.PathLike | None = None, valid_fraction: float = 0.2, seed: int = 0, folds: int = 0,
    audio_length: int | None = None, num_mel_bins: int = 128, workers: int | None = None, force: bool = True,
    progress: bool | None = None,
) -> dict:  # fmt: skip
    """A folder of class folders -> train / valid (/ test, / fold) datafiles, label CSV,
    statistics and ``split.csv`` in ``out``; ``audio_length=None``: from the training clips."""
    check_valid_fraction(valid_fraction)
    if not is_int(folds) or folds == 1 or folds < 0:
        raise ConfigError(f"folds must be 0 (one validation split) or 2 or more, got {folds!r}")
    if folds and valid_dir:
        raise ConfigError("folds and valid_dir each choose the validation clips: give one of them")
    if audio_length is not None and (not is_int(audio_length) or audio_length < 1):
        raise ConfigError(f"audio_length must be a positive number of frames, got {audio_length!r}")
    root = Path(root).expanduser().resolve()
    out = Path(out).expanduser().resolve()
    valid_dir = Path(valid_dir).expanduser().resolve() if valid_dir else None
    test_dir = Path(test_dir).expanduser().resolve() if test_dir else None
    for folder in (root, valid_dir, test_dir):
        if folder is not None and not folder.is_dir():
            raise DataError("folder not found", folder)
    inputs = {
        "root": str(root), "files": listing_digest(root), "groups": fingerprint(root / GROUPS_CSV),
        "valid_dir": [str(valid_dir), listing_digest(valid_dir)] if valid_dir else None,
        "test_dir": [str(test_dir), listing_digest(test_dir)] if test_dir else None,
        "valid_fraction": valid_fraction, "seed": seed, "folds": folds, "audio_length": audio_length,
        "num_mel_bins": num_mel_bins, "groups_in_datafiles": True,  # a preparation from before they were is redone
    }  # fmt: skip

    def work() -> dict:
        return _prepare(root, out, valid_dir, test_dir, valid_fraction, seed, folds, audio_length, num_mel_bins,
                        workers, progress)  # fmt: skip

    return ensure_prepared(out, "folder", inputs, work, force=force)


def _rows(clips: list[Clip]) -> list[tuple[Path, list[str], str]]:
    return [(c.path, [c.label], c.group) for c in clips]


def _prepare(root, out, valid_dir, test_dir, valid_fraction, seed, folds, audio_length, num_mel_bins, workers,
             progress) -> dict:  # fmt: skip
    from ..data.dataset import AudioDataset, norm_stats
    from ..features.contract import InputContract

    names, clips, stray = scan(root, read_groups(root / GROUPS_CSV))
    held = {"valid": _held_out(valid_dir, names), "test": _held_out(test_dir, names)}  # checked before decoding
    bad = check_clips([c.path for c in clips], workers, progress)
    good = [c for c in clips if c.path not in bad]
    names = [name for name in names if any(c.label == name for c in good)]
    if len(names) < 2:
        raise DataError(f"found {len(names)} class folder(s) with usable audio ({', '.join(names) or 'none'}); the "
                        "folder recipe needs one subfolder per class, two or more (a CSV-labelled or multi-label "
                        "dataset: `ast-audio recipe csv`)", root)  # fmt: skip
    none_label = background_label(names)
    index = {name: i for i, name in enumerate(names)}
    report = [(p, reason) for p, reason in stray] + [(c.path, bad[c.path]) for c in clips if c.path in bad]
    usable = {}
    for split, folder in (("valid", valid_dir), ("test", test_dir)):
        held_clips, held_stray = held[split]
        held_bad = check_clips([c.path for c in held_clips], workers, progress) if held_clips else {}
        report += held_stray + [(c.path, held_bad[c.path]) for c in held_clips if c.path in held_bad]
        usable[split] = [c for c in held_clips if c.path not in held_bad]
        lost = sorted({c.label for c in usable[split]} - set(names))
        if lost:
            raise DataError(f"class {lost[0]!r} has no usable clip in the training folder", folder / lost[0])

    if valid_dir is not None:
        train, valid = good, usable["valid"]
        if not valid:
            raise DataError("no usable clip in the validation folder", valid_dir)
    else:
        is_valid = grouped_split([index[c.label] for c in good], [c.group for c in good], valid_fraction, seed)
        if not any(is_valid):
            raise DataError("too few groups for a validation split (a class needs two groups of clips: takes of "
                            "one sound are one group); add clips or --set valid_dir=FOLDER", root)  # fmt: skip
        single = [n for n in names if len({c.group for c in good if c.label == n}) < 2]
        if single:
            log.warning("%s: class %s has one group of clips only: none of it is in validation", root, single[0])
        train = [c for c, v in zip(good, is_valid, strict=True) if not v]
        valid = [c for c, v in zip(good, is_valid, strict=True) if v]
    test = usable["test"]

    write_label_table(LabelTable(mids=list(names), names=list(names)), out / LABEL_CSV)
    datafiles = {"train": str(write_datafile(out / "train.json", _rows(train))),
                 "valid": str(write_datafile(out / "valid.json", _rows(valid)))}  # fmt: skip
    if test:
        datafiles["test"] = str(write_datafile(out / "test.json", _rows(test)))
    fold_of: dict[Path, int] = {}
    if folds:
        fold = grouped_folds([index[c.label] for c in good], [c.group for c in good], folds, seed)
        if len(set(fold)) < folds:
            raise DataError(f"{len({c.group for c in good})} groups of clips cannot fill {folds} folds", root)
        fold_of = {c.path: f for c, f in zip(good, fold, strict=True)}
        for k in range(1, folds + 1):
            write_datafile(fold_datafile(out, k, "train"), _rows([c for c in good if fold_of[c.path] != k]))
            write_datafile(fold_datafile(out, k, "valid"), _rows([c for c in good if fold_of[c.path] == k]))

    if audio_length is None:
        durations = []
        for c in train:
            try:
                durations.append(audio_info(c.path).duration)
            except AudioError:  # decodes (checked) but its header says no length: not counted
                continue
        audio_length = audio_length_for(durations)
    conf = InputContract(num_mel_bins=num_mel_bins, target_length=audio_length)
    mean, std = norm_stats(AudioDataset(read_datafile(datafiles["train"], out / LABEL_CSV), conf))
    stats = {"dataset_mean": mean, "dataset_std": std, "audio_length": audio_length, "num_mel_bins": num_mel_bins}
    write_text_atomic(out / "stats.json", json.dumps(stats, indent=2) + "\n")
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["filename", "label", "group", "split", "fold"])
    for split, members in (("train", train), ("valid", valid), ("test", test)):
        writer.writerows([str(c.path), c.label, c.group, split, fold_of.get(c.path, "")] for c in members)
    write_text_atomic(out / SPLIT_CSV, table.getvalue())
    report_path = write_report(out, report)
    return {
        "label_csv": str(out / LABEL_CSV), "labels": names, "none_label": none_label, "folds": folds,
        "datafiles": datafiles, "clips": {"train": len(train), "valid": len(valid), "test": len(test)},
        "groups": {"train": len({c.group for c in train}), "valid": len({c.group for c in valid})},
        "stats": stats, "split": str(out / SPLIT_CSV), "bad_files": len(report), "report": str(report_path),
    }  # fmt: skip



# --------------------------------------------------------------------------- recipe


def _shipped(name: str) -> Path:
    return Path(str(resources.files(__package__) / name))


def choose_preset(ctx) -> tuple[str, dict, str]:
    """``(preset, training settings, the line saying which and why)``. ``pretrained``: the
    shipped ``folder.toml`` (AudioSet fine-tuning) under the user's settings; ``scratch``: the
    shipped ``scratch.toml`` under the user's settings. ``preset = "auto"`` takes the AudioSet
    path when ``audioset_pretrain`` is set (not false) or the published weights are in the cache,
    else from scratch, without trying a download."""
    from ..checkpoints.hub import DEFAULT_AUDIOSET, REGISTRY, cache_dir
    from ..train.config import check_train_table

    wanted = ctx.options.get("preset", "auto")
    if wanted not in PRESETS:
        raise ConfigError(f"preset must be one of {', '.join(PRESETS)}, got {wanted!r}")
    user = {key: ctx.train[key] for key in ctx.user_set if key in ctx.train}
    cached = cache_dir() / REGISTRY[DEFAULT_AUDIOSET].filename
    preset = wanted
    if wanted != "auto":
        why = f"--set preset={wanted}"
    elif "audioset_pretrain" in user:
        preset = "scratch" if user["audioset_pretrain"] is False else "pretrained"
        why = f"audioset_pretrain={str(user['audioset_pretrain']).lower()}"
    elif cached.is_file():
        preset, why = "pretrained", f"AudioSet weights found in {cached}"
    else:
        preset = "scratch"
        why = f"no AudioSet weights in {cached}; put them there or --set audioset_pretrain=PATH to fine-tune"
    if preset == "scratch":
        path = _shipped(SCRATCH)
        values = {**check_train_table(read_toml(path).get("train", {}), path), **user}
        line = f"preset: from scratch (scratch.toml): {why}"
    else:
        values = dict(ctx.train)
        line = f"preset: AudioSet fine-tuning (folder.toml): {why}"
    return preset, values, line


def _option_dir(ctx, key: str) -> Path | None:
    value = ctx.options.get(key) or ""
    return Path(value).expanduser().resolve() if str(value).strip() else None


def _record(exp: Path, preset: str, line: str, values: dict) -> None:
    """Add the preset taken and the training settings it resolved to ``EXP/recipe.json``."""
    path = exp / "recipe.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        doc = {}
    doc.update({"preset": preset, "preset_reason": line, "train": values})
    write_text_atomic(path, json.dumps(doc, indent=2) + "\n")


def run(ctx) -> dict:
    from ..train.config import resolve_train_config
    from ..train.loop import train

    preset, values, line = choose_preset(ctx)
    log.warning("%s", line)
    opts = ctx.options
    if not (float(opts["open_set"]) == 0 or 0 < float(opts["open_set"]) <= 1):
        raise ConfigError(f"open_set must be 0 (none) or the share of known clips to keep, in (0, 1]; got {opts['open_set']}")
    summary = prepare(
        ctx.root, ctx.data_dir, valid_dir=_option_dir(ctx, "valid_dir"), test_dir=_option_dir(ctx, "test_dir"),
        valid_fraction=float(opts["valid_fraction"]), seed=int(opts["split_seed"]), folds=int(opts["folds"]),
        audio_length=values.get("audio_length") if "audio_length" in ctx.user_set else None,
        num_mel_bins=values.get("num_mel_bins", 128), workers=ctx.workers, force=ctx.force_prepare,
    )  # fmt: skip
    values["audio_length"] = summary["stats"]["audio_length"]
    for key in ("dataset_mean", "dataset_std"):
        if key not in ctx.user_set:
            values[key] = summary["stats"][key]
    if summary["none_label"] and "none_label" not in ctx.user_set:
        values["none_label"] = summary["none_label"]
    _record(ctx.exp_dir, preset, line, values)
    owned = {"label_csv": summary["label_csv"], "n_class": len(summary["labels"])}
    head = {"preset": preset, "labels": summary["labels"], "none_label": summary["none_label"],
            "audio_length": values["audio_length"], "clips": summary["clips"]}  # fmt: skip
    if summary["folds"]:
        return {**head, **train_folds(ctx, values, owned, summary["folds"], "folder")}
    cfg = resolve_train_config(values, {
        "data_train": summary["datafiles"]["train"], "data_val": summary["datafiles"]["valid"], **owned,
        "exp_dir": str(ctx.exp_dir),
    })  # fmt: skip
    state = train(cfg)
    best = ctx.exp_dir / "models" / "best_audio_model.safetensors"
    splits = {"valid": summary["datafiles"]["valid"]}
    if "test" in summary["datafiles"]:
        splits["test"] = summary["datafiles"]["test"]
    opened = calibrate_open_set(best, summary["datafiles"]["valid"], summary["label_csv"], float(opts["open_set"]), cfg)
    scores = evaluate_splits(best, splits, summary["label_csv"], ctx.exp_dir, cfg)
    return {**head, "best_epoch": state.best_epoch, **opened, **scores, "deliverable": str(best)}


def result_lines(result: dict) -> list[str]:
    """What ``ast-audio recipe folder`` prints: the labels, then the accuracies."""
    lines = [f"labels: {', '.join(result['labels'])}" + (f" (none of these: {result['none_label']})"
                                                         if result.get("none_label") else "")]  # fmt: skip
    lines.append(f"clips: {json.dumps(result['clips'])}; audio_length {result['audio_length']} frames")
    if "folds" in result:
        metric = "acc" if "acc" in result else "mAP"
        lines += [f"fold {k}: {metric} {v:.4f}" for k, v in zip(result["folds"], result[metric], strict=True)]
        lines.append(f"mean {metric} {result['mean']:.4f} (epoch {result['best_epoch']}, best by the folds' mean)")
        return lines
    lines.append(f"best epoch {result['best_epoch']}: validation accuracy {result['valid_acc']:.4f}")
    if "test_acc" in result:
        lines.append(f"test accuracy {result['test_acc']:.4f}")
    if "open_set" in result:
        o = result["open_set"]
        lines.append(f"open set: {o['score']} >= {o['threshold']:.4f} keeps {o['kept']:.1%} of the known validation clips; "
                     "predict answers unknown below it")  # fmt: skip
    lines += [f"{split} report: {result[f'{split}_report']}" for split in ("valid", "test") if f"{split}_report" in result]
    return lines
