"""Labelled audio from whatever the user has: a datafile JSON, a CSV, or a folder of class folders.

:func:`datafile_from` reads any of the three into a :class:`~ast_audio.data.datafiles.Datafile`
against a label table (a label CSV's, or the one a checkpoint stores):

- a **folder** with one subfolder per class: the subfolder's name is the label, and every
  audio file under it (nested folders included; hidden files and folders left out) is a
  clip of that class; files directly in the folder belong to no class and are left out
  with a warning;
- a **CSV** with a ``filename`` (or ``wav``) column and a label column (``label`` or
  ``labels``, or the only other column; several labels of one clip as ``a;b``), or several
  0/1 columns, one per class, as the csv recipe reads them. A relative file name is looked
  up next to the CSV first, then from the current directory; a name without an extension
  is also tried with each audio extension;
- anything else is a datafile JSON (:func:`~ast_audio.data.datafiles.read_datafile`).

A label in a folder or CSV is matched to the table by its ``mid`` first, then by its
display name; a label the table does not hold is a one-line error naming it.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

from ..audio.io import AUDIO_EXTENSIONS, file_problem
from ..errors import DataError
from .datafiles import Datafile, Entry, read_datafile
from .folders import audio_files, scan
from .labels import LabelTable, read_label_csv

log = logging.getLogger(__name__)

__all__ = ["data_kind", "datafile_from", "labelled_files"]

FILE_COLUMNS = ("filename", "wav")
LABEL_COLUMNS = ("label", "labels")


def data_kind(path: str | os.PathLike) -> str:
    """``"folder"``, ``"csv"`` or ``"json"``: a folder, a ``.csv`` file, a ``.json`` file; any
    other file by its first character (``{`` starts a JSON object)."""
    path = Path(path)
    if path.is_dir():
        return "folder"
    suffix = path.suffix.lower()
    if suffix in (".csv", ".json"):
        return suffix[1:]
    try:
        with open(path, encoding="utf-8-sig") as fh:
            head = fh.read(4096).lstrip()
    except FileNotFoundError:
        raise DataError("not found (expected a datafile JSON, a CSV or a folder of class folders)", path) from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read: {err}", path) from None
    return "json" if head.startswith("{") else "csv"


def _folder_files(root: Path) -> list[tuple[Path, list[str]]]:
    """``[(file, [class folder name]), ...]``: every audio file under each class folder, as
    ``recipe folder`` reads them (:func:`ast_audio.data.folders.scan`)."""
    if not any(folder.is_dir() and audio_files(folder) for folder in root.iterdir() if not folder.name.startswith(".")):
        raise DataError(f"no audio files in class subfolders ({', '.join(AUDIO_EXTENSIONS)})", root)
    _, clips, stray = scan(root)
    if stray:
        log.warning("%s: %d audio files directly in the folder belong to no class folder and are left out", root, len(stray))
    return [(clip.path, [clip.label]) for clip in clips]


def _audio_path(name: str, base: Path) -> Path:
    path = Path(name).expanduser()
    candidates = [path] if path.is_absolute() else [base / path, path]
    for candidate in candidates:
        if candidate.exists():
            return candidate
        if not candidate.suffix:
            for ext in AUDIO_EXTENSIONS:
                if candidate.with_name(candidate.name + ext).exists():
                    return candidate.with_name(candidate.name + ext)
    return candidates[0]


def _csv_files(path: Path) -> list[tuple[Path, list[str]]]:
    """``[(file, [label, ...]), ...]`` of a CSV, in its order."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
            columns = [c.strip() for c in reader.fieldnames or []]
    except FileNotFoundError:
        raise DataError("CSV not found", path) from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read CSV: {err}", path) from None
    file_column = next((c for c in FILE_COLUMNS if c in columns), None)
    if file_column is None:
        raise DataError(f"expected a 'filename' column and a 'label' column, found {columns}", path)
    others = [c for c in columns if c != file_column]
    label_column = next((c for c in LABEL_COLUMNS if c in others), others[0] if len(others) == 1 else None)
    binary = label_column is None and len(others) > 1 and all(row.get(c) in ("0", "1") for row in rows for c in others)
    if label_column is None and not binary:
        raise DataError(f"name the label column 'label' (or give 0/1 columns, one per class); columns: {columns}", path)
    items = []
    for line, row in enumerate(rows, start=2):
        if not row.get(file_column):
            raise DataError(f"line {line}: empty {file_column}", path)
        if binary:
            labels = [c for c in others if row[c] == "1"]
        else:
            labels = [v.strip() for v in row.get(label_column, "").split(";") if v.strip()]
        if not labels:
            raise DataError(f"line {line} ({row[file_column]}): no label", path)
        items.append((_audio_path(row[file_column], path.parent), labels))
    if not items:
        raise DataError("no rows", path)
    return items


def labelled_files(path: str | os.PathLike) -> list[tuple[Path, list[str]]]:
    """``[(audio file, [label, ...]), ...]`` of a folder of class folders or of a CSV."""
    path = Path(path)
    kind = data_kind(path)
    if kind == "json":
        raise DataError("a datafile JSON names labels by mid: read it with a label table (datafile_from)", path)
    return _folder_files(path) if kind == "folder" else _csv_files(path)


def datafile_from(
    path: str | os.PathLike, labels: LabelTable | str | os.PathLike, *, check_files: bool = True
) -> Datafile:
    """The clips of a datafile JSON, a CSV or a folder of class folders, labelled against
    ``labels`` (a table, or a label CSV path or built-in name)."""
    path = Path(path)
    table = labels if isinstance(labels, LabelTable) else read_label_csv(labels)
    if data_kind(path) == "json":
        return read_datafile(path, table, check_files=check_files)
    by_mid, by_name = table.index(), {name: i for i, name in reversed(list(enumerate(table.names)))}
    entries = []
    for wav, names in labelled_files(path):
        unknown = [n for n in names if n not in by_mid and n not in by_name]
        if unknown:
            known = ", ".join(table.names[:8]) + (", ..." if len(table) > 8 else "")
            raise DataError(f"label {unknown[0]!r} ({wav}) is not one of the labels ({known})", path)
        if check_files and (problem := file_problem(wav)):
            raise DataError(f"{wav}: {problem}", path)
        entries.append(Entry(wav, tuple(sorted({by_mid.get(n, by_name.get(n)) for n in names}))))
    return Datafile(path, table, entries)
