"""Audio sources for live tagging (``ast-audio listen``): blocks from a file, stdin or the microphone.

Each source is a generator of mono float32 blocks ``[samples]`` at a known rate, which
:meth:`AudioTagger.stream` takes. A file is read in blocks and paced in real time (or as
fast as possible), and a truncated one ends where its audio ends, with a warning; stdin
is raw 16-bit little-endian PCM at ``rate``, or a container its first bytes name (WAV,
FLAC, Ogg, MP3: decoded at its own rate, never read as samples), or, with
``ffmpeg=True``, any stream ffmpeg decodes (one it cannot decode is an error, not an
empty stream); the microphone goes through sounddevice (PortAudio), an optional
dependency imported only here and only when asked for.
Every source stops when ``stop()`` says so (the CLI's Ctrl-C handler sets it), so the
stream can close its open events cleanly.
"""

from __future__ import annotations

import io
import logging
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import numpy as np

from ..errors import ConfigError
from .io import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, AudioError, file_problem, quiet_decoder

__all__ = ["file_blocks", "microphone_blocks", "paced", "sniff_container", "stdin_blocks", "stdin_source"]

log = logging.getLogger(__name__)


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
    """``(rate, blocks)`` of an audio file read ``block`` seconds at a time (channels averaged).

    The blocks end where the audio that decodes ends: a truncated file (fewer frames than its
    header claims) ends there, with one warning line, never padded to the claimed length."""
    import soundfile as sf

    path = os.fspath(path)
    problem = file_problem(path)
    if problem:
        raise AudioError(problem, path)
    try:
        with quiet_decoder():
            info = sf.info(os.fsencode(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioError(f"not a decodable audio file ({err})", path) from None
    size = max(1, round(block * info.samplerate))

    def blocks() -> Iterator[np.ndarray]:
        with quiet_decoder():
            fh = sf.SoundFile(os.fsencode(path))
        with fh:
            yield from _decoded_blocks(fh, size, path, stop)

    return int(info.samplerate), blocks()


def _decoded_blocks(fh, size: int, name: str, stop: Callable[[], bool]) -> Iterator[np.ndarray]:
    """Mono blocks of ``size`` frames of the open ``fh`` (a ``soundfile.SoundFile``) until its audio
    ends. Where that is short of the frames its header claims, or the decoder fails part way,
    one warning line says so and the blocks end there; a decoder that fails at once is an error."""
    import soundfile as sf

    decoded = 0
    while not stop():
        try:
            with quiet_decoder():
                data = fh.read(size, dtype="float32", always_2d=True)  # (S, C); fewer (none) at the end
        except (sf.LibsndfileError, RuntimeError, ValueError) as err:
            if not decoded:
                raise AudioError(f"not a decodable audio file ({err})", name) from None
            log.warning("%s: truncated or corrupt file: the decoder stopped after %d frames (%s); the stream ends at "
                        "%.2f s, where the audio ends", name, decoded, err, decoded / fh.samplerate)  # fmt: skip
            return
        if not len(data):
            _warn_truncated(name, decoded, fh.frames, fh.samplerate)
            return
        decoded += len(data)
        yield data.mean(axis=1)


def _warn_truncated(name: str, decoded: int, claimed: int, rate: int) -> None:
    if 0 < claimed and decoded < claimed and claimed < 2**62:
        log.warning("%s: truncated file: decoded %d of %d frames; the stream ends at %.2f s, where the audio ends",
                    name, decoded, claimed, decoded / rate)  # fmt: skip


def sniff_container(head: bytes) -> str | None:
    """The container format whose header ``head`` (the first bytes of a stream) starts with:
    ``"WAV"``, ``"FLAC"``, ``"Ogg"``, ``"MP3"``, or ``None`` (raw samples, as far as these tell)."""
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE" or head[:4] == b"RF64":
        return "WAV"
    if head[:4] == b"fLaC":
        return "FLAC"
    if head[:4] == b"OggS":
        return "Ogg"
    if head[:3] == b"ID3" or _mpeg_frames(head):
        return "MP3"
    return None


_MPEG_KBPS = {  # bit rates by (MPEG-1?, layer): index 1..14
    (True, 1): (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MPEG_KBPS[(False, 3)] = _MPEG_KBPS[(False, 2)]
_MPEG_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}  # by version bits


def _mpeg_frames(head: bytes) -> bool:
    """Two consecutive valid MPEG audio frame headers at the start of ``head`` (a frame sync
    alone is too common in raw 16-bit samples to count)."""

    def frame_length(at: int) -> int:
        if len(head) < at + 4 or head[at] != 0xFF or head[at + 1] & 0xE0 != 0xE0:
            return 0
        version, layer = (head[at + 1] >> 3) & 3, 4 - ((head[at + 1] >> 1) & 3)
        bitrate, rate_index, padding = head[at + 2] >> 4, (head[at + 2] >> 2) & 3, (head[at + 2] >> 1) & 1
        if version == 1 or layer == 4 or bitrate in (0, 15) or rate_index == 3:
            return 0
        mpeg1 = version == 3
        kbps, rate = _MPEG_KBPS[(mpeg1, layer)][bitrate - 1], _MPEG_RATES[version][rate_index]
        if layer == 1:
            return (12000 * kbps // rate + padding) * 4
        return (144000 if layer == 2 or mpeg1 else 72000) * kbps // rate + padding

    first = frame_length(0)
    return first > 0 and frame_length(first) > 0


def stdin_source(rate: int, block: float, stop: Callable[[], bool], *, ffmpeg: bool = False,
                 stream=None) -> tuple[int, Iterator[np.ndarray]]:  # fmt: skip
    """``(rate, blocks)`` of stdin: raw 16-bit little-endian mono PCM at ``rate``; a container
    (WAV, FLAC, Ogg, MP3, told by its first bytes) decoded at its own rate, its header deciding
    (read whole first: a file piped in); with ``ffmpeg``, any format ffmpeg decodes, at ``rate``."""
    source = stream if stream is not None else sys.stdin.buffer
    if ffmpeg:
        return rate, stdin_blocks(rate, block, stop, ffmpeg=True, stream=source)
    head = _peek(source, 4096)
    kind = sniff_container(head)
    if kind is None:
        return rate, stdin_blocks(rate, block, stop, stream=_Prefixed(head, source))
    return _decoded(kind, head + source.read(), block, stop)


def _peek(source, size: int) -> bytes:
    """Up to ``size`` bytes from ``source``, fewer only at its end (a pipe hands out what it has)."""
    parts, got = [], 0
    while got < size:
        data = source.read(size - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


class _Prefixed:
    """``head`` then the rest of ``source``, read as one stream."""

    def __init__(self, head: bytes, source):
        self.head, self.source = head, source

    def read(self, size: int) -> bytes:
        if self.head:
            out, self.head = self.head[:size], self.head[size:]
            return out
        return self.source.read(size)


def _decoded(kind: str, data: bytes, block: float, stop: Callable[[], bool]) -> tuple[int, Iterator[np.ndarray]]:
    """A container read whole from stdin, decoded by libsndfile as it is listened to (truncation: one
    warning line, see :func:`_decoded_blocks`)."""
    import soundfile as sf

    try:
        with quiet_decoder():
            fh = sf.SoundFile(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioError(f"a {kind} stream that does not decode ({err}); --ffmpeg decodes more", "stdin") from None
    rate = int(fh.samplerate)
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError(f"a {kind} stream at {rate} Hz (supported {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz)", "stdin")
    return rate, _decoded_blocks(fh, max(1, round(block * rate)), "stdin", stop)


def stdin_blocks(rate: int, block: float, stop: Callable[[], bool], *, ffmpeg: bool = False,
                 stream=None) -> Iterator[np.ndarray]:  # fmt: skip
    """Raw 16-bit little-endian mono PCM at ``rate`` from stdin (``ffmpeg``: any format, decoded by ffmpeg)."""
    source = stream if stream is not None else sys.stdin.buffer
    process = None
    if ffmpeg:
        exe = shutil.which("ffmpeg")
        if exe is None:
            raise ConfigError("--ffmpeg needs the ffmpeg program on PATH")
        errors = tempfile.TemporaryFile(prefix="ast-audio-ffmpeg-")  # its reason, should it fail
        process = subprocess.Popen([exe, "-loglevel", "error", "-i", "pipe:0", "-f", "s16le", "-ac", "1",
                                    "-ar", str(rate), "pipe:1"], stdin=source, stdout=subprocess.PIPE,
                                   stderr=errors)  # fmt: skip
        source = process.stdout
    size = 2 * max(1, round(block * rate))
    pending = b""
    ended = False
    try:
        while not stop():
            data = source.read(size)
            if not data:
                ended = True
                break
            pending += data
            usable = len(pending) - len(pending) % 2
            if usable:
                yield np.frombuffer(pending[:usable], dtype="<i2").astype(np.float32) / 32768.0
                pending = pending[usable:]
    finally:
        if process is not None:
            if not ended:
                process.kill()  # stopped (Ctrl-C) or abandoned: ffmpeg's status says nothing
            code = process.wait()
            errors.seek(0)
            reason = errors.read().decode("utf-8", "replace").strip().splitlines()
            errors.close()
            if ended and code != 0:
                raise AudioError(f"ffmpeg could not decode it ({reason[-1] if reason else f'exit status {code}'})",
                                 "stdin")  # fmt: skip


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
