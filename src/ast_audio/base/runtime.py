"""Where and how a model computes: the device, the precision, int8 quantisation. One home for these.

A leaf module (it imports only torch and :mod:`ast_audio.errors`), so every layer can use
it: training, evaluation, inference and the command line choose their device with
:func:`pick_device` and cannot drift apart.

- **Device**: ``None`` means CUDA when available, else the CPU; a device that does not
  exist here (``"cuda"`` on a machine without CUDA, a misspelt name) is a one-line
  :class:`~ast_audio.errors.ConfigError`, not a traceback later.
- **Precision** of a forward pass (``PRECISIONS``): ``"fp32"`` (the reference),
  ``"bf16"`` (the model under bfloat16 autocast; features stay float32), ``"int8"``
  (every ``nn.Linear`` dynamically quantised; CPU only, so ``device=None`` then means
  the CPU) and ``"auto"``, which :func:`auto_precision` turns into one of those three
  on the device chosen: bf16 where it is native (a CPU with bf16 matrix units, AMX or
  AVX512-BF16, detected at run time by :func:`cpu_bf16_units`; a CUDA device that
  supports bf16), int8 on a CPU without them (bf16 is emulated there, several times
  slower than fp32, and int8 is the project's path faster than fp32 there that keeps the
  top labels: README, "Fast paths"), fp32 on a GPU without bf16 and on any other device. The choice
  is logged once per device (INFO). An explicit ``"bf16"`` on a CPU without bf16 units
  warns once.
- **Pinning** ``"auto"``: the environment variable ``AST_AUDIO_PRECISION`` (``fp32``,
  ``bf16`` or ``int8``; empty or ``auto``: not pinned) is what ``"auto"`` means on every
  device, read by :func:`pinned_precision` inside :func:`auto_precision` and
  :func:`auto_amp`, so the tagger, the CLI, ``listen``, the service and training's
  ``--amp auto`` all follow it. An explicit precision still wins. It makes results
  independent of the CPU (the test suite runs under each value) and lets a user keep
  ``"auto"`` in scripts and choose the path once per machine.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
import warnings
from pathlib import Path

import torch

from ..errors import ConfigError

__all__ = [
    "PRECISIONS", "PRECISION_ENV", "auto_amp", "auto_precision", "autocast", "bf16_native", "choose_precision",
    "concrete_precision", "cpu_bf16_units", "device_for", "pick_device", "pinned_precision", "quantize_int8",
    "resolve_precision", "training_amp",
]  # fmt: skip

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "int8")
PRECISION_ENV = "AST_AUDIO_PRECISION"  # pins what "auto" means (pinned_precision)
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of bf16 matrix units (Linux names)
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(text: str) -> set[str]:
    """The feature flags of ``/proc/cpuinfo`` text (x86 ``flags``, Arm ``Features``), all CPUs together."""
    flags: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return flags


@functools.cache
def _this_cpu_flags() -> frozenset[str]:
    try:
        return frozenset(cpu_flags(CPUINFO.read_text(errors="replace")))
    except OSError:  # not Linux (macOS, Windows): no flags known, so no bf16 units assumed
        return frozenset()


# oneDNN, which runs torch's bf16 matmuls on the CPU, can be capped to an instruction set by
# ONEDNN_MAX_CPU_ISA (or its older name DNNL_MAX_CPU_ISA). Under these caps it has no bf16
# kernels, so bf16 is emulated whatever the CPU has; under AVX512_CORE_BF16 it has no AMX.
NO_BF16_ISAS = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"})
NO_AMX_ISAS = NO_BF16_ISAS | {"AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16"}


def onednn_isa_cap(environ: dict[str, str] | None = None) -> str | None:
    """The instruction-set cap oneDNN was given through the environment (upper case), or ``None``."""
    environ = os.environ if environ is None else environ
    value = environ.get("ONEDNN_MAX_CPU_ISA") or environ.get("DNNL_MAX_CPU_ISA")
    return value.strip().upper() if value and value.strip() else None


def cpu_bf16_units(flags: set[str] | frozenset[str] | None = None, environ: dict[str, str] | None = None) -> list[str]:
    """The bf16 matrix units among ``flags`` (default: this CPU's) that torch may use:
    ``amx_bf16`` (Intel AMX) and ``avx512_bf16`` (Intel Cooper Lake and later, AMD Zen 4 and
    later), less those that an ``ONEDNN_MAX_CPU_ISA`` cap in ``environ`` (default: this
    process's) keeps oneDNN from using (``AVX2`` there: none, as on an AVX2-only CPU)."""
    flags = _this_cpu_flags() if flags is None else flags
    cap = onednn_isa_cap(environ)
    barred = {"amx_bf16", "avx512_bf16"} if cap in NO_BF16_ISAS else {"amx_bf16"} if cap in NO_AMX_ISAS else set()
    return [name for name in BF16_CPU_FLAGS if name in flags and name not in barred]


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 matmuls in hardware: a CPU with :func:`cpu_bf16_units`,
    a CUDA device for which ``torch.cuda.is_bf16_supported()`` (Ampere and later)."""
    if device.type == "cpu":
        return bool(cpu_bf16_units())
    if device.type == "cuda":
        with torch.cuda.device(device):
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    return False


def pinned_precision(environ: dict[str, str] | None = None) -> str | None:
    """The precision ``AST_AUDIO_PRECISION`` in ``environ`` (default: this process's) pins
    ``"auto"`` to: ``"fp32"``, ``"bf16"`` or ``"int8"`` (any case); ``None`` when it is unset,
    empty or ``auto``. Another value is a one-line :class:`~ast_audio.errors.ConfigError`."""
    environ = os.environ if environ is None else environ
    value = environ.get(PRECISION_ENV, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in PRECISIONS:
        raise ConfigError(
            f"{PRECISION_ENV}={environ[PRECISION_ENV]!r} in the environment is not a precision; "
            f"set it to fp32, bf16 or int8 (or unset it: the machine's fast path)"
        )
    return value


def auto_precision(device: torch.device) -> tuple[str, str]:
    """What ``"auto"`` means on ``device``, and why: ``(precision, reason)``. The pin of
    :func:`pinned_precision` first (int8 there on a device other than the CPU is an error),
    else the device's fast path."""
    pinned = pinned_precision()
    if pinned is not None:
        if pinned == "int8" and device.type != "cpu":
            raise ConfigError(f"{PRECISION_ENV}=int8 pins precision auto to int8, which runs on the CPU only, "
                              f"not on {str(device)!r}; pass --device cpu or another precision")  # fmt: skip
        return pinned, f"pinned by {PRECISION_ENV}={pinned} in the environment"
    if device.type == "cpu":
        units = cpu_bf16_units()
        if units:
            return "bf16", f"this CPU has bf16 matrix units ({', '.join(units)})"
        return "int8", "this CPU has no bf16 matrix units (bf16 would be emulated); int8 is faster than fp32 there"
    if device.type == "cuda":
        if bf16_native(device):
            return "bf16", f"{torch.cuda.get_device_name(device)} supports bf16"
        return "fp32", f"{torch.cuda.get_device_name(device)} has no native bf16"
    return "fp32", f"no fast path known for {device.type}"


_told: set[tuple[str, str]] = set()  # (what, device and reason) already logged or warned about: once per process


def choose_precision(precision: str, device: torch.device) -> tuple[str, str]:
    """``precision`` on ``device`` made concrete, and why: ``"auto"`` resolved by
    :func:`auto_precision` (logged once per device and reason); an explicit ``"bf16"`` on a
    CPU without bf16 units warns once."""
    if precision == "auto":
        precision, why = auto_precision(device)
        if ("auto", f"{device} {why}") not in _told:
            _told.add(("auto", f"{device} {why}"))
            log.info("precision auto: %s on %s (%s)", precision, device, why)
        return precision, why
    if precision == "bf16" and device.type == "cpu" and not cpu_bf16_units() and ("bf16", "cpu") not in _told:
        _told.add(("bf16", "cpu"))
        warnings.warn(
            "precision bf16 on a CPU without bf16 matrix units (no amx_bf16 or avx512_bf16): bf16 is emulated "
            "here, several times slower than fp32; precision 'auto' picks the fast path",
            RuntimeWarning, stacklevel=3,
        )  # fmt: skip
    return precision, "asked for"


def concrete_precision(precision: str, device: torch.device) -> str:
    """The precision of :func:`choose_precision`, without the reason."""
    return choose_precision(precision, device)[0]


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` -> CUDA when available, else the CPU; a CUDA device without CUDA is a clear error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"bad device {device!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {str(device)!r} asked for, but CUDA is not available here")
    return device


def resolve_precision(precision: str | None, autocast: bool = False) -> str:
    """The precision asked for: ``precision`` (default ``"auto"``), ``autocast=True`` meaning bf16.
    ``"auto"`` stays as it is until the device is known (:func:`concrete_precision`)."""
    if precision is None:
        return "bf16" if autocast else "auto"
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if autocast and precision != "bf16":
        raise ConfigError(f"autocast=True means precision 'bf16', but precision {precision!r} was asked for")
    return precision


def device_for(precision: str, device: str | torch.device | None = None) -> torch.device:
    """:func:`pick_device` for a model computing in ``precision``: int8 runs on the CPU only
    (``device=None`` then means the CPU, another device is an error); ``"auto"`` takes the
    default device, or the CPU where :func:`pinned_precision` pins it to int8."""
    int8 = precision == "int8" or precision == "auto" and pinned_precision() == "int8"
    chosen = pick_device("cpu" if device is None and int8 else device)
    if precision == "int8" and chosen.type != "cpu":
        raise ConfigError(f"precision 'int8' runs on the CPU only, not on {str(chosen)!r}")
    return chosen


def autocast(device: torch.device | str, dtype: torch.dtype | str | None) -> contextlib.AbstractContextManager:
    """The one autocast context of training, evaluation and inference: ``dtype`` on ``device``
    (a precision name: bfloat16 for ``"bf16"``, off for the others), off for ``None``."""
    if isinstance(dtype, str):
        dtype = torch.bfloat16 if dtype == "bf16" else None
    return torch.autocast(torch.device(device).type, dtype=dtype or torch.float32, enabled=dtype is not None)


def auto_amp(device: torch.device) -> tuple[str, str]:
    """What training's ``--amp auto`` means on ``device``, and why: ``(amp, reason)``. The pin of
    :func:`pinned_precision` first (fp32 -> off, bf16 -> bf16, int8 -> off: int8 does not
    train, a model is trained in fp32 and quantised when tagging); else bf16 where it is native
    (:func:`bf16_native`), fp16 with a gradient scaler on other CUDA devices (as the original),
    off elsewhere."""
    pinned = pinned_precision()
    if pinned is not None:
        detail = " (int8 does not train: fp32)" if pinned == "int8" else ""
        return ("bf16" if pinned == "bf16" else "off"), f"pinned by {PRECISION_ENV}={pinned}{detail}"
    if bf16_native(device):
        return "bf16", f"bf16 is native on {device}"
    if device.type == "cuda":
        return "fp16", "no native bf16 on this GPU: fp16 with a gradient scaler, as the original"
    return "off", f"no native bf16 on {device} (int8 does not train)"


def training_amp(amp: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """Training's mixed precision: ``(autocast dtype or None, use a gradient scaler)``.
    ``auto`` is :func:`auto_amp` (logged once per device and reason; pinned to bf16 on a CPU
    without bf16 units it is not warned about, as ``precision="auto"`` is not); ``bf16``
    autocasts to bfloat16 on any device (warned about once on a CPU without bf16 units);
    ``fp16`` needs CUDA."""
    if amp == "auto":
        amp, why = auto_amp(device)
        if ("amp", f"{device} {why}") not in _told:
            _told.add(("amp", f"{device} {why}"))
            log.info("amp auto: %s on %s (%s)", amp, device, why)
    elif amp == "bf16":
        choose_precision("bf16", device)  # warns the caller of training_amp (stacklevel 3)
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError("amp=fp16 needs a CUDA device; use amp=bf16 or off on the CPU")
        return torch.float16, True
    if amp not in ("off", "bf16"):
        raise ConfigError(f"amp must be auto, off, bf16 or fp16, got {amp!r}")
    return (torch.bfloat16, False) if amp == "bf16" else (None, False)


def quantize_int8(model: torch.nn.Module, *, inplace: bool) -> torch.nn.Module:
    """``model`` with every ``nn.Linear`` dynamically quantised to int8 (on a deep copy unless ``inplace``).

    ``torch.ao.quantization.quantize_dynamic``: int8 weights, activations quantised per batch.
    """
    if not inplace:
        model = copy.deepcopy(model)
    with warnings.catch_warnings():
        # torch (2.13 here) deprecates torch.ao.quantization in favour of torchao and warns on
        # every call, and again for the quantised-tensor constructors it uses. Both still work
        # and torchao is not a dependency, so exactly these two warnings are silenced, here only.
        warnings.filterwarnings(
            "ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning
        )
        warnings.filterwarnings(
            "ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel", category=UserWarning
        )
        return torch.ao.quantization.quantize_dynamic(
            model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True
        )
