"""What the benchmarks share: timing and one training step."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from ast_audio.labels import LabelTable, write_label_table

# Dense bf16 peak of the datasheets (TFLOP/s), the usual denominator of model FLOP utilisation.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}


def forward_flops(
    model: torch.nn.Module, frames: int, bins: int, device: torch.device | str = "cpu"
) -> float:
    """FLOPs of one clip's forward pass, counted by ``torch.utils.flop_counter`` on the real model."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, frames, bins, device=device)
    # the math backend decomposes attention into matmuls, which the counter sees
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x)
    return float(counter.get_total_flops())


def write_labels(path: Path, count: int) -> Path:
    """A label CSV of ``count`` classes ``/m/0``, ``/m/1``..."""
    return write_label_table(
        LabelTable([f"/m/{i}" for i in range(count)], [f"class {i}" for i in range(count)]), path
    )


def timed(fn: Callable[[], object], repeats: int, warm: bool = True) -> float:
    """Best of ``repeats`` wall-clock runs of ``fn`` (after one warm-up run unless ``warm=False``), in seconds."""
    if warm:
        fn()
    best = float("inf")
    for _ in range(repeats):
        begin = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - begin)
    return best


def train_step_fn(
    model: torch.nn.Module,
    logits_of: Callable[[torch.Tensor], torch.Tensor],
    dtype: torch.dtype | None = None,
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """``step(x, target)`` as ``train`` takes it: forward (under ``dtype`` autocast), BCE on
    float32 logits, backward, fused Adam over ``model``'s parameters (one optimiser)."""
    optimizer = torch.optim.Adam(model.parameters(), 1e-5, fused=True)

    def step(x: torch.Tensor, target: torch.Tensor) -> None:
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = logits_of(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def training_step(
    model: torch.nn.Module,
    logits_of: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    target: torch.Tensor,
    dtype: torch.dtype | None = None,
) -> Callable[[], None]:
    """:func:`train_step_fn` on fixed inputs, as a call without arguments."""
    step = train_step_fn(model, logits_of, dtype)
    return lambda: step(x, target)


def publish(lines: list[str], args, start: str, end: str) -> int:
    """Print a benchmark's section (``lines`` from ``start`` to ``end`` markers) and, unless
    ``--no-write``, put it between those markers of ``--output``; the script's exit status."""
    from features import write_section

    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        write_section(args.output, section, start, end)
    return 0
