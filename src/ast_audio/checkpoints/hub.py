"""The published checkpoints: their names and addresses, the cache folder, atomic download.

:data:`REGISTRY` lists the original authors' files (AST and SSAST on Dropbox, DeiT on
``dl.fbaipublicfiles.com``); :func:`resolve` turns a path or a published name into a local
file, downloading a name once into :func:`cache_dir`. Nothing here reads a checkpoint:
that is :mod:`ast_audio.checkpoints.load` (safe reading) and :mod:`ast_audio.checkpoints.layouts` (names).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..audio.io import os_error_reason
from ..base.fileio import clean_stale_temporaries, make_temporary, new_file_mode
from ..errors import AstAudioError, CheckpointError, DownloadError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishedCheckpoint:
    """One published file: where to fetch it, its layout and what it was trained with."""

    name: str
    url: str
    filename: str
    layout: str  # "ast", "deit" or "ssast"
    model_size: str = "base384"
    fstride: int = 10
    tstride: int = 10
    dataset: str | None = None
    score: str = ""


_DROPBOX = "https://www.dropbox.com/s/{}/{}?dl=1"
_DEIT = "https://dl.fbaipublicfiles.com/deit/{}"

REGISTRY: dict[str, PublishedCheckpoint] = {}


def register_checkpoint(entry: PublishedCheckpoint) -> None:
    """Add (or replace) a named checkpoint, e.g. to point at a mirror."""
    REGISTRY[entry.name] = entry


for _key, _file, _f, _t, _score in [
    ("ca0b1v2nlxzyeb4", "audioset_10_10_0.4593.pth", 10, 10, "AudioSet eval mAP 0.4593 (weight averaged)"),
    ("1tv0hovue1bxupk", "audioset_10_10_0.4495.pth", 10, 10, "AudioSet eval mAP 0.4495"),
    ("6u5sikl4b9wo4u5", "audioset_10_10_0.4483.pth", 10, 10, "AudioSet eval mAP 0.4483"),
    ("kt6i0v9fvfm1mbq", "audioset_10_10_0.4475.pth", 10, 10, "AudioSet eval mAP 0.4475"),
    ("snfhx3tizr4nuc8", "audioset_12_12_0.4467.pth", 12, 12, "AudioSet eval mAP 0.4467"),
    ("z18s6pemtnxm4k7", "audioset_14_14_0.4431.pth", 14, 14, "AudioSet eval mAP 0.4431"),
    ("mdsa4t1xmcimia6", "audioset_16_16_0.4422.pth", 16, 16, "AudioSet eval mAP 0.4422"),
    ("q0tbqpwv44pquwy", "speechcommands_10_10_0.9812.pth", 10, 10, "Speech Commands V2 accuracy 0.9812"),
]:
    register_checkpoint(
        PublishedCheckpoint(
            name=_file[: -len(".pth")], url=_DROPBOX.format(_key, _file), filename=_file, layout="ast",
            fstride=_f, tstride=_t, dataset=_file.split("_")[0], score=_score,
        )
    )  # fmt: skip
for _size, _file in [
    ("tiny224", "deit_tiny_distilled_patch16_224-b40b3cf7.pth"),
    ("small224", "deit_small_distilled_patch16_224-649709d9.pth"),
    ("base224", "deit_base_distilled_patch16_224-df68dfff.pth"),
    ("base384", "deit_base_distilled_patch16_384-d0272ac0.pth"),
]:
    register_checkpoint(
        PublishedCheckpoint(
            name=_file.split("-")[0], url=_DEIT.format(_file), filename=_file, layout="deit",
            model_size=_size, score="ImageNet DeiT (distilled)",
        )
    )  # fmt: skip

# SSAST (Gong, Lai, Chung and Glass, AAAI 2022): self-supervised on AudioSet + Librispeech,
# 16x16 patches without overlap on 1024 x 128 inputs; no classifier. The frame-based 128x2
# files are not listed: the model cuts 16x16 patches only (loading one is a clear error).
for _key, _name, _size, _score in [
    ("ewrzpco95n9jdz6", "SSAST-Base-Patch-400", "base384", "SSAST self-supervised, 400 masked patches (89M)"),
    ("mxrm9qog6aj8hif", "SSAST-Base-Patch-250", "base384", "SSAST self-supervised, 250 masked patches (89M)"),
    ("i24w446rl9pkf05", "SSAST-Small-Patch-400", "small224", "SSAST self-supervised, 400 masked patches (23M)"),
    ("fkbtf78y94113wz", "SSAST-Tiny-Patch-400", "tiny224", "SSAST self-supervised, 400 masked patches (6M)"),
]:
    register_checkpoint(
        PublishedCheckpoint(
            name=_name, url=_DROPBOX.format(_key, _name + ".pth"), filename=_name + ".pth", layout="ssast",
            model_size=_size, fstride=16, tstride=16, score=_score,
        )
    )  # fmt: skip

DEFAULT_AUDIOSET = "audioset_10_10_0.4593"
IMAGENET_FOR_SIZE = {e.model_size: e.name for e in REGISTRY.values() if e.layout == "deit"}

_PUBLISHED_NAME = re.compile(r"^(audioset|speechcommands)_(\d+)_(\d+)_[0-9.]+\.pth$")


def cache_dir() -> Path:
    """Where named checkpoints live: ``$AST_AUDIO_HOME`` or ``~/.cache/ast-audio``."""
    return Path(os.environ.get("AST_AUDIO_HOME") or Path.home() / ".cache" / "ast-audio")


def _check_cache_folder(folder: Path) -> None:
    """A one-line error when the download folder is a file (``$AST_AUDIO_HOME`` set wrong)."""
    if folder.exists() and not folder.is_dir():
        what = "$AST_AUDIO_HOME" if os.environ.get("AST_AUDIO_HOME") and folder == cache_dir() else "the download folder"
        raise DownloadError(f"{what} is a file, not a folder", folder)


def _offline() -> bool:
    return os.environ.get("AST_AUDIO_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def download(
    url: str, dest: str | os.PathLike, *, progress: bool | None = None, timeout: float = 60.0
) -> Path:
    """Fetch ``url`` into ``dest`` atomically: a temporary file beside it, renamed when complete.

    A transfer that ends early (fewer bytes than announced) or fails leaves nothing behind.
    ``progress=None`` shows a bar only on a terminal.
    """
    from tqdm.auto import tqdm

    if _offline():
        raise DownloadError("downloads are off (AST_AUDIO_OFFLINE=1); unset it to fetch this address", url)
    dest = Path(dest)
    _check_cache_folder(dest.parent)
    clean_stale_temporaries(dest.parent)
    try:
        fd, tmp = make_temporary(dest, ".part")
    except AstAudioError as err:
        raise DownloadError(err.reason, err.path) from None
    try:
        with os.fdopen(fd, "wb") as out:
            request = urllib.request.Request(url, headers={"User-Agent": "ast-audio"})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                got = 0
                with tqdm(
                    total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                    disable=(not progress) if progress is not None else None, leave=False,
                ) as bar:  # fmt: skip
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        got += len(chunk)
                        bar.update(len(chunk))
            if total is not None and got != total:
                raise DownloadError(f"transfer ended after {got} of {total} bytes", url)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, dest)
    except BaseException as err:  # failed, truncated or interrupted (Ctrl-C): never leave a half file
        tmp.unlink(missing_ok=True)
        if isinstance(err, DownloadError) or not isinstance(err, Exception):
            raise
        if isinstance(err, urllib.error.HTTPError):
            reason = f"HTTP {err.code} {err.reason}"
        else:
            reason = getattr(err, "reason", None) or f"{type(err).__name__}: {err}"
        raise DownloadError(f"download failed: {reason}", url) from None
    return dest


def resolve(source: str | os.PathLike, *, progress: bool | None = None) -> Path:
    """A local path for ``source``: an existing file or folder, or a registry name (downloaded)."""
    path = Path(source).expanduser()
    try:
        os.stat(path)
        return path
    except OSError as err:  # a link that leads nowhere or in a loop, a folder we may not enter: say so
        if err.errno != errno.ENOENT or os.path.islink(path):
            raise CheckpointError(os_error_reason(err, path), path) from None
    except ValueError:  # a NUL in the name: not a file, maybe not a name either
        pass
    name = str(source)
    key = name[: -len(".pth")] if name.endswith(".pth") else name
    entry = REGISTRY.get(key)
    if entry is None:
        raise CheckpointError(
            "no such file, and not a known checkpoint name (run `ast-audio checkpoints` for the list)", name
        )
    _check_cache_folder(cache_dir())
    target = cache_dir() / entry.filename
    if target.exists():
        return target
    if _offline():
        raise DownloadError(
            f"not cached and downloads are off (AST_AUDIO_OFFLINE=1): download {entry.url} and save it as {target}",
            entry.name,
        )
    log.info("downloading %s from %s", entry.name, entry.url)
    try:
        return download(entry.url, target, progress=progress)
    except DownloadError as err:
        raise DownloadError(
            f"{err.reason}; to use it offline, download {entry.url} and save it as {target}", entry.name
        ) from None


def published_entry(path: Path) -> PublishedCheckpoint | None:
    """The registry entry whose published file name ``path`` carries, if any."""
    return next((e for e in REGISTRY.values() if path.name == e.filename), None)


def name_hint(path: Path, published: PublishedCheckpoint | None = None) -> tuple[str | None, int, int] | None:
    """``(dataset, fstride, tstride)`` an original AST file's published name says it was trained with:
    the registry entry, else a name of the form ``audioset_{f}_{t}_{score}.pth``; None otherwise."""
    if published is not None and published.layout == "ast":
        return published.dataset, published.fstride, published.tstride
    named = _PUBLISHED_NAME.match(path.name)
    if named:
        return named.group(1), int(named.group(2)), int(named.group(3))
    return None
