"""Where and how a model computes: the device, the precision, int8 quantisation. One home for these.

A leaf module (it imports only torch and :mod:`ast_audio.errors`), so every layer can use
it: training, evaluation, inference and the command line choose their device with
:func:`pick_device` and cannot drift apart.

- **Device**: ``None`` means CUDA when available, else the CPU; a device that does not
  exist here (``"cuda"`` on a machine without CUDA, a misspelt name) is a one-line
  :class:`~ast_audio.errors.ConfigError`, not a traceback later.
- **Precision** of a forward pass (``PRECISIONS``): ``"fp32"`` (the reference),
  ``"bf16"`` (the model under bfloat16 autocast; features stay float32) and ``"int8"``
  (every ``nn.Linear`` dynamically quantised; CPU only, so ``device=None`` then means
  the CPU).
"""

from __future__ import annotations

import contextlib
import copy
import warnings

import torch

from .errors import ConfigError

__all__ = ["PRECISIONS", "autocast", "device_for", "pick_device", "quantize_int8", "resolve_precision", "training_amp"]

PRECISIONS = ("fp32", "bf16", "int8")


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
    """The precision asked for: ``precision`` (default fp32), ``autocast=True`` meaning bf16."""
    if precision is None:
        return "bf16" if autocast else "fp32"
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if autocast and precision != "bf16":
        raise ConfigError(f"autocast=True means precision 'bf16', but precision {precision!r} was asked for")
    return precision


def device_for(precision: str, device: str | torch.device | None = None) -> torch.device:
    """:func:`pick_device` for a model computing in ``precision``: int8 runs on the CPU only
    (``device=None`` then means the CPU, another device is an error)."""
    chosen = pick_device("cpu" if device is None and precision == "int8" else device)
    if precision == "int8" and chosen.type != "cpu":
        raise ConfigError(f"precision 'int8' runs on the CPU only, not on {str(chosen)!r}")
    return chosen


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of ``precision`` on ``device``: bfloat16 for ``"bf16"``, else off."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def training_amp(amp: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """Training's mixed precision: ``(autocast dtype or None, use a gradient scaler)``.
    ``auto`` is fp16 with a scaler on CUDA (as the original) and off elsewhere; ``bf16``
    autocasts to bfloat16 on any device; ``fp16`` needs CUDA."""
    if amp == "auto":
        amp = "fp16" if device.type == "cuda" else "off"
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
