"""Label tables (``index,mid,display_name``), the ones shipped with the package, and the
one rule by which a table meets a checkpoint's outputs (:func:`match_labels`).

The shipped tables are the original recipes'; their row order is the output order of
the published checkpoints (Speech Commands index 0 is "backward", not alphabetical).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..errors import AstAudioError, DataError

BUILTIN = {
    "audioset": "audioset_class_labels_indices.csv",
    "esc50": "esc50_class_labels_indices.csv",
    "speechcommands": "speechcommands_class_labels_indices.csv",
}


@dataclass(frozen=True)
class LabelTable:
    """Label ids (``mid``) and display names, row ``i`` being class ``i`` of the data.

    ``source`` is the file the table came from (error messages name it). ``named_only`` marks
    a table gathered from a datafile's labels rather than read from a label CSV: its row
    order means nothing, so it meets a checkpoint by name only (:func:`match_labels`)."""

    mids: list[str]
    names: list[str]
    source: str | None = field(default=None, compare=False)
    named_only: bool = field(default=False, compare=False)

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
    return LabelTable(mids=mids, names=[r["display_name"] for r in rows], source=os.fspath(path))


def match_labels(
    table: LabelTable,
    names: Sequence[str] | None,
    ids: Sequence[str] | None,
    outputs: int,
    checkpoint: object = "the checkpoint",
) -> list[int]:
    """The checkpoint output of each row of ``table``: row ``j`` is output ``order[j]``.

    ``names``/``ids`` are the display names and ids the checkpoint stores (``ModelInfo.labels``,
    ``ModelInfo.label_ids``), in output order, either or both ``None``; ``outputs`` is its
    number of outputs. The rule, the same wherever a label table or a datafile meets a
    checkpoint:

    - a checkpoint that stores names or ids: each row's ``mid`` is looked up among the
      checkpoint's ids, and failing that its ``display_name`` among the checkpoint's names
      (surrounding spaces ignored, case kept). A row found in neither, a value that names two
      outputs, or two rows on one output is a :class:`~ast_audio.errors.DataError` naming the
      table's file and the label. The table may hold fewer labels than the checkpoint: its
      clips then have no positives for the others.
    - a checkpoint that stores neither: row ``j`` is output ``j``, as the original AST did, and
      the table must have exactly ``outputs`` rows; a ``named_only`` table (one gathered from a
      datafile) cannot be matched at all.
    """
    where = table.source
    if not names and not ids:
        if table.named_only:
            raise DataError(f"{checkpoint} stores no label names to match the labels against; "
                            "give the label CSV it was trained with", where)  # fmt: skip
        if len(table) != outputs:
            raise DataError(f"{len(table)} labels, but {checkpoint} has {outputs} outputs (it stores no label "
                            "names, so labels are matched by position)", where)  # fmt: skip
        return list(range(outputs))
    by_id, by_name = _positions(ids), _positions(names)
    order: list[int] = []
    taken: dict[int, str] = {}
    for mid, name in zip(table.mids, table.names, strict=True):
        hits = by_id.get(mid.strip()) or by_name.get(name.strip())
        label = mid if mid == name else f"{name} ({mid})"
        if not hits:
            known = list(names or ids or [])
            shown = ", ".join(known[:8]) + (f", ... ({len(known)} in all)" if len(known) > 8 else "")
            raise DataError(f"label {label!r} is not one of the labels of {checkpoint} ({shown})", where)
        if len(hits) > 1:
            raise DataError(f"label {label!r} names {len(hits)} outputs of {checkpoint} ({hits[0]} and {hits[1]})", where)
        if hits[0] in taken:
            raise DataError(f"labels {taken[hits[0]]!r} and {label!r} both name output {hits[0]} of {checkpoint}", where)
        taken[hits[0]] = label
        order.append(hits[0])
    return order


def _positions(values: Sequence[str] | None) -> dict[str, list[int]]:
    """Each value's output positions (a list: a repeated value is ambiguous)."""
    out: dict[str, list[int]] = {}
    for i, value in enumerate(values or []):
        out.setdefault(str(value).strip(), []).append(i)
    return out
