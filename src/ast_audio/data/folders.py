"""A folder of class folders (one subfolder per class, label = the folder's name): its
clips, and which of them belong together.

:func:`scan` lists the clips of ``DIR/<class>/...`` (any depth below a class folder: everything
under it is that class; files of any of :data:`~ast_audio.audio.io.AUDIO_EXTENSIONS`; hidden
files and folders, and other files, are not read) and gives each clip a **group**, the clips
that must stay on one side of a split (takes of one sound, one recording session). A clip's
group is, first found: its row in a ``groups.csv`` (``filename,group``, filenames relative to
its folder); the first subfolder below its class folder (``dog/session3/...``: a session);
else its file name without the take number (:func:`take_stem`: ``dog_01.wav``,
``dog-take3.flac``, ``Dog (2).wav`` are all ``dog``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ..audio.io import AUDIO_EXTENSIONS
from ..errors import ConfigError, DataError

__all__ = ["BACKGROUND_NAMES", "Clip", "audio_files", "background_label", "listing_digest", "read_groups", "scan",
           "take_stem"]  # fmt: skip

log = logging.getLogger(__name__)

# Class folders holding sounds of none of the classes ("none of these").
BACKGROUND_NAMES = ("_background", "background", "none", "other")

# A trailing take number: "_01", "-take3", " (2)", " Take 2", "[3]", "2" (one, the last).
_TAKE = re.compile(r"[\s._-]*(?:take|tk)?[\s._-]*(?:\(\d+\)|\[\d+\]|\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class Clip:
    path: Path
    label: str
    group: str


def take_stem(stem: str) -> str:
    """A file name's stem without its take number, lower-cased: the last number, with the
    separators (space ``._-``) and the word ``take``/``tk`` before it (``Dog_01``, ``dog-take3``,
    ``dog (2)`` -> ``dog``; ``s1_02`` -> ``s1``: only the last number is a take). A stem that is
    only a number stays itself (``01``: a clip of its own)."""
    base = _TAKE.sub("", stem).rstrip(" ._-").lower()
    return base or stem.lower()


# --------------------------------------------------------------------------- scanning


def _hidden(parts: tuple[str, ...]) -> bool:
    return any(part.startswith(".") for part in parts)


def audio_files(folder: Path) -> list[Path]:
    files = [p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()]
    return sorted(p for p in files if not _hidden(p.relative_to(folder).parts))


def scan(root: Path, groups: dict[Path, str] | None = None) -> tuple[list[str], list[Clip], list[tuple[Path, str]]]:
    """``(class names, clips, stray files)`` of a folder of class folders: the class folders
    holding audio files (sorted by name), their clips (each with its group) and the audio
    files directly in ``root`` (``(path, reason)``), which belong to no class."""
    if not root.is_dir():
        raise DataError("folder not found", root)
    groups = groups or {}
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    clips: list[Clip] = []
    names: list[str] = []
    for folder in folders:
        files = audio_files(folder)
        if not files:
            log.warning("%s holds no audio files: not a class", folder)
            continue
        if "," in folder.name:
            raise DataError("a class folder's name may not contain a comma (labels are comma-separated)", folder)
        names.append(folder.name)
        for path in files:
            rel = path.relative_to(folder).parts
            if path.resolve() in groups:
                group = "groups.csv:" + groups[path.resolve()]
            elif len(rel) > 1:
                group = f"{folder.name}/{rel[0]}/"
            else:
                group = f"{folder.name}/{take_stem(path.stem)}"
            clips.append(Clip(path.resolve(), folder.name, group))
    stray = [(p.resolve(), "an audio file directly in the folder belongs to no class; put it in a class folder")
             for p in sorted(root.iterdir()) if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS]  # fmt: skip
    return names, clips, stray


def read_groups(path: Path) -> dict[Path, str]:
    """``groups.csv`` (``filename,group``; filenames relative to its folder): ``{file: group}``."""
    if not path.is_file():
        return {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            columns = [c.strip() for c in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read: {err}", path) from None
    if not {"filename", "group"} <= set(columns):
        raise DataError(f"expected the columns filename,group, found {columns}", path)
    groups = {}
    for number, row in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        if not row["filename"] or not row["group"]:
            raise DataError(f"line {number}: empty filename or group", path)
        file = (path.parent / row["filename"]).resolve()
        if not file.is_file():
            raise DataError(f"line {number}: no file {row['filename']!r} in {path.parent}", path)
        groups[file] = row["group"]
    return groups


def background_label(names: list[str]) -> str | None:
    """The class folder meaning "none of these" (:data:`BACKGROUND_NAMES`, any case), if any."""
    found = [name for name in names if name.lower() in BACKGROUND_NAMES]
    if len(found) > 1:
        raise ConfigError(f"several background class folders ({', '.join(found)}): keep one")
    return found[0] if found else None


def listing_digest(root: Path) -> str:
    """A digest of the audio files under ``root`` (paths, sizes, modification times): what
    says that a folder's contents changed."""
    digest = hashlib.sha256()
    for path in audio_files(root):
        st = path.stat()
        digest.update(json.dumps([str(path), st.st_size, st.st_mtime_ns]).encode())
    return digest.hexdigest()
