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
    "PRECISIONS", "auto_precision", "autocast", "bf16_native", "concrete_precision", "cpu_bf16_units",
    "device_for", "pick_device", "quantize_int8", "resolve_precision", "training_amp",
]  # fmt: skip

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "int8")
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


def auto_precision(device: torch.device) -> tuple[str, str]:
    """What ``"auto"`` means on ``device``, and why: ``(precision, reason)``."""
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


_told: set[tuple[str, str]] = set()  # (what, device) already logged or warned about: once per process


def concrete_precision(precision: str, device: torch.device) -> str:
    """``precision`` on ``device`` made concrete: ``"auto"`` resolved by :func:`auto_precision`
    (logged once per device); an explicit ``"bf16"`` on a CPU without bf16 units warns once."""
    if precision == "auto":
        precision, why = auto_precision(device)
        if ("auto", str(device)) not in _told:
            _told.add(("auto", str(device)))
            log.info("precision auto: %s on %s (%s)", precision, device, why)
    elif precision == "bf16" and device.type == "cpu" and not cpu_bf16_units() and ("bf16", "cpu") not in _told:
        _told.add(("bf16", "cpu"))
        warnings.warn(
            "precision bf16 on a CPU without bf16 matrix units (no amx_bf16 or avx512_bf16): bf16 is emulated "
            "here, several times slower than fp32; precision 'auto' picks the fast path",
            RuntimeWarning, stacklevel=3,
        )  # fmt: skip
    return precision


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
    default device."""
    chosen = pick_device("cpu" if device is None and precision == "int8" else device)
    if precision == "int8" and chosen.type != "cpu":
        raise ConfigError(f"precision 'int8' runs on the CPU only, not on {str(chosen)!r}")
    return chosen


def autocast(device: torch.device | str, dtype: torch.dtype | str | None) -> contextlib.AbstractContextManager:
    """The one autocast context of training, evaluation and inference: ``dtype`` on ``device``
    (a precision name: bfloat16 for ``"bf16"``, off for the others), off for ``None``."""
    if isinstance(dtype, str):
        dtype = torch.bfloat16 if dtype == "bf16" else None
    return torch.autocast(torch.device(device).type, dtype=dtype or torch.float32, enabled=dtype is not None)


def training_amp(amp: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """Training's mixed precision: ``(autocast dtype or None, use a gradient scaler)``.
    ``auto`` is bf16 where it is native (:func:`bf16_native`: a CPU with bf16 matrix units,
    a CUDA device with bf16), fp16 with a scaler on other CUDA devices (as the original)
    and off elsewhere (int8 does not train); ``bf16`` autocasts to bfloat16 on any device
    (warned about once on a CPU without bf16 units); ``fp16`` needs CUDA."""
    if amp == "auto":
        amp = "bf16" if bf16_native(device) else "fp16" if device.type == "cuda" else "off"
        if ("amp", str(device)) not in _told:
            _told.add(("amp", str(device)))
            log.info("amp auto: %s on %s", amp, device)
    elif amp == "bf16":
        concrete_precision("bf16", device)
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
