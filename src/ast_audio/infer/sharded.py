"""``predict`` / ``embed`` with ``--out DIR``: many files, one output shard per process,
resumable. Under ``torchrun --nproc_per_node N -m ast_audio predict|embed ... --out DIR`` each
process (``RANK`` of ``WORLD_SIZE``) takes every N-th file of the sorted inputs; a plain
``ast-audio`` run is one process. No collective is needed: the processes never talk.

Shards (``R`` the rank, ``W`` the world size, five digits each):

- ``predict``: ``predictions-R-of-W.csv`` with ``--format csv`` (the CSV header and rows of
  ``--format csv``), else ``predictions-R-of-W.jsonl`` (one ``to_json`` object per line);
- ``embed``: ``embeddings-R-of-W.npy`` (``[files, dim]`` float32) and
  ``embeddings-R-of-W.jsonl`` (``{"path", "duration"}`` of each row, in the same order).

Resuming: a shard grows by whole groups of files; after each group its files are flushed to
disk and ``.R-of-W.progress.json`` records their committed sizes (atomically). A rerun cuts
each shard back to its committed size (a killed run leaves at most one partial group,
which is dropped) and skips the files it already holds; files in shards of another world
size (an earlier run with another N) are finished and skipped too. So a run killed at any
point and rerun ends with every readable file exactly once. Unreadable files are reported
on stderr (exit status 1) and tried again by a rerun.

:func:`write_predictions` and :func:`write_embeddings` take the tagger, the files and explicit
options (:class:`PredictOptions`: the same object ``predict`` uses for stdout, so every flag
reaches the shards too) and return what they did (:class:`Written`); :mod:`ast_audio.cli.infer`
turns the flags into them and prints the summary.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..base.fileio import atomic_write
from ..errors import AstAudioError
from .events import PostProcessing
from .results import Prediction, Timeline

__all__ = ["PredictOptions", "rank_and_world", "shard_device", "wants_shards", "Written", "write_embeddings",
           "write_predictions"]

OnError = Callable[[AstAudioError], None]
GROUP = 16  # files per commit
_NPY_HEADER = 128  # bytes: room for any row count, so the header is rewritten in place


def _npy_header(rows: int, dim: int) -> bytes:
    text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}"
    body = text.ljust(_NPY_HEADER - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body.encode("latin1")


def rank_and_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def wants_shards(command: str, out: str | os.PathLike | None) -> bool:
    """Whether ``command``'s ``out`` is a folder of shards: ``predict``: any ``out``; ``embed``:
    an ``out`` not ending in ``.npz``, or any ``out`` under torchrun."""
    if out is None:
        return False
    return command == "predict" or rank_and_world()[1] > 1 or not os.fspath(out).endswith(".npz")


def shard_device(device: str | None) -> str | None:
    """The device of this process: under torchrun without a ``device``, the GPU of ``LOCAL_RANK``
    (one GPU per process) where CUDA is available; otherwise ``device`` as given."""
    if device is None and rank_and_world()[1] > 1:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


@dataclass(frozen=True)
class PredictOptions:
    """What ``predict`` asks of the tagger for each group of files, in every output path (stdout
    or shards): tags (``top_k``, ``aggregate``), or with ``timeline`` the arguments of
    :meth:`~.engine.AudioTagger.timeline` (``window``, ``hop``, ``method``, ``post``; the on
    threshold is ``post.threshold``)."""

    top_k: int = 5
    aggregate: str = "max"
    timeline: bool = False
    window: float | None = None
    hop: float | None = None
    method: str = "frames"
    post: PostProcessing = field(default_factory=PostProcessing)

    def results(self, tagger, files: list[str], on_error) -> list:
        """The :class:`~.results.Prediction` s or :class:`~.results.Timeline` s of ``files``."""
        if self.timeline:
            return tagger.timeline(files, self.window, self.hop, threshold=self.post.threshold, post=self.post,
                                   method=self.method, top_k=self.top_k, aggregate=self.aggregate,
                                   on_error=on_error)  # fmt: skip
        return tagger.predict(files, top_k=self.top_k, aggregate=self.aggregate, on_error=on_error)


class _Shard:
    """The files of one process's shard and their committed sizes."""

    def __init__(self, out: Path, kind: str, names: list[str], rank: int, world: int):
        self.tag = f"{rank:05d}-of-{world:05d}"
        self.paths = [out / f"{kind}-{self.tag}.{name}" for name in names]
        self.progress = out / f".{self.tag}.progress.json"
        self.committed = {"sizes": [0] * len(names), "rows": 0}
        if self.progress.exists():
            self.committed = json.loads(self.progress.read_text(encoding="utf-8"))
        for path, size in zip(self.paths, self.committed["sizes"], strict=True):
            with open(path, "ab") as fh:
                fh.truncate(size)  # drop what a killed run wrote after its last commit

    def roll_back(self) -> None:
        """After a failure: each file cut back to its last commit, and a shard that never
        committed anything removed (no empty or partial file is left behind)."""
        for path, size in zip(self.paths, self.committed["sizes"], strict=True):
            with contextlib.suppress(OSError):
                if size or self.progress.exists():
                    os.truncate(path, size)  # no space is needed to shrink a file
                else:
                    path.unlink()

    def append(self, chunks: list[bytes], rows: int, header: bytes | None = None) -> None:
        for path, chunk in zip(self.paths, chunks, strict=True):
            try:
                with open(path, "r+b") as fh:
                    fh.seek(0, io.SEEK_END)
                    fh.write(chunk)
                    if header is not None and path.suffix == ".npy":
                        fh.seek(0)
                        fh.write(header)
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as err:  # named by the shard it was writing
                raise OSError(err.errno, err.strerror, os.fspath(path)) from None
        self.committed = {"sizes": [p.stat().st_size for p in self.paths], "rows": self.committed["rows"] + rows}
        text = json.dumps(self.committed)
        atomic_write(self.progress, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _done_paths(out: Path, kind: str, world: int, own: Path) -> tuple[set[str], set[str]]:
    """Paths in shards of other world sizes (finished), and in this process's own listing."""
    others, mine = set(), set()
    for path in out.glob(f"{kind}-*-of-*.*"):
        match = re.fullmatch(rf"{kind}-\d{{5}}-of-(\d{{5}})\.(jsonl|csv)", path.name)
        if not match or (int(match.group(1)) == world and path != own):
            continue
        target = mine if path == own else others
        if match.group(2) == "csv":
            with open(path, newline="", encoding="utf-8") as fh:
                target.update(row[0] for row in list(csv.reader(fh))[1:] if row)
        else:
            target.update(json.loads(line)["path"] for line in path.read_text(encoding="utf-8").splitlines() if line)
    return others, mine


def _my_files(files: list[str], out: Path, kind: str, listing: Path) -> tuple[list[str], int]:
    """This process's files still to do, and how many of its share an earlier run did."""
    rank, world = rank_and_world()
    others, mine = _done_paths(out, kind, world, listing)
    remaining = [f for f in files if f not in others]
    todo = [f for f in remaining[rank::world] if f not in mine]
    return todo, len(remaining[rank::world]) - len(todo)


@dataclass(frozen=True)
class Written:
    """What a writer did: its shard ``path`` (the predictions, or the embeddings' ``.npy``), the
    files it added (``new``), those an earlier run had written (``earlier``), the files that could
    not be read (``failed``, left for a rerun) and the rows the shard now holds."""

    path: Path
    new: int
    earlier: int
    failed: int
    rows: int


class _Counted:
    """``on_error`` (when given) that also counts the files that failed."""

    def __init__(self, on_error: OnError | None):
        self.on_error, self.count = on_error, 0

    def __call__(self, err: AstAudioError) -> None:
        self.count += 1
        if self.on_error is not None:
            self.on_error(err)


@contextlib.contextmanager
def _writing(out: Path) -> Iterator[Callable[[_Shard], _Shard]]:
    """``out`` created for a writer's shard; ``opened(shard)`` registers the shard, which a
    failure rolls back to its last commit (:meth:`_Shard.roll_back`: what was committed stays,
    for a rerun to resume), and a folder made here that is left empty is removed."""
    made = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), os.fspath(out)) from None
    shards: list[_Shard] = []

    def opened(shard: _Shard) -> _Shard:
        shards.append(shard)
        return shard

    try:
        yield opened
    except BaseException:
        for shard in shards:
            shard.roll_back()
        if made:
            with contextlib.suppress(OSError):
                out.rmdir()  # only when empty
        raise


def write_predictions(out: str | os.PathLike, files: list[str], tagger, options: PredictOptions, *,
                      csv_rows: bool = False, on_error: OnError | None = None) -> Written:  # fmt: skip
    """This process's share of ``files`` through ``options`` into its shard in ``out``: CSV rows
    with ``csv_rows``, else JSON lines (see the module notes). A file that cannot be read goes to
    ``on_error`` and is left for a rerun (without ``on_error`` its error is raised)."""
    out, on_error = Path(out), _Counted(on_error)
    with _writing(out) as opened:
        rank, world = rank_and_world()
        ext = "csv" if csv_rows else "jsonl"
        shard = opened(_Shard(out, "predictions", [ext], rank, world))
        return _predictions(out, shard, files, tagger, options, csv_rows, on_error)


def _predictions(out: Path, shard: _Shard, files: list[str], tagger, options: PredictOptions, csv_rows: bool,
                 on_error: _Counted) -> Written:  # fmt: skip
    todo, done = _my_files(files, out, "predictions", shard.paths[0])
    if shard.committed["sizes"][0] == 0 and csv_rows:
        header = Timeline.CSV_HEADER if options.timeline else Prediction.csv_header(getattr(tagger, "open_set", None) is not None)
        shard.append([(",".join(header) + "\n").encode()], 0)
    for i in range(0, len(todo), GROUP):
        results = options.results(tagger, todo[i : i + GROUP], on_error)
        text = io.StringIO()
        for r in results:
            if csv_rows:
                csv.writer(text, lineterminator="\n").writerows(r.csv_rows())
            else:
                text.write(json.dumps(r.to_json()) + "\n")
        shard.append([text.getvalue().encode()], len(results))
    return Written(shard.paths[0], len(todo) - on_error.count, done, on_error.count, shard.committed["rows"])


def write_embeddings(out: str | os.PathLike, files: list[str], tagger, *, on_error: OnError | None = None) -> Written:
    """This process's share of ``files``' pooled embeddings into its ``.npy`` and ``.jsonl`` shard
    in ``out`` (see the module notes); failures as in :func:`write_predictions`."""
    out, on_error = Path(out), _Counted(on_error)
    with _writing(out) as opened:
        rank, world = rank_and_world()
        shard = opened(_Shard(out, "embeddings", ["npy", "jsonl"], rank, world))
        return _embeddings(shard, out, files, tagger, on_error)


def _embeddings(shard: _Shard, out: Path, files: list[str], tagger, on_error: _Counted) -> Written:
    todo, done = _my_files(files, out, "embeddings", shard.paths[1])
    rows_now, size = shard.committed["rows"], shard.committed["sizes"][0]
    if rows_now:  # the header as committed (a killed run may have counted rows it did not commit)
        with open(shard.paths[0], "r+b") as fh:
            fh.write(_npy_header(rows_now, (size - _NPY_HEADER) // 4 // rows_now))
    for i in range(0, len(todo), GROUP):
        results = tagger.embed(todo[i : i + GROUP], on_error=on_error)
        if not results:
            continue
        rows = np.stack([r.embedding for r in results]).astype("<f4")
        dim = rows.shape[1]
        total = shard.committed["rows"] + len(rows)
        header = _npy_header(total, dim)
        lines = "".join(json.dumps({"path": r.path, "duration": round(r.duration, 3)}) + "\n" for r in results)
        first = shard.committed["sizes"][0] == 0
        shard.append([(header if first else b"") + rows.tobytes(), lines.encode()], len(rows), header)
    return Written(shard.paths[0], len(todo) - on_error.count, done, on_error.count, shard.committed["rows"])
