"""A disk cache of decoded, resampled waveforms, so that epochs after the first skip decoding.

Decoding (FLAC, MP3, OGG) and resampling (44.1 kHz ESC-50 to 16 kHz, say) cost more than
the filterbank itself; a training run decodes every clip once per epoch, a validation
set once per epoch too. The cache keeps what :func:`~ast_audio.audio.io.load_audio`
returned as a float32 ``.npy`` file, so a cached clip gives the very same samples (and
the very same features and augmentation) as a decoded one.

Why a folder and not memory: ``DataLoader`` workers are separate processes and each
epoch sends a clip to whichever worker is free, so a per-process memory cache would miss
most of the time; files in a folder are shared by every worker, every rank of a
``torchrun`` job on the machine, and the next run; the operating system's page cache
keeps hot clips in RAM.

An entry's name is a hash of the file's absolute path, size, modification time and the
target sample rate: an edited or replaced file is decoded again. Entries are written
atomically (a temporary name, then a rename), so concurrent workers and an interrupted
run never leave a half-written entry behind; an unreadable entry is decoded again and
rewritten. Size: 64 KB per second of 16 kHz audio (AudioSet's 2 M ten-second clips:
about 1.3 TB; its balanced set: 14 GB). Delete the folder to clear it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..base.fileio import atomic_write
from .io import load_audio

log = logging.getLogger(__name__)

VERSION = 1  # part of every key: bump when load_audio's output changes


class WaveformCache:
    """``cache.load(path, sample_rate)`` = ``load_audio(path, sample_rate)``, decoded once."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def entry(self, path: str | os.PathLike, sample_rate: int) -> Path:
        """The cache file of ``path`` at ``sample_rate`` (whether or not it exists)."""
        source = Path(path).resolve()
        stat = source.stat()
        key = f"{VERSION}|{source}|{stat.st_size}|{stat.st_mtime_ns}|{sample_rate}"
        digest = hashlib.sha1(key.encode()).hexdigest()
        return self.folder / digest[:2] / f"{digest}.npy"

    def load(self, path: str | os.PathLike, sample_rate: int) -> torch.Tensor:
        try:
            entry = self.entry(path, sample_rate)
        except OSError:  # missing or unreadable source: load_audio gives the proper error
            return load_audio(path, sample_rate=sample_rate)
        if entry.exists():
            try:
                data = np.load(entry, allow_pickle=False)
                if data.dtype == np.float32 and data.ndim == 1:
                    return torch.from_numpy(data)
            except (OSError, ValueError) as err:
                log.warning("%s: unreadable cache entry (%s); decoding %s again", entry, err, path)
        waveform = load_audio(path, sample_rate=sample_rate)
        atomic_write(entry, lambda tmp: _save(tmp, waveform))
        return waveform


def _save(tmp: Path, waveform: torch.Tensor) -> None:
    with open(tmp, "wb") as fh:  # a file object: np.save would append ".npy" to a bare name
        np.save(fh, waveform.numpy(), allow_pickle=False)
