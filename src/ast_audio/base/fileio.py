"""Writing files so that a reader (or a crash) never sees half of one.

Every file we write goes through a temporary file beside it, named
``.{stem}.{pid}.{random}.tmp{suffix}`` (downloads: ``.{name}.{pid}.{random}.part``), renamed
onto the target when complete. A process killed mid-write leaves its temporary behind:
:func:`clean_stale_temporaries` removes those whose writer is no longer running (training
runs it on their folders at start, the checkpoint cache before a download). The finished
file gets the mode the user's umask gives a new file (``mkstemp`` alone would leave 0600).

A write that fails (a full disk, no permission, the file size limit) is an ``OSError`` naming
the file that was being written (:func:`os_error_of` finds it inside the exceptions of
libraries that wrap it), which the CLI tells as one line (:func:`describe_os_error`);
:func:`output_folder` removes a folder made for outputs whose writing failed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

# Our temporaries: a dot, the target's stem or name, the writer's pid, mkstemp's random part.
_TEMPORARY = re.compile(r"^\..+\.(\d+)\.[A-Za-z0-9_]{6,}\.(?:tmp.*|part)$")
# Temporaries of the naming before the pid was in it: stale once this old (seconds).
_OLD_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.(?:tmp.*|part)$")
OLD_TEMPORARY_AGE = 3600.0


def read_toml(path: str | os.PathLike) -> dict:
    """A TOML file as a dict; a missing or malformed file is a one-line ``ConfigError``."""
    from ..errors import ConfigError

    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"{path}: not a readable TOML config ({err})") from None


def _umask() -> int:
    """The process's umask (read from ``/proc`` where it is, else set and restored)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode ``open()`` would give a new file: ``0o666`` less the umask."""
    return 0o666 & ~_umask()


def make_temporary(path: Path, suffix: str) -> tuple[int, Path]:
    """A new temporary file beside ``path`` in our naming (``(fd, path)``, as ``mkstemp``), its
    folder created; a folder we cannot create or write is a one-line ``AstAudioError``."""
    from ..errors import AstAudioError

    if path.is_dir():
        raise AstAudioError("is a folder; give a file name to write", path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name if suffix == '.part' else path.stem}.{os.getpid()}.",
                                    suffix=suffix, dir=path.parent)  # fmt: skip
    except OSError as err:
        raise AstAudioError(f"cannot write here ({err.strerror or err})", path) from None
    return fd, Path(name)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it onto ``path``.

    The rename is atomic on POSIX file systems: ``path`` holds either the old or the new
    content, never a partial file; a failed ``write`` leaves nothing behind. The file gets
    the mode of any new file under the user's umask.

    A write that fails for want of space, permission or size (``ENOSPC``, ``EFBIG``...; also
    when the writing library wraps the OS error in its own exception) is raised as that
    ``OSError`` naming ``path``, not the temporary; an OS error naming another file (a source
    being copied) is raised as it is.
    """
    path = Path(path)
    fd, tmp = make_temporary(path, f".tmp{path.suffix}")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except Exception as err:
        cause = os_error_of(err)
        if cause is None or cause.filename not in (None, str(tmp), tmp):  # not ours, or names its own file
            raise
        raise OSError(cause.errno, cause.strerror, os.fspath(path)) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_torch(obj: object, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically. The file is opened here and handed to torch,
    so that a failed write keeps its ``OSError`` (torch's own file writer reports only an
    "enforce fail" without the reason)."""
    import torch

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)

    return atomic_write(path, write)


# Libraries that wrap an OS error in their own exception keep its number in the text:
# Rust's "(os error 28)" (safetensors), Python's "[Errno 28]".
_ERRNO_TEXT = re.compile(r"\(os error (\d+)\)|\[Errno (\d+)\]")


def os_error_of(err: BaseException) -> OSError | None:
    """The ``OSError`` (with an error number) behind ``err``: ``err`` itself, its cause or
    context, or the number a wrapping library wrote into its message; ``None`` when there is none."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno:
            return err
        match = _ERRNO_TEXT.search(str(err))
        if match:
            number = int(match.group(1) or match.group(2))
            return OSError(number, os.strerror(number))
        err = err.__cause__ or err.__context__
    return None


# How a failed write is told: the reasons a user can act on, in the words of `df` and `ls`.
_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.EFBIG: "file too large (the file size limit, `ulimit -f`, or the file system's)",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENOTDIR: "not a folder (a file is in the way)",
    errno.EISDIR: "is a folder",
    errno.ENOENT: "no such file or folder",
    errno.EEXIST: "already exists",
}


def describe_os_error(err: OSError) -> str:
    """``"<path>: <reason>"``, one line, for an OS error (``"<reason>"`` when it names no path)."""
    reason = _REASONS.get(err.errno) or (err.strerror or str(err)).lower()
    names = [os.fspath(name) for name in (err.filename, err.filename2) if name is not None]
    text = f"{' -> '.join(names)}: {reason}" if names else reason
    return text.replace("\r", "\\r").replace("\n", "\\n")


@contextlib.contextmanager
def output_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """``folder`` created for a command's outputs; when the block fails, a folder it created
    is removed with what was written into it (a folder that was there is left to its atomic
    writers, which leave nothing partial)."""
    folder = Path(folder)
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), os.fspath(folder)) from None
    try:
        yield folder
    except BaseException:
        if missing:
            shutil.rmtree(missing[-1], ignore_errors=True)
        raise


def process_running(pid: int) -> bool:
    """Whether process ``pid`` is alive on this host (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def clean_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of our own naming in ``folder`` whose writer is gone (its pid
    is not running; one of the older pid-less naming: an hour old). Returns what was removed."""
    folder = Path(folder)
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        path = folder / name
        match = _TEMPORARY.match(name)
        try:
            if match:
                stale = int(match.group(1)) != os.getpid() and not process_running(int(match.group(1)))
            else:
                stale = bool(_OLD_TEMPORARY.match(name)) and now - path.lstat().st_mtime > OLD_TEMPORARY_AGE
            if stale and path.is_file() and not path.is_symlink():
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    if removed:
        log.info("%s: removed %d temporary files left by interrupted writes", folder, len(removed))
    return removed


def finite_json(obj: object) -> object:
    """``obj`` with every non-finite float (NaN, Inf) replaced by ``None``: standard JSON has no
    NaN, so what we write says ``null`` there (dump with ``allow_nan=False`` to be sure)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_json(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # numpy / torch scalars
        return finite_json(obj.item())
    return obj


def dumps_json(obj: object, **kwargs) -> str:
    """``json.dumps`` that never writes non-standard JSON (non-finite floats become ``null``)."""
    return json.dumps(finite_json(obj), allow_nan=False, **kwargs)
