"""Audio files in, float32 waveforms out: decode, mono, resample, and one error type.

Decoding goes through ``soundfile`` (libsndfile: wav, flac, ogg/vorbis, mp3 and the
other formats it knows), resampling through ``soxr`` at its "HQ" quality. Every problem
with a file raises :class:`~ast_audio.errors.AudioError` naming the file and the reason;
nothing from inside the decoder escapes, and nothing is silently zero-filled.

A truncated file (a wav whose data chunk is shorter than its header says, an mp3 cut
mid-stream) is loaded as far as it decodes, with a logged warning; ``strict=True``
turns that into an ``AudioError``. A file that decodes to no samples at all is an error.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
import sys
import tempfile
import threading
from dataclasses import dataclass

import numpy as np
import soundfile
import soxr
import torch

from ..errors import AudioError, ConfigError

__all__ = [
    "AUDIO_EXTENSIONS", "MAX_SAMPLE_RATE", "MIN_SAMPLE_RATE", "AudioInfo", "audio_info", "file_problem", "load_audio",
    "os_error_reason", "quiet_decoder", "resample",
]  # fmt: skip

log = logging.getLogger(__name__)

MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 384000
# What counts as an audio file by its name (compare ``path.suffix.lower()``): folder searches
# (``predict``, ``embed``, AudioSet clips) and names given without extension (the csv recipe
# tries them in this order). The one list: every caller imports it.
AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".ogg", ".oga", ".opus", ".aif", ".aiff")
RESAMPLE_QUALITY = "HQ"  # soxr's high quality (20-bit, passband to 91 % of Nyquist)

# libsndfile's log line for a wav/aiff data chunk longer than the file: "data : 64000 (should be 31978)".
_SHORT_CHUNK = re.compile(r"^\s*(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_STREAMING_SIZES = {0, 0xFFFFFFFF, 0xFFFFFFFF - 8}  # placeholders written by streaming encoders


@dataclass(frozen=True)
class AudioInfo:
    """What the header of an audio file says."""

    path: str
    sample_rate: int
    frames: int
    channels: int
    format: str
    subtype: str

    @property
    def duration(self) -> float:
        """Seconds."""
        return self.frames / self.sample_rate


# Lines the decoders inside libsndfile print on the process's stderr (file descriptor 2), not through
# its error codes: mpg123's "[src/libmpg123/layer3.c:...] error: ...", "Note: Illegal Audio-MPEG-Header
# ...", "Warning: Xing stream size off ...". Our own reason for the file is the one line the user sees.
_DECODER_LINE = re.compile(rb"^(\[[^\]]*mpg123[^\]]*\]|Note: |Warning: |\[[^\]]*\.c:\w+\(\):\d+\])")
_quiet = {"lock": threading.Lock(), "depth": 0, "saved": -1, "capture": None}


@contextlib.contextmanager
def quiet_decoder():
    """Keep the decoders' own lines off stderr while a file is opened or decoded.

    File descriptor 2 points at a private temporary file for the duration (counted, so
    threads decoding at once share one redirection); when the last one leaves, whatever
    else was written meanwhile (the program's own messages) goes on to stderr, and the
    decoders' lines are dropped. Where fd 2 cannot be redirected, nothing changes."""
    with _quiet["lock"]:
        if _quiet["depth"] == 0:
            try:
                sys.stderr.flush()
                capture = tempfile.TemporaryFile(prefix="ast-audio-stderr-")
                saved = os.dup(2)
                os.dup2(capture.fileno(), 2)
            except (OSError, ValueError, AttributeError):
                saved, capture = -1, None
            _quiet["saved"], _quiet["capture"] = saved, capture
        _quiet["depth"] += 1
    try:
        yield
    finally:
        with _quiet["lock"]:
            _quiet["depth"] -= 1
            if _quiet["depth"] == 0 and _quiet["capture"] is not None:
                capture, saved = _quiet["capture"], _quiet["saved"]
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                capture.seek(0)
                kept = b"".join(line for line in capture.read().splitlines(keepends=True) if not _DECODER_LINE.match(line))
                capture.close()
                _quiet["capture"] = None
                if kept:
                    with contextlib.suppress(OSError):
                        os.write(2, kept)


def _check_rate(rate: float, path: str | None, what: str) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        reason = (
            f"unsupported sample rate {rate:g} Hz ({what}; supported {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz)"
        )
        raise AudioError(reason, path) if path is not None else ConfigError(reason)


def file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as a file (missing, a dangling symbolic link, a symlink loop,
    a folder or other non-regular file, not readable by this user, empty), or ``None``."""
    path = os.fspath(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return "not a regular file (a folder or a device)"
        with open(path, "rb") as fh:
            empty = not fh.read(1)
    except OSError as err:
        return os_error_reason(err, path)
    return "empty file (0 bytes)" if empty else None


def os_error_reason(err: OSError, path: str | os.PathLike | None = None) -> str:
    """What an ``OSError`` from opening or reading ``path`` means, in words (the file's name is
    the caller's): ENOENT is "file not found" or, for a link, "dangling symbolic link"; ELOOP
    "symlink loop"; EACCES/EPERM "permission denied"; anything else the system's own words."""
    code = getattr(err, "errno", None)
    if code == errno.ENOENT:
        if path is not None and os.path.islink(path):
            return f"dangling symbolic link (its target {os.readlink(path)!r} does not exist)"
        return "file not found"
    if code == errno.ELOOP:
        return "symlink loop (symbolic links that lead back to themselves)"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied (the file is not readable by this user)"
    if code == errno.ENOTDIR:
        return "file not found (a part of its path is not a folder)"
    return f"cannot read the file ({getattr(err, 'strerror', None) or err})"


def _check_file(path: str) -> None:
    problem = file_problem(path)
    if problem:
        raise AudioError(problem, path)


def _decoder_reason(err: Exception) -> str:
    """One line from a libsndfile error, without its "Error opening '<path>': " prefix."""
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    message = re.sub(r"^Error opening .*?: ", "", message)
    if "does not exist or is not a regular file" in message or message == "System error.":
        message = "unrecognised or corrupt data"  # what libsndfile says of some unreadable mp3s
    return f"not a decodable audio file ({message.rstrip('.')})"


def _open(path: str) -> soundfile.SoundFile:
    _check_file(path)
    try:
        return soundfile.SoundFile(os.fsencode(path))  # bytes: any file name the file system holds
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioError(_decoder_reason(err), path) from None


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Sample rate, frames, channels and format from the file's header (``AudioError`` if unusable)."""
    path = os.fspath(path)
    with quiet_decoder(), _open(path) as f:
        info = AudioInfo(path, int(f.samplerate), int(f.frames), int(f.channels), f.format, f.subtype)
    _check_rate(info.sample_rate, path, "file")
    return info


def _truncation(f: soundfile.SoundFile, decoded: int) -> str | None:
    """Why the file looks truncated, or ``None``."""
    if f.frames > decoded:
        return f"truncated file: decoded {decoded} of {f.frames} frames"
    match = _SHORT_CHUNK.search(f.extra_info or "")
    if match and int(match.group(1)) not in _STREAMING_SIZES:
        return f"truncated file: data chunk declares {match.group(1)} bytes, only {match.group(2)} present"
    return None


def _read(path: str, strict: bool) -> tuple[np.ndarray, int]:
    """``[frames, channels]`` float32 and the file's sample rate."""
    with quiet_decoder(), _open(path) as f:
        rate = int(f.samplerate)
        _check_rate(rate, path, "file")
        try:
            data = f.read(dtype="float32", always_2d=True)  # (S, C)
        except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError, MemoryError) as err:
            raise AudioError(_decoder_reason(err), path) from None
        truncated = _truncation(f, len(data))
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise AudioError("no audio samples", path)
    if truncated:
        if strict:
            raise AudioError(truncated, path)
        log.warning("%s: %s; using what decodes", path, truncated)
    if not np.isfinite(data).all():
        raise AudioError("contains NaN or Inf samples", path)
    return data, rate


def resample(waveform: torch.Tensor | np.ndarray, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Resample along the last axis with soxr ("HQ"): ``[..., samples]`` -> float32 ``[..., new samples]``.

    Runs on the CPU; a tensor comes back on its own device.
    """
    _check_rate(orig_sr, None, "source")
    _check_rate(new_sr, None, "target")
    device = waveform.device if isinstance(waveform, torch.Tensor) else torch.device("cpu")
    array = waveform.detach().cpu().numpy() if isinstance(waveform, torch.Tensor) else np.asarray(waveform)
    array = np.asarray(array, dtype=np.float32)
    if orig_sr == new_sr:
        return torch.from_numpy(array.copy()).to(device)
    lead = array.shape[:-1]
    columns = array.reshape(-1, array.shape[-1]).T  # (S, C): soxr wants channels last
    out = soxr.resample(np.ascontiguousarray(columns), orig_sr, new_sr, quality=RESAMPLE_QUALITY)
    out = np.ascontiguousarray(out.reshape(out.shape[0], -1).T).reshape(*lead, -1)  # (..., S')
    return torch.from_numpy(out).to(device)


def load_audio(
    path: str | os.PathLike,
    sample_rate: int | None = 16000,
    mono: bool = True,
    *,
    strict: bool = False,
) -> torch.Tensor:
    """Decode an audio file to float32 in [-1, 1]: ``[samples]`` (mono) or ``[channels, samples]``.

    Channels are averaged to mono (the original AST used the first channel only). The
    result is resampled with soxr to ``sample_rate`` (``None`` keeps the file's rate).
    Raises ``AudioError("<path>: <reason>")`` for a missing, empty or undecodable file,
    NaN/Inf samples or an unsupported sample rate, and with ``strict=True`` for a
    truncated file (otherwise loaded as far as it decodes, with a warning).
    """
    path = os.fspath(path)
    if sample_rate is not None:
        _check_rate(sample_rate, None, "requested")
    data, rate = _read(path, strict)
    data = data.mean(axis=1, keepdims=True) if mono else data  # (S, 1) or (S, C)
    if sample_rate is not None and sample_rate != rate:
        data = soxr.resample(data, rate, sample_rate, quality=RESAMPLE_QUALITY)  # (S', C)
        if data.shape[0] == 0:
            raise AudioError(f"no audio samples after resampling {rate} -> {sample_rate} Hz", path)
    waveform = torch.from_numpy(np.ascontiguousarray(data.T, dtype=np.float32))  # (C, S)
    return waveform[0] if mono else waveform
