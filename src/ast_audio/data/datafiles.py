"""Datafiles and label tables of the original recipes, checked up front.

A datafile is JSON ``{"data": [{"wav": "path/to/clip.wav", "labels": "mid1,mid2"}, ...]}``
and its labels refer to the ``mid`` column of a label CSV (``index,mid,display_name``), or,
read without one, to a checkpoint's labels by name (:func:`match_datafile`). An entry may also
name its ``"group"`` (a string: the recording session, the kit, the speaker), as ``recipe
folder`` writes it: clips of one group are kept together wherever the trainer itself splits
clips (the clip-statistics branch's cross-validation); the original ignores the field.
Everything is checked when the file is read, so a run fails at start, naming the entry at
fault, rather than after an hour on entry 51 000; ``skip_bad=True`` instead leaves bad
entries out and reports them.

A relative ``wav`` path is looked up next to the datafile first, then from the current
directory (where the original looked).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..audio.io import file_problem, load_audio
from ..base.fileio import atomic_write
from ..errors import AstAudioError, AudioError, DataError
from .labels import LabelTable, match_labels, read_label_csv

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    wav: Path
    labels: tuple[int, ...]  # indices into the label table
    group: str | None = None  # related clips share one (optional ``"group"`` field)

    def target(self, num_classes: int) -> np.ndarray:
        vector = np.zeros(num_classes, dtype=np.float32)
        vector[list(self.labels)] = 1.0
        return vector


@dataclass
class Datafile:
    path: Path
    labels: LabelTable
    entries: list[Entry]
    skipped: list[str] = field(default_factory=list)  # one line per entry left out

    def __len__(self) -> int:
        return len(self.entries)

    def targets(self) -> np.ndarray:
        """``[clips, classes]`` multi-hot label matrix."""
        out = np.zeros((len(self.entries), len(self.labels)), dtype=np.float32)
        for i, entry in enumerate(self.entries):
            out[i, list(entry.labels)] = 1.0
        return out


def _resolve_wav(wav: str, base: Path) -> Path:
    try:
        path = Path(wav).expanduser()
    except RuntimeError:  # "~someone" who has no home here: a plain relative name
        path = Path(wav)
    if path.is_absolute():
        return path
    beside = base / path
    return beside if beside.exists() or not path.exists() else path


def read_datafile(
    path: str | os.PathLike,
    label_csv: str | os.PathLike | LabelTable | None,
    *,
    check_files: bool = True,
    skip_bad: bool = False,
) -> Datafile:
    """Read and check a datafile against a label table (a CSV path, built-in name or table).

    ``label_csv=None`` takes the labels the datafile names, in the order they first appear,
    as a ``named_only`` table: one to meet a checkpoint's labels by name (:func:`match_datafile`)."""
    path = Path(path)
    doc = _read_doc(path)
    if label_csv is None:
        labels = _named_labels(doc, path)
    else:
        labels = label_csv if isinstance(label_csv, LabelTable) else read_label_csv(label_csv)
    index = labels.index()
    entries: list[Entry] = []
    skipped: list[str] = []
    for i, item in enumerate(doc["data"]):
        try:
            entries.append(_entry(i, item, index, path.parent, check_files))
        except DataError as err:
            if not skip_bad:
                raise DataError(err.reason, path) from None
            skipped.append(err.reason)
    if skipped:
        log.warning("%s: left out %d bad entries (first: %s)", path, len(skipped), skipped[0])
    if not entries:
        raise DataError("no usable entries", path)
    return Datafile(path, labels, entries, skipped)


def match_datafile(
    datafile: Datafile, names: list[str] | None, ids: list[str] | None, outputs: int, checkpoint: object = "the checkpoint"
) -> Datafile:
    """``datafile`` with its labels in a checkpoint's output order, matched by name
    (:func:`~ast_audio.data.labels.match_labels`): its table becomes the checkpoint's labels
    and each entry's labels become output indices, so ``targets()`` lines up with the model's
    scores. A checkpoint that stores no names keeps the datafile's table, by position."""
    order = match_labels(datafile.labels, names, ids, outputs, checkpoint)
    if not names and not ids:
        return datafile
    table = LabelTable(mids=list(ids or names), names=list(names or ids), source=datafile.labels.source)
    entries = [Entry(e.wav, tuple(sorted(order[i] for i in e.labels)), e.group) for e in datafile.entries]
    return Datafile(datafile.path, table, entries, datafile.skipped)


def _named_labels(doc: dict, path: Path) -> LabelTable:
    """The labels the entries of a datafile name, in the order they first appear."""
    seen: dict[str, None] = {}
    for item in doc["data"]:
        if isinstance(item, dict) and isinstance(item.get("labels"), str):
            seen.update(dict.fromkeys(m.strip() for m in item["labels"].split(",") if m.strip()))
    return LabelTable(mids=list(seen), names=list(seen), source=os.fspath(path), named_only=True)


def _read_doc(path: Path) -> dict:
    """The datafile's JSON object ``{"data": [...]}`` (a UTF-8 byte-order mark is allowed)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError("datafile not found", path) from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read datafile: {err}", path) from None
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        where = f"line {err.lineno}, column {err.colno}: {err.msg}" if isinstance(err, json.JSONDecodeError) else "nested too deeply"
        raise DataError(f"not valid JSON ({where})", path) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError('expected a JSON object {"data": [{"wav": ..., "labels": ...}, ...]}', path)
    return doc


def _wav_of(i: int, item: object, base: Path) -> Path:
    if not isinstance(item, dict):
        raise DataError(f"entry {i}: expected an object with 'wav' and 'labels'")
    for key in ("wav", "labels"):
        if not isinstance(item.get(key), str) or not item[key].strip():
            raise DataError(f"entry {i}: missing or empty '{key}'")
    if "\0" in item["wav"]:
        raise DataError(f"entry {i}: 'wav' holds a NUL character")
    return _resolve_wav(item["wav"], base)


def _entry(i: int, item: object, index: dict[str, int], base: Path, check_files: bool) -> Entry:
    wav = _wav_of(i, item, base)
    mids = [m.strip() for m in item["labels"].split(",") if m.strip()]
    unknown = [m for m in mids if m not in index]
    if unknown:
        raise DataError(f"entry {i} ({item['wav']}): label {unknown[0]!r} is not in the label CSV")
    if not mids:
        raise DataError(f"entry {i} ({item['wav']}): no labels")
    group = item.get("group")
    if group is not None and not isinstance(group, str):
        raise DataError(f"entry {i} ({item['wav']}): group must be a string, got {group!r}")
    if check_files and (problem := file_problem(wav)):
        raise DataError(f"entry {i}: audio {problem}: {wav}" if problem == "file not found" else f"entry {i}: {wav}: {problem}")
    return Entry(wav, tuple(sorted({index[m] for m in mids})), group)


# --------------------------------------------------------------------------- the full decode check


def check_clip(path: str | os.PathLike) -> str | None:
    """``None`` if the file decodes completely to at least one finite sample, else the reason."""
    try:
        load_audio(path, sample_rate=None, strict=True)
    except AudioError as err:
        return err.reason
    return None


def check_audio_files(
    paths: Iterable[Path], workers: int | None = None, progress: bool | None = None
) -> dict[Path, str]:
    """Decode every file once, completely (in threads: libsndfile releases the GIL);
    ``{path: reason}`` for the bad ones, in the order given."""
    from tqdm.auto import tqdm

    paths = list(dict.fromkeys(paths))
    if not paths:
        return {}
    with ThreadPoolExecutor(max_workers=workers or max(1, min(8, os.cpu_count() or 1))) as pool:
        reasons = list(
            tqdm(pool.map(check_clip, paths), total=len(paths), desc="checking clips", leave=False,
                 disable=None if progress is None else not progress)
        )  # fmt: skip
    return {path: reason for path, reason in zip(paths, reasons, strict=True) if reason}


def check_datafile(
    path: str | os.PathLike,
    label_csv: str | os.PathLike | LabelTable | None = None,
    *,
    workers: int | None = None,
    progress: bool | None = None,
) -> tuple[int, list[str]]:
    """Every problem of a datafile in one pass: malformed entries (and, with ``label_csv``,
    unknown labels), then every audio file that does not decode completely (missing,
    unreadable, empty, undecodable, truncated, NaN samples), as ``load_audio(strict=True)``
    finds them. Returns ``(entries, ["<entry or file>: <reason>", ...])``."""
    path = Path(path)
    if label_csv is not None:
        df = read_datafile(path, label_csv, check_files=False, skip_bad=True)
        problems, wavs, total = list(df.skipped), [e.wav for e in df.entries], len(df.entries) + len(df.skipped)
    else:
        problems, wavs = [], []
        items = _read_doc(path)["data"]
        for i, item in enumerate(items):
            try:
                wavs.append(_wav_of(i, item, path.parent))
            except DataError as err:
                problems.append(err.reason)
        total = len(items)
    bad = check_audio_files(wavs, workers, progress)
    return total, problems + [f"{wav}: {reason}" for wav, reason in bad.items()]


def write_datafile(path: str | os.PathLike, rows: list[tuple]) -> Path:
    """Write ``[(wav, [mid, ...]), ...]`` as a datafile (atomically); a row's optional third
    item is the clip's group."""
    data = {"data": [{"wav": str(wav), "labels": ",".join(mids), **({"group": str(rest[0])} if rest else {})}
                     for wav, mids, *rest in rows]}  # fmt: skip
    text = json.dumps(data, indent=1) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# --------------------------------------------------------------------------- balanced sampling


def class_weights(counts: np.ndarray) -> np.ndarray:
    """The original's balanced-sampling weight of each class from its clip ``counts``: ``1000 / (count + 0.01)``."""
    return 1000.0 / (counts + 0.01)


def balanced_weights(datafile: Datafile) -> np.ndarray:
    """Per-clip sampling weights: :func:`class_weights` summed over a clip's labels."""
    class_weight = class_weights(datafile.targets().sum(0))  # (classes,)
    return np.array([class_weight[list(e.labels)].sum() for e in datafile.entries], dtype=np.float64)


def weight_file_for(datafile_path: str | os.PathLike) -> Path:
    """Where the original put the weights: ``train.json`` -> ``train_weight.csv``."""
    path = Path(datafile_path)
    return path.with_name(path.stem + "_weight.csv")


def write_weights(datafile: Datafile, out: str | os.PathLike | None = None) -> Path:
    out = Path(out) if out is not None else weight_file_for(datafile.path)
    weights = balanced_weights(datafile)
    return atomic_write(out, lambda tmp: np.savetxt(tmp, weights, delimiter=","))


def read_weights(path: str | os.PathLike, expected: int) -> np.ndarray:
    try:
        weights = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=1)
    except (OSError, ValueError) as err:
        raise AstAudioError(f"cannot read sampling weights: {err}", path) from None
    if weights.shape != (expected,) or not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise AstAudioError(f"expected {expected} finite non-negative weights, one per datafile entry", path)
    return weights
