"""Speech Commands V2 (35 words) from ``speech_commands_v0.02`` as distributed.

Layout read: one folder per word holding 1 s, 16 kHz wavs, ``_background_noise_``
(long noise recordings, not a class: left out, as every folder whose name starts with
``_`` or ``.``), ``validation_list.txt`` and ``testing_list.txt`` (paths relative to the
root, ``word/speaker_nohash_n.wav``). Validation and test are those lists; training is
every other clip of the word folders (a clip in both lists counts as test). A word
folder that is not one of the 35 words of the shipped label table stops prepare (another
dataset version, or the wrong folder); a listed clip that is not there is reported as
a bad file.

Prepare writes, in the original's names, ``speechcommand_train_data.json``,
``speechcommand_valid_data.json``, ``speechcommand_eval_data.json``, the 35-class
``speechcommands_class_labels_indices.csv`` (the published checkpoint's output order:
index 0 is "backward"), ``bad_files.txt`` and ``prepared.json``.

The recipe trains on train, keeps the best model on valid and scores it on test
(``EXP/eval_result.csv``: valid acc, valid mAUC, test acc, test mAUC).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..data.datafiles import write_datafile
from ..data.labels import builtin_label_path, read_label_csv
from ..errors import DataError
from .common import check_clips, copy_label_table, ensure_prepared, fingerprint, require_file, write_report

log = logging.getLogger(__name__)

LABEL_CSV = "speechcommands_class_labels_indices.csv"
SPLITS = {
    "train": "speechcommand_train_data.json",
    "valid": "speechcommand_valid_data.json",
    "test": "speechcommand_eval_data.json",
}
LISTS = {"valid": "validation_list.txt", "test": "testing_list.txt"}


def _read_list(path: Path, words: set[str]) -> list[str]:
    require_file(path, "Speech Commands split list")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read: {err}", path) from None
    rels = []
    for number, line in enumerate(lines, start=1):
        rel = line.strip().replace("\\", "/")
        if not rel:
            continue
        word = rel.split("/", 1)[0]
        if "/" not in rel or word not in words:
            raise DataError(f"line {number}: {rel!r} is not a path word/clip.wav of one of the 35 words", path)
        rels.append(rel)
    return rels


def prepare(
    root: str | os.PathLike, out: str | os.PathLike, *, workers: int | None = None, force: bool = True,
    progress: bool | None = None,
) -> dict:  # fmt: skip
    """``speech_commands_v0.02`` -> train / valid / test datafiles + label CSV in ``out``."""
    root, out = Path(root).expanduser().resolve(), Path(out).expanduser().resolve()
    inputs = {"root": str(root), "lists": [fingerprint(root / name) for name in LISTS.values()]}
    return ensure_prepared(out, "speechcommands", inputs, lambda: _prepare(root, out, workers, progress), force=force)


def _prepare(root: Path, out: Path, workers: int | None, progress: bool | None) -> dict:
    if not root.is_dir():
        raise DataError("Speech Commands folder not found", root)
    labels = read_label_csv("speechcommands")
    mid_of = dict(zip(labels.names, labels.mids, strict=True))
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(("_", ".")))
    unknown = [d.name for d in folders if d.name not in mid_of]
    if unknown:
        raise DataError(f"folder {unknown[0]!r} is not one of the 35 Speech Commands V2 words", root)
    present = [f"{d.name}/{f.name}" for d in folders for f in sorted(d.iterdir()) if f.suffix.lower() == ".wav"]
    if not present:
        raise DataError("no word folders with .wav clips (expected e.g. yes/0a7c2a8d_nohash_0.wav)", root)
    test = _read_list(root / LISTS["test"], set(mid_of))
    test_set = set(test)
    valid = [rel for rel in _read_list(root / LISTS["valid"], set(mid_of)) if rel not in test_set]
    held_out = test_set | set(valid)
    splits = {"train": [rel for rel in present if rel not in held_out], "valid": valid, "test": test}
    listing = [rel for name in ("train", "valid", "test") for rel in splits[name]]
    bad = check_clips([root / rel for rel in listing], workers, progress)
    counts = {}
    for name, rels in splits.items():
        rows = [(root / rel, [mid_of[rel.split("/", 1)[0]]]) for rel in rels if root / rel not in bad]
        if not rows:
            raise DataError(f"the {name} split has no usable clip", root)
        write_datafile(out / SPLITS[name], rows)
        counts[name] = len(rows)
    label_csv = copy_label_table(builtin_label_path("speechcommands"), out, LABEL_CSV)
    report = write_report(out, [(root / rel, bad[root / rel]) for rel in listing if root / rel in bad])
    return {"label_csv": str(label_csv), "clips": counts, "bad_files": len(bad), "report": str(report)}


def run(ctx) -> dict:
    import numpy as np

    from ..train.config import resolve_train_config
    from ..train.loop import train

    summary = prepare(ctx.root, ctx.data_dir, workers=ctx.workers, force=ctx.force_prepare)
    cfg = resolve_train_config(ctx.train, {
        "data_train": str(ctx.data_dir / SPLITS["train"]), "data_val": str(ctx.data_dir / SPLITS["valid"]),
        "data_eval": str(ctx.data_dir / SPLITS["test"]), "label_csv": summary["label_csv"], "n_class": 35,
        "exp_dir": str(ctx.exp_dir),
    })  # fmt: skip
    state = train(cfg)
    result = ctx.exp_dir / "eval_result.csv"
    valid_acc, valid_mauc, test_acc, test_mauc = np.loadtxt(result, delimiter=",", ndmin=1).tolist()
    return {
        "deliverable": str(result), "best_epoch": state.best_epoch, "valid_acc": valid_acc, "valid_mAUC": valid_mauc,
        "test_acc": test_acc, "test_mAUC": test_mauc,
    }  # fmt: skip
