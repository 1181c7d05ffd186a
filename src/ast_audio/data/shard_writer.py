"""Writing WebDataset shards (``ast-audio shard``, :func:`write_shards`); reading them for
training is :mod:`ast_audio.data.shards`, which takes the format's names from here.

Every usable clip of a datafile becomes one sample ``KEY.EXT`` (the file's own bytes, so the
same samples as training from the files; with ``flac=True`` the clip decoded, mixed to mono,
resampled to 16 kHz and stored as 16-bit FLAC, smaller but no longer bit-identical) plus
``KEY.json`` (``{"wav": original path, "labels": "mid1,mid2", "index": datafile position}``).
A shard closes before it would pass ``max_size`` bytes, and the clips are spread over at least
``min_shards`` shards (default :data:`MIN_SHARDS`, 8) when there are that many: training deals
whole shards to ``processes x loader workers`` readers, so a small dataset written with the
default size still feeds ``torchrun --nproc_per_node 8``. Every clip is decoded once,
completely; missing, undecodable or truncated files (and datafile entries that do not check)
are left out and listed in ``DIR/bad_files.txt`` as ``prepare`` does. ``DIR/index.json`` lists
the shards with their sample counts and label counts (the mids of the label CSV), and the
total label counts. Shards and index are written atomically; a writing that fails (a full
disk, the file size limit) removes the shards it wrote, and the folder if it made it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import soundfile

from ..audio.io import load_audio
from ..base.fileio import atomic_write, os_error_of, output_folder
from ..errors import AudioError, DataError
from .datafiles import read_datafile
from .labels import LabelTable, read_label_csv

__all__ = ["FORMAT", "INDEX", "MIN_SHARDS", "REPORT", "parse_size", "write_shards"]

log = logging.getLogger(__name__)

INDEX = "index.json"
REPORT = "bad_files.txt"
FORMAT = "ast-audio-shards"
FLAC_RATE = 16000
MIN_SHARDS = 8  # the readers a small dataset's shards can feed: world x loader workers
AUDIO_EXTS = ("wav", "flac", "mp3", "ogg", "oga", "opus", "aif", "aiff")


def parse_size(text: str | int) -> int:
    """``"500MB"``, ``"2GB"``, ``"64KiB"`` or a number of bytes."""
    if isinstance(text, int):
        return text
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    value = text.strip().upper()
    number = value.rstrip("KMGIB")
    try:
        size = int(float(number) * units[value[len(number):]])
    except (ValueError, KeyError):
        raise DataError(f"not a size: {text!r} (say 500MB, 2GB, 64KiB or bytes)") from None
    if size < 1:
        raise DataError(f"shard size must be positive, got {text!r}")
    return size


# --------------------------------------------------------------------------- writing


def _flac_bytes(path: Path) -> bytes:
    waveform = load_audio(path, sample_rate=FLAC_RATE, strict=True).numpy()
    out = io.BytesIO()
    soundfile.write(out, np.clip(waveform, -1.0, 1.0), FLAC_RATE, format="FLAC", subtype="PCM_16")
    return out.getvalue()


def _sample(path: Path, flac: bool) -> tuple[str, bytes]:
    """``(extension, bytes)`` of one clip, after checking that it decodes completely."""
    if flac:
        return "flac", _flac_bytes(path)
    load_audio(path, sample_rate=None, strict=True)
    ext = path.suffix.lower().lstrip(".")
    return (ext if ext in AUDIO_EXTS else "audio"), path.read_bytes()


def _tar_size(members: int) -> int:
    """A tar file's size from its members' bytes: two zero blocks at the end, then whole
    10 240-byte records."""
    return -(-(members + 1024) // 10240) * 10240


class _Writer:
    """Shards ``shard-NNNNNN.tar`` in ``out``, each closed before it would pass ``max_size``, or
    once it holds its share of the clips left when ``min_shards`` are not written yet
    (``entries`` clips in all)."""

    def __init__(self, out: Path, max_size: int, entries: int = 0, min_shards: int = 1):
        self.out, self.max_size = out, max_size
        self.left, self.min_shards = entries, max(1, min_shards)
        self.shards: list[dict] = []
        self._tar = self._tmp = None
        self._size = self._cap = 0

    def write(self, key: str, ext: str, audio: bytes, meta: dict, mids: list[str]) -> None:
        import webdataset as wds

        payload = json.dumps(meta).encode()
        cost = sum(512 + -(-len(part) // 512) * 512 for part in (audio, payload))  # header + padded data
        if self._tar is not None and (_tar_size(self._size + cost) > self.max_size
                                      or self.shards[-1]["samples"] >= self._cap):  # fmt: skip
            self._close()
        if self._tar is None:
            name = f"shard-{len(self.shards):06d}.tar"
            self._tmp = self.out / f".{name}.tmp"
            self._tar = wds.TarWriter(str(self._tmp), encoder=False, mode=0o644)
            self._size = 0
            shards_to_go = self.min_shards - len(self.shards)
            self._cap = -(-self.left // shards_to_go) if shards_to_go > 0 else math.inf
            self.shards.append({"name": name, "samples": 0, "bytes": 0, "label_counts": {}})
        self._tar.write({"__key__": key, ext: audio, "json": payload})
        self._size += cost
        self.left -= 1
        entry = self.shards[-1]
        entry["samples"] += 1
        for mid in mids:
            entry["label_counts"][mid] = entry["label_counts"].get(mid, 0) + 1

    def _close(self) -> None:
        self._tar.close()
        entry = self.shards[-1]
        os.replace(self._tmp, self.out / entry["name"])
        entry["bytes"] = (self.out / entry["name"]).stat().st_size
        self._tar = None

    @property
    def writing(self) -> Path | None:
        """The shard being written, if one is open."""
        return self.out / self.shards[-1]["name"] if self._tar is not None else None

    def skip(self) -> None:
        """A clip of the datafile that is not written (unusable)."""
        self.left -= 1

    def finish(self) -> list[dict]:
        if self._tar is not None:
            self._close()
        return self.shards

    def abort(self) -> None:
        """Remove what this writer wrote: the open shard's temporary and the shards it closed
        (without their index they are not a shard set)."""
        if self._tar is not None:
            with contextlib.suppress(Exception):  # closing flushes into the same failing file
                self._tar.close()
            self._tar = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
        for entry in self.shards:
            (self.out / entry["name"]).unlink(missing_ok=True)


def write_shards(
    datafile: str | os.PathLike,
    label_csv: str | os.PathLike | LabelTable,
    out: str | os.PathLike,
    *,
    max_size: int | str = "500MB",
    min_shards: int = MIN_SHARDS,
    flac: bool = False,
    progress: bool | None = None,
) -> dict:
    """Write the datafile's usable clips as shards in ``out`` (see the module notes);
    returns the index (plus ``bad_files`` and ``report``)."""
    limit = parse_size(max_size)
    if not isinstance(min_shards, int) or isinstance(min_shards, bool) or min_shards < 1:
        raise DataError(f"min_shards must be a positive number of shards, got {min_shards!r}")
    labels = label_csv if isinstance(label_csv, LabelTable) else read_label_csv(label_csv)
    data = read_datafile(datafile, labels, check_files=False, skip_bad=True)
    with output_folder(out) as out:  # a folder made here goes again if the writing fails
        return _write_shards(data, labels, datafile, out, limit, min_shards, flac, progress)


def _write_shards(data, labels: LabelTable, datafile, out: Path, limit: int, min_shards: int, flac: bool,
                  progress: bool | None) -> dict:  # fmt: skip
    from tqdm.auto import tqdm

    bad = [f"{data.path}: {line}" for line in data.skipped]
    (out / INDEX).unlink(missing_ok=True)  # a previous writing of this folder: no index until this one is whole
    for stale in out.glob("shard-*.tar"):
        stale.unlink()
    writer = _Writer(out, limit, len(data.entries), min_shards)
    totals: dict[str, int] = {}
    disable = None if progress is None else not progress
    try:
        for position, entry in enumerate(tqdm(data.entries, desc="sharding", leave=False, disable=disable)):
            try:
                ext, audio = _sample(entry.wav, flac)
            except (AudioError, OSError) as err:
                bad.append(f"{entry.wav}: {getattr(err, 'reason', err)}")
                writer.skip()
                continue
            mids = [labels.mids[i] for i in entry.labels]
            meta = {"wav": str(entry.wav), "labels": ",".join(mids), "index": position}
            writer.write(f"{position:09d}", ext, audio, meta, mids)
            for mid in mids:
                totals[mid] = totals.get(mid, 0) + 1
        shards = writer.finish()
        report = out / REPORT
        atomic_write(report, lambda tmp: tmp.write_text("".join(line + "\n" for line in bad), encoding="utf-8"))
        if bad:
            log.warning("%d clips left out (listed in %s)", len(bad), report)
        if not shards:
            first = f"; the first: {bad[0]}" if bad else ""
            raise DataError(f"no usable clips to write ({len(bad)} unusable{first})", datafile)
        index = {
            "format": FORMAT, "datafile": str(Path(datafile).resolve()), "flac": flac,
            "sample_rate": FLAC_RATE if flac else None, "samples": sum(s["samples"] for s in shards),
            "label_counts": totals, "shards": shards,
        }  # fmt: skip
        text = json.dumps(index, indent=1) + "\n"
        atomic_write(out / INDEX, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    except BaseException as err:
        writing = writer.writing
        writer.abort()
        cause = os_error_of(err)
        if cause is not None and writing is not None:  # name the shard, not its temporary
            raise OSError(cause.errno, cause.strerror, os.fspath(writing)) from None
        raise
    return {**index, "bad_files": len(bad), "report": str(report)}
