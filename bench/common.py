"""What the benchmark scripts share (they import this, never each other): where they write,
the machine line, timing, one training step, FLOPs and peaks, the AudioSet recipe's items
and the ten-second clips they are read from."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from ast_audio.audio.synth import SAMPLE_RATE, make_clip
from ast_audio.base import allocator
from ast_audio.data import write_datafile
from ast_audio.data.labels import LabelTable, write_label_table
from ast_audio.features import InputContract
from ast_audio.features.pipeline import Augmentation

# The C allocator as the CLI and the tagger set it (glibc's defaults unless AST_AUDIO_MALLOC=reuse:
# ast_audio.base.allocator), for both sides of a comparison alike (Hugging Face's models run in the
# same process); the machine line says which.
ALLOCATOR = allocator.tune()

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "BENCHMARKS.md"  # every script's default --output

# The AudioSet recipe's training items (pipeline.py, device.py): its model input and augmentation.
AUDIOSET_INPUT = InputContract(target_length=1024)
AUDIOSET_AUGMENTATION = Augmentation(freqm=48, timem=192, mixup=0.5)

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
    """``step(x, target)``: the library's own step, :func:`ast_audio.train.loop.train_step`
    (forward under ``dtype`` autocast, BCE on float32 logits, backward, fused Adam over
    ``model``'s parameters), for our model and Hugging Face's alike: ``logits_of(x)`` gives
    the model's logits."""
    from ast_audio.train import train_step

    optimizer = torch.optim.Adam(model.parameters(), 1e-5, fused=True)
    scaler = torch.amp.GradScaler("cuda", enabled=False)  # bf16 and fp32 need none

    def step(x: torch.Tensor, target: torch.Tensor) -> None:
        train_step(logits_of, x, target, optimizer, scaler, loss="BCE", amp_dtype=dtype)

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


def cpu_has_bf16_units() -> bool:
    """Whether this CPU has bf16 matrix instructions (AMX or AVX512-BF16) torch may use; without
    them torch emulates bf16 matmuls, several times slower than fp32. The library's detector
    (:func:`ast_audio.base.runtime.cpu_bf16_units`), so benchmarks and ``precision="auto"`` agree."""
    from ast_audio.base.runtime import cpu_bf16_units

    return bool(cpu_bf16_units())


def machine() -> str:
    """The line that says where a benchmark ran: CPU, cores, torch and its threads, numpy, GPU."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)",
        f"numpy {np.__version__}",
        f"malloc {ALLOCATOR.split(' (')[0]}",
    ]
    if torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name()}")
    return "; ".join(parts)


def write_clips(folder: Path, count: int, rate: int, fmt: str) -> Path:
    """``count`` ten-second clips at ``rate`` in ``fmt`` and their datafile; returns the datafile."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    rows = []
    for i in range(count):
        # ten seconds at 16 kHz: a few of the synthetic sounds one after another
        clip = np.concatenate([make_clip(int(rng.integers(10)), rng, 2.0) for _ in range(5)])
        if rate != SAMPLE_RATE:
            clip = soxr.resample(clip, SAMPLE_RATE, rate)
        path = folder / f"clip{i}.{fmt.lower()}"
        sf.write(path, np.clip(clip, -1, 1), rate, format=fmt, subtype="PCM_16")
        rows.append((path, [f"/m/{i % 10}"]))
    return write_datafile(folder / "data.json", rows)


def write_section(path: Path, section: str, start: str, end: str) -> None:
    """Replace the text between the markers (or append it), keeping the rest of the file;
    ``section`` starts with ``start`` and ends with ``end``."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def publish(lines: list[str], args, start: str, end: str) -> int:
    """Print a benchmark's section (``lines`` from ``start`` to ``end`` markers) and, unless
    ``--no-write``, put it between those markers of ``--output``; the script's exit status."""
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        write_section(args.output, section, start, end)
    return 0
