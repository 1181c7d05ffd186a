"""Kaldi filterbanks, batched and on any device.

``fbank`` computes what ``torchaudio.compliance.kaldi.fbank`` computes with AST's
arguments (``htk_compat=True, use_energy=False, window_type='hanning', dither=0``):
snip-edges framing, per-frame DC removal, pre-emphasis 0.97, symmetric Hann window,
zero padding to a power of two, power spectrum, triangular filters on the Kaldi mel
scale ``1127 ln(1 + f / 700)`` from 20 Hz to Nyquist, log floored at float32 epsilon.
Each Kaldi stage is a small function below, named after Kaldi's own option; the window
and mel matrix are built once per (rate, sizes, device, dtype) and reused.

Float32 results agree with a float64 computation to FFT rounding, which is largest in
the weakest bins of a frame (the tests bound it per element from the arithmetic); the
stages run in Kaldi's order with torchaudio's rounding, so the FFT sees the same float32
frames as torchaudio's does.
Float64 input is computed in float64 (agrees with Hugging Face's float64 NumPy path to
~1e-6). On the CPU, frames go through in cache-sized blocks; elsewhere in one batch.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F

from ..errors import ConfigError

__all__ = ["dft_basis", "fbank", "fbank_constants", "frame_sizes", "mel_banks"]

# Kaldi's defaults that AST leaves alone.
PREEMPHASIS = 0.97
LOW_FREQ = 20.0
HIGH_FREQ = 0.0  # <= 0 means Nyquist + high_freq
EPSILON = torch.finfo(torch.float32).eps  # log floor, float32 epsilon whatever the dtype


# ---------------------------------------------------------------------------------------
# Kaldi stages
# ---------------------------------------------------------------------------------------


def frame_sizes(
    sample_rate: float, frame_length: float = 25.0, frame_shift: float = 10.0
) -> tuple[int, int, int]:
    """``(window_size, window_shift, fft_size)`` in samples, rounded as torchaudio's Kaldi does."""
    window_size = int(sample_rate * frame_length * 0.001)
    window_shift = int(sample_rate * frame_shift * 0.001)
    if window_size < 2 or window_shift < 1:
        raise ConfigError(
            f"frame length {frame_length} ms / shift {frame_shift} ms at {sample_rate} Hz "
            f"gives a window of {window_size} and a shift of {window_shift} samples"
        )
    fft_size = 1 << (window_size - 1).bit_length()  # round_to_power_of_two
    return window_size, window_shift, fft_size


def mel_scale(freq: torch.Tensor) -> torch.Tensor:
    """Kaldi's mel scale ``1127 ln(1 + f / 700)``."""
    return 1127.0 * torch.log1p(freq / 700.0)


def hann_window(
    size: int, *, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Kaldi's "hanning" window: symmetric ``0.5 - 0.5 cos(2 pi n / (L - 1))``."""
    return torch.hann_window(size, periodic=False, device=device, dtype=dtype)


def mel_banks(
    num_mel_bins: int,
    fft_size: int,
    sample_rate: float,
    low_freq: float = LOW_FREQ,
    high_freq: float = HIGH_FREQ,
) -> torch.Tensor:
    """Triangular filters ``[fft_size // 2 + 1, num_mel_bins]`` (float64) as Kaldi builds them.

    The triangles are straight in the mel domain, with ``num_mel_bins + 2`` equally spaced
    edges between ``low_freq`` and ``high_freq``, evaluated at the FFT bin frequencies.
    The Nyquist bin gets weight zero, as in Kaldi. No VTLN warping (AST uses none).
    """
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    if num_mel_bins < 3:
        raise ConfigError(f"num_mel_bins must be at least 3, got {num_mel_bins}")
    if not 0.0 <= low_freq < high_freq <= nyquist:
        raise ConfigError(f"need 0 <= low_freq < high_freq <= Nyquist, got {low_freq} and {high_freq} Hz")
    mel_low, mel_high = mel_scale(torch.tensor([low_freq, high_freq], dtype=torch.float64)).tolist()
    delta = (mel_high - mel_low) / (num_mel_bins + 1)
    edges = mel_low + delta * torch.arange(num_mel_bins + 2, dtype=torch.float64)
    left, center, right = edges[:-2], edges[1:-1], edges[2:]  # (M,) each
    bin_freqs = torch.arange(fft_size // 2, dtype=torch.float64) * (sample_rate / fft_size)
    mel = mel_scale(bin_freqs).unsqueeze(1)  # (K, 1)
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = torch.clamp_min(torch.minimum(up, down), 0.0)  # (K, M)
    return F.pad(banks, (0, 0, 0, 1))  # Nyquist row of zeros: (K + 1, M)


@functools.lru_cache(maxsize=64)
def _constants(
    sample_rate: float,
    num_mel_bins: int,
    window_size: int,
    fft_size: int,
    low_freq: float,
    high_freq: float,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Window ``[L]``, the non-zero rows of the mel matrix ``[k1 - k0, M]``, and ``k0, k1``."""
    window = hann_window(window_size, device=device, dtype=dtype)
    banks = mel_banks(num_mel_bins, fft_size, sample_rate, low_freq, high_freq)
    used = torch.nonzero(banks.abs().sum(1)).flatten()
    k0, k1 = (int(used[0]), int(used[-1]) + 1) if len(used) else (0, 1)
    # Rows outside [k0, k1) are all zero: skip them in the matmul.
    return window, banks[k0:k1].to(device=device, dtype=dtype), k0, k1


def fbank_constants(
    sample_rate: float,
    num_mel_bins: int,
    frame_length: float = 25.0,
    frame_shift: float = 10.0,
    *,
    low_freq: float = LOW_FREQ,
    high_freq: float = HIGH_FREQ,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """What :func:`fbank` multiplies by, from the same cache: the window ``[L]``, the mel
    matrix's non-zero rows ``[k1 - k0, M]`` and their FFT bins ``k0, k1`` (a graph that
    computes the fbank with other ops, such as the waveform-in ONNX export, takes these)."""
    window_size, _, fft_size = frame_sizes(sample_rate, frame_length, frame_shift)
    key = (float(sample_rate), int(num_mel_bins), window_size, fft_size, float(low_freq), float(high_freq))
    return _constants(*key, torch.device(device), dtype)


def dft_basis(window_size: int, fft_size: int, k0: int, k1: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` ``[window_size, k1 - k0]`` (float64): bins ``k0..k1`` of the ``fft_size``-point
    DFT of a frame of ``window_size`` samples zero-padded to ``fft_size``, as matrices.
    ``(frames @ cos)^2 + (frames @ sin)^2`` is :func:`power_spectrum`'s ``[..., k0:k1]``: the
    DFT as a matmul, for runtimes without an FFT op (ONNX). Angles are reduced modulo
    ``fft_size`` in integers, so they are exact before the float64 cos/sin."""
    n = torch.arange(window_size, dtype=torch.int64)[:, None]  # (L, 1)
    k = torch.arange(k0, k1, dtype=torch.int64)[None, :]  # (1, K')
    angle = (n * k % fft_size).to(torch.float64) * (2.0 * torch.pi / fft_size)  # (L, K')
    return torch.cos(angle), torch.sin(angle)


def frames_of(waveform: torch.Tensor, window_size: int, window_shift: int) -> torch.Tensor:
    """Kaldi framing with ``snip_edges=True``: a strided view ``[..., frames, window_size]``."""
    return waveform.unfold(-1, window_size, window_shift)  # (..., T, L)


def remove_dc_offset(frames: torch.Tensor) -> torch.Tensor:
    """Subtract each frame's mean: a new tensor ``[..., T, L]``."""
    return frames - frames.mean(-1, keepdim=True)


def preemphasize(
    frames: torch.Tensor, coefficient: float = PREEMPHASIS, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``y[n] = x[n] - c x[n-1]`` within each frame, the first sample using itself: ``y[0] = x[0] - c x[0]``.

    ``out`` (same shape, may be a view into a larger buffer, must not overlap ``frames``)
    receives the result. The rounding is that of torchaudio's ``x - c * shifted(x)``, so
    the FFT sees the very same float32 frames.
    """
    out = torch.empty_like(frames) if out is None else out  # (..., T, L)
    torch.mul(frames[..., :-1], coefficient, out=out[..., 1:])
    torch.mul(frames[..., :1], coefficient, out=out[..., :1])
    return torch.sub(frames, out, out=out)


def power_spectrum(frames: torch.Tensor, fft_size: int | None = None) -> torch.Tensor:
    """``|rfft|^2`` of frames (zero-padded to ``fft_size`` if given): ``[..., T, fft_size // 2 + 1]``."""
    spectrum = torch.fft.rfft(frames, n=fft_size)  # (..., T, K) complex
    return torch.mul(spectrum.real, spectrum.real).addcmul_(spectrum.imag, spectrum.imag)


def _fbank_block(
    frames: torch.Tensor, window: torch.Tensor, banks: torch.Tensor, fft_size: int, k0: int, k1: int
) -> torch.Tensor:
    """All Kaldi stages on a block of frames ``[..., T, L]`` -> log mel energies ``[..., T, M]``."""
    window_size = frames.shape[-1]
    buffer = frames.new_empty((*frames.shape[:-1], fft_size))  # (..., T, N): zero-padded frames
    buffer[..., window_size:] = 0.0
    windowed = buffer[..., :window_size]
    preemphasize(remove_dc_offset(frames), out=windowed).mul_(window)
    power = power_spectrum(buffer)[..., k0:k1]  # (..., T, k1 - k0); other rows of the mel matrix are 0
    energies = torch.matmul(power, banks)  # (..., T, M)
    return energies.clamp_min_(EPSILON).log_()


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast disabled on ``device_type`` (where it exists): the mel matmul stays in full precision."""
    available = getattr(torch.amp, "is_autocast_available", lambda t: t in ("cpu", "cuda"))  # torch < 2.4
    return torch.autocast(device_type, enabled=False) if available(device_type) else contextlib.nullcontext()


# Padded samples per block on the CPU (2048 frames of 512): the FFT and its buffers stay
# in cache, several times faster than one pass over a whole batch (measured on a 2-core
# Xeon: 1400 vs 540 ten-second clips/s). A loop over blocks, not over frames or clips;
# accelerators take the whole batch at once.
CPU_BLOCK_SAMPLES = 2048 * 512


def fbank(
    waveform: torch.Tensor,
    sample_rate: float,
    num_mel_bins: int = 128,
    frame_shift: float = 10.0,
    frame_length: float = 25.0,
    *,
    low_freq: float = LOW_FREQ,
    high_freq: float = HIGH_FREQ,
) -> torch.Tensor:
    """Log mel filterbanks, equal to torchaudio's ``compliance.kaldi.fbank`` with AST's arguments.

    ``waveform`` is ``[samples]`` or ``[batch, samples]``, scaled as loaded (float in
    [-1, 1]; no int16 rescaling). Returns ``[frames, bins]`` or ``[batch, frames, bins]``
    with ``frames = 1 + (samples - window) // shift`` (zero when the input is shorter
    than one window). Runs on the waveform's device, in float64 for float64 input and
    float32 otherwise (also under autocast). The waveform mean is *not* removed here;
    ``waveform_to_input`` does that, as AST does.
    """
    if not isinstance(waveform, torch.Tensor):
        raise TypeError(f"waveform must be a torch.Tensor, got {type(waveform).__name__}")
    if waveform.dim() not in (1, 2):
        raise ValueError(f"waveform must be [samples] or [batch, samples], got shape {tuple(waveform.shape)}")
    if not waveform.is_floating_point():
        raise ValueError(f"waveform must be floating point (scaled to [-1, 1]), got {waveform.dtype}")
    if sample_rate <= 0:
        raise ConfigError(f"sample rate must be positive, got {sample_rate}")
    window_size, window_shift, fft_size = frame_sizes(sample_rate, frame_length, frame_shift)
    dtype = torch.float64 if waveform.dtype == torch.float64 else torch.float32
    key = (float(sample_rate), int(num_mel_bins), window_size, fft_size, float(low_freq), float(high_freq))
    window, banks, k0, k1 = _constants(*key, waveform.device, dtype)
    x = waveform.to(dtype)
    batched = x.dim() == 2
    x = x if batched else x.unsqueeze(0)  # (B, S)
    frames = frames_of(x, window_size, window_shift) if x.shape[-1] >= window_size else None  # (B, T, L)
    if frames is None or frames.shape[0] == 0:
        out = x.new_zeros((x.shape[0], 0 if frames is None else frames.shape[1], num_mel_bins))
        return out if batched else out[0]
    with _autocast_off(x.device.type):
        if x.device.type != "cpu":
            out = _fbank_block(frames, window, banks, fft_size, k0, k1)  # (B, T, M)
        else:
            batch, num_frames = frames.shape[:2]
            out = x.new_empty((batch, num_frames, num_mel_bins))  # (B, T, M)
            block_frames = max(1, CPU_BLOCK_SAMPLES // fft_size)
            clips = max(1, block_frames // num_frames)  # whole clips per block, or
            step = min(num_frames, block_frames)  # a span of frames of one clip
            for b in range(0, batch, clips):
                for t in range(0, num_frames, step):
                    block = frames[b : b + clips, t : t + step]  # (b, t, L) view
                    out[b : b + clips, t : t + step] = _fbank_block(block, window, banks, fft_size, k0, k1)
    return out if batched else out[0]
