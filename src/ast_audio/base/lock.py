"""One run per experiment folder: ``EXP/.lock``.

A command that writes an experiment folder (``train``, ``recipe``) holds its lock for the
whole run. The lock is a small JSON file (``pid``, ``host``, ``command``, ``started``), written
to a file of the process's own and hard-linked into place (``O_CREAT | O_EXCL`` where the file
system has no hard links), so of two processes that take it at once exactly one succeeds and
no reader ever finds it empty; the other is refused with one line naming the folder and the holder. The holder removes it when
the run ends, however it ends short of ``kill -9``.

A lock whose holder is gone (same host, its pid no longer running) is stale: it is taken over
with a one-line warning. A lock from another host cannot be checked from here (a shared file
system): it is honoured, and the refusal says how to remove it by hand.

Within one process the lock is re-entrant: a recipe holds ``EXP/.lock`` and the training it
runs in ``EXP`` takes it again without refusing itself. Under ``torchrun`` only rank 0 takes it
(:func:`ast_audio.train.loop.train` hands the refusal to the other ranks), so the ranks of one
run never refuse each other.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import AstAudioError
from .fileio import process_running

log = logging.getLogger(__name__)

LOCK = ".lock"
# A lock file found empty is read again for this long (its taker writes right after creating it).
_EMPTY_WAIT = 2.0
# An empty lock file older than this was left by a taker killed between creating and writing it.
_EMPTY_STALE_AGE = 10.0

_held: dict[Path, int] = {}  # lock files this process holds -> how many times it took each


class FolderLocked(AstAudioError):
    """An experiment folder that another run is using."""


def _read(path: Path) -> dict | None:
    """The holder recorded in ``path`` (``{}`` when unreadable or not ours, ``None`` when gone)."""
    deadline = time.monotonic() + _EMPTY_WAIT
    while True:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError:
            return {}
        if text.strip() or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, int | float) else "?"
    return f"`{holder.get('command', '?')}` (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {when})"


def _stale(path: Path, holder: dict, host: str) -> bool:
    """Whether the holder of ``path`` is certainly gone: this host, its pid not running (nor
    this process, which would have found the lock in ``_held``); or a lock left empty."""
    if not holder:
        try:
            return time.time() - path.stat().st_mtime > _EMPTY_STALE_AGE and not path.read_text().strip()
        except OSError:
            return False
    pid = holder.get("pid")
    if holder.get("host") != host or not isinstance(pid, int):
        return False
    return pid == os.getpid() or not process_running(pid)


def _create(path: Path, holder: dict) -> bool:
    """Create ``path`` holding ``holder``; ``False`` when it exists already.

    The holder is written to a file of our own first and then hard-linked to ``path``, which
    fails when ``path`` exists: the lock appears whole, never empty, to whoever reads it."""
    own = path.with_name(f"{LOCK}.new.{os.getpid()}")
    try:
        own.write_text(json.dumps(holder) + "\n", encoding="utf-8")
        try:
            os.link(own, path)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: create it exclusively, then write
            return _create_exclusive(path, holder)
        return True
    finally:
        own.unlink(missing_ok=True)


def _create_exclusive(path: Path, holder: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(holder) + "\n")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return True


def _take_over(path: Path, holder: dict) -> bool:
    """Move a stale lock out of the way; ``False`` when another process took it over first.

    The stale file is renamed to a name of our own, then checked to be the one found stale: of
    two processes taking over at once, the one that renamed a fresh lock puts it back."""
    aside = path.with_name(f"{LOCK}.stale.{os.getpid()}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return True  # removed by its holder or another taker: try to create it again
    moved = _read(aside) or {}
    if moved and moved != holder:
        with contextlib.suppress(OSError):
            os.link(aside, path)  # a live lock taken by someone else: back where it was
        aside.unlink(missing_ok=True)
        return False
    aside.unlink(missing_ok=True)
    return True


def acquire(folder: str | os.PathLike, command: str) -> Path:
    """Take ``folder``'s lock for ``command`` (the folder is created); returns the lock file.
    Raises :class:`FolderLocked` when another run holds it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), os.fspath(folder)) from None
    path = (folder / LOCK).resolve()
    if path in _held:
        _held[path] += 1
        return path
    host = socket.gethostname()
    mine = {"pid": os.getpid(), "host": host, "command": command, "started": round(time.time(), 3)}
    for _ in range(5):
        if _create(path, mine):
            _held[path] = 1
            return path
        holder = _read(path)
        if holder is None:
            continue  # released meanwhile
        if not _stale(path, holder, host):
            if holder.get("host") not in (None, host):
                raise FolderLocked(f"in use by {_describe(holder)}, another machine; if no run is using it, remove "
                                   f"{path} and run again", folder)  # fmt: skip
            if not holder:
                raise FolderLocked(f"locked ({path} cannot be read); if no run is using the folder, remove it",
                                   folder)  # fmt: skip
            raise FolderLocked(f"in use by {_describe(holder)}; wait for it to end or use another experiment folder",
                               folder)  # fmt: skip
        if _take_over(path, holder):
            log.warning("%s: taking over the lock of %s, which is no longer running", folder,
                        _describe(holder) if holder else "a run")  # fmt: skip
    raise FolderLocked(f"could not take its lock ({path}): other runs keep taking it", folder)


def release(path: Path) -> None:
    """Give back a lock :func:`acquire` returned (the file goes with the last release)."""
    count = _held.get(path, 0) - 1
    if count > 0:
        _held[path] = count
        return
    _held.pop(path, None)
    holder = _read(path) if path.exists() else None
    if holder and holder.get("pid") == os.getpid():
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, command: str, *, take: bool = True) -> Iterator[Path | None]:
    """``folder``'s lock held for the block (see the module notes); ``take=False`` holds
    nothing (a torchrun rank other than 0)."""
    if not take:
        yield None
        return
    path = acquire(folder, command)
    try:
        yield path
    finally:
        release(path)
