"""Audio sources for live tagging (``ast-audio listen``): blocks from a file, stdin or the microphone.

Each source is a generator of mono float32 blocks ``[samples]`` at a known rate, which
:meth:`AudioTagger.stream` takes. A file is read in blocks and paced in real time (or as
fast as possible); stdin is raw 16-bit little-endian PCM at ``rate``, or, with
``ffmpeg=True``, any stream ffmpeg decodes; the microphone goes through sounddevice
(PortAudio), an optional dependency imported only here and only when asked for.
Every source stops when ``stop()`` says so (the CLI's Ctrl-C handler sets it), so the
stream can close its open events cleanly.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import numpy as np

from ..errors import ConfigError
from .io import AudioError

__all__ = ["file_blocks", "microphone_blocks", "paced", "stdin_blocks"]


def paced(blocks: Iterator[np.ndarray], rate: int, stop: Callable[[], bool]) -> Iterator[np.ndarray]:
    """``blocks`` delivered no faster than real time (block k at ``start + its audio time``)."""
    start, sent = time.monotonic(), 0
    for block in blocks:
        wait = start + sent / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        if stop():
            return
        sent += len(block)
        yield block


def file_blocks(path: str | os.PathLike, block: float, stop: Callable[[], bool]) -> tuple[int, Iterator[np.ndarray]]:
    """``(rate, blocks)`` of an audio file read ``block`` seconds at a time (channels averaged)."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(f"not a decodable audio file ({err})", str(path)) from None
    except FileNotFoundError:
        raise AudioError("file not found", str(path)) from None
    size = max(1, round(block * info.samplerate))

    def blocks() -> Iterator[np.ndarray]:
        with sf.SoundFile(str(path)) as fh:
            for data in fh.blocks(blocksize=size, dtype="float32", always_2d=True):
                if stop():
                    return
                yield data.mean(axis=1)

    return int(info.samplerate), blocks()


def stdin_blocks(rate: int, block: float, stop: Callable[[], bool], *, ffmpeg: bool = False,
                 stream=None) -> Iterator[np.ndarray]:  # fmt: skip
    """Raw 16-bit little-endian mono PCM at ``rate`` from stdin (``ffmpeg``: any format, decoded by ffmpeg)."""
    source = stream if stream is not None else sys.stdin.buffer
    process = None
    if ffmpeg:
        exe = shutil.which("ffmpeg")
        if exe is None:
            raise ConfigError("--ffmpeg needs the ffmpeg program on PATH")
        process = subprocess.Popen([exe, "-loglevel", "error", "-i", "pipe:0", "-f", "s16le", "-ac", "1", "-ar",
                                    str(rate), "pipe:1"], stdin=source, stdout=subprocess.PIPE)  # fmt: skip
        source = process.stdout
    size = 2 * max(1, round(block * rate))
    pending = b""
    try:
        while not stop():
            data = source.read(size)
            if not data:
                break
            pending += data
            usable = len(pending) - len(pending) % 2
            if usable:
                yield np.frombuffer(pending[:usable], dtype="<i2").astype(np.float32) / 32768.0
                pending = pending[usable:]
    finally:
        if process is not None:
            process.kill()
            process.wait()


def microphone_blocks(rate: int, block: float, stop: Callable[[], bool], device: str | int | None = None) -> Iterator[np.ndarray]:
    """The default (or ``device``) microphone through sounddevice, mono at ``rate``."""
    try:
        import sounddevice as sd
    except (ImportError, OSError) as err:  # OSError: the module is there, the PortAudio library is not
        raise ConfigError(
            f"microphone: listening needs sounddevice and the PortAudio library (pip install sounddevice; on Debian "
            f"and Ubuntu apt install libportaudio2), or use --input FILE|-: {err}"
        ) from None
    blocks: queue.Queue = queue.Queue()

    def callback(data, frames, when, status):  # PortAudio's thread: hand the block over, nothing else
        blocks.put(data[:, 0].copy())

    try:
        mic = sd.InputStream(samplerate=rate, channels=1, dtype="float32", blocksize=max(1, round(block * rate)),
                             device=device, callback=callback)  # fmt: skip
    except Exception as err:  # PortAudioError and ValueError (no such device) alike
        raise ConfigError(f"microphone: cannot open the input device ({err})") from None
    with mic:
        while not stop():
            try:
                yield blocks.get(timeout=0.1)
            except queue.Empty:
                continue
