"""Label tables (``index,mid,display_name``) and the ones shipped with the package.

The shipped tables are the original recipes'; their row order is the output order of
the published checkpoints (Speech Commands index 0 is "backward", not alphabetical).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import AstAudioError

BUILTIN = {
    "audioset": "audioset_class_labels_indices.csv",
    "esc50": "esc50_class_labels_indices.csv",
    "speechcommands": "speechcommands_class_labels_indices.csv",
}


@dataclass(frozen=True)
class LabelTable:
    mids: list[str]
    names: list[str]

    def __len__(self) -> int:
        return len(self.mids)

    def index(self) -> dict[str, int]:
        return {mid: i for i, mid in enumerate(self.mids)}


def builtin_label_path(name: str) -> Path:
    if name not in BUILTIN:
        raise AstAudioError(f"no built-in label table {name!r}; known: {', '.join(BUILTIN)}")
    return Path(str(resources.files(__package__) / "tables" / BUILTIN[name]))


def write_label_table(table: LabelTable, path: str | os.PathLike) -> Path:
    """Write ``index,mid,display_name`` (atomically)."""
    from ..base.fileio import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, quoting=csv.QUOTE_MINIMAL)
            writer.writerow(["index", "mid", "display_name"])
            writer.writerows([i, mid, name] for i, (mid, name) in enumerate(zip(table.mids, table.names, strict=True)))

    return atomic_write(path, write)


def read_label_csv(source: str | os.PathLike) -> LabelTable:
    """Read a label CSV (``index,mid,display_name``) or a built-in table by name."""
    path = builtin_label_path(source) if source in BUILTIN else Path(source)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # a byte-order mark (Excel's) is no header
            rows = list(csv.DictReader(fh))
    except FileNotFoundError:
        raise AstAudioError("label CSV not found", path) from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise AstAudioError(f"cannot read label CSV: {err}", path) from None
    if not rows or not {"index", "mid", "display_name"} <= set(rows[0]):
        raise AstAudioError("label CSV needs a header 'index,mid,display_name' and at least one row", path)
    short = next((n for n, r in enumerate(rows, 1) if None in (r["index"], r["mid"], r["display_name"])), None)
    if short is not None:
        raise AstAudioError(f"label CSV row {short} has fewer than 3 fields (index,mid,display_name)", path)
    try:
        rows.sort(key=lambda r: int(r["index"]))
    except ValueError:
        raise AstAudioError("label CSV has a non-integer 'index'", path) from None
    indices = [int(r["index"]) for r in rows]
    if indices != list(range(len(rows))):
        raise AstAudioError("label CSV indices must be 0..N-1 with no gaps or repeats", path)
    mids = [r["mid"] for r in rows]
    if len(set(mids)) != len(mids):
        raise AstAudioError("label CSV has a repeated mid", path)
    return LabelTable(mids=mids, names=[r["display_name"] for r in rows])
