"""Training throughput on an accelerator: model FLOP utilisation, and whether the loader keeps up.

    .venv/bin/python bench/device.py                 # CUDA if present; writes BENCHMARKS.md
    .venv/bin/python bench/device.py --device cpu --model-size tiny224 --depth 2 --clips 24 --no-write

Measured in one run, on the same device and model (base384, 1024 frames, bf16 autocast,
fused Adam, as ``ast-audio train --amp bf16`` runs it):

1. the training step alone, on random inputs already on the device: seconds per step,
   clips per second and model FLOP utilisation (FLOPs per clip counted on the real model
   by ``torch.utils.flop_counter``, three times the forward for a training step, over the
   device's dense bf16 peak: ``--peak-tflops``, known for H100/H200); then the same step
   with structured patchout (``--patchout-f 4 --patchout-t 0.5``, PaSST's kind: 408 of
   base384's 1212 patches), whose FLOPs are counted on the patchout forward, so its MFU
   says whether the smaller matmuls still fill the device;
2. the loader alone: ten-second 44.1 kHz FLAC files (decode, resample, mixup) with
   ``fbank_on="device"``, ``--workers`` processes, batches moved to the device and
   finished by ``model_input`` (filterbanks, SpecAugment, normalisation on the device);
3. the whole loop, 2 and 1 together: if its rate is that of 1, the data pipeline is not
   the bottleneck. The second epoch reads the waveform cache, the first decodes.

``make bench`` runs it only where CUDA is available (on the CPU, 1 is what
``bench/model.py`` measures); the CPU invocation above is its smoke test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from common import (
    AUDIOSET_AUGMENTATION,
    AUDIOSET_INPUT,
    BENCHMARKS,
    PEAK_BF16_TFLOPS,
    forward_flops,
    machine,
    publish,
    train_step_fn,
    write_clips,
    write_labels,
)

from ast_audio.data import read_datafile
from ast_audio.data.dataset import AudioDataset, EpochSampler
from ast_audio.model import ASTModel, draw_patchout
from ast_audio.train.config import patchout_drops

START, END = "<!-- bench:device:start -->", "<!-- bench:device:end -->"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model-size", default="base384")
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=48, help="clips per step (48)")
    parser.add_argument(
        "--steps", type=int, default=10, help="timed steps of the step-alone measurement (10)"
    )
    parser.add_argument("--clips", type=int, default=960, help="FLAC files for the loader and the loop (960)")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak for MFU")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--output", type=Path, default=BENCHMARKS)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    batch = args.batch_size

    torch.manual_seed(0)
    model = ASTModel(
        label_dim=527, imagenet_pretrain=False, verbose=False, model_size=args.model_size, depth=args.depth
    ).to(device)
    frames, bins = AUDIOSET_INPUT.target_length, AUDIOSET_INPUT.num_mel_bins
    flops = 3 * forward_flops(model, frames, bins, device)  # per training clip
    model.train()
    x = torch.randn(batch, frames, bins, device=device)
    target = torch.zeros(batch, 527, device=device)
    target[:, :3] = 1.0
    def clips_per_second(step) -> float:
        """Training clips per second of ``step`` on ``x``, after a warm-up (kernels, allocator, autotuning)."""
        for _ in range(3):
            step(x, target)
        sync(device)
        begin = time.perf_counter()
        for _ in range(args.steps):
            step(x, target)
        sync(device)
        return batch * args.steps / (time.perf_counter() - begin)

    step = train_step_fn(model, model, torch.bfloat16)
    step_rate = clips_per_second(step)
    step_seconds = batch / step_rate
    mfu = flops * step_rate / (peak * 1e12) if peak else None
    print(f"step alone: {step_seconds * 1000:.1f} ms/step, {step_rate:.1f} clips/s"
          + (f", MFU {mfu:.1%}" if mfu is not None else ""), flush=True)  # fmt: skip

    grid = model.config.grid
    kept = draw_patchout(grid, *patchout_drops((4, 0.5), grid), torch.Generator().manual_seed(0))
    kept = tuple(None if k is None else k.to(device) for k in kept)
    patchout_flops = 3 * forward_flops(lambda v: model(v, patchout=kept), frames, bins, device)
    patchout_rate = clips_per_second(train_step_fn(model, lambda v: model(v, patchout=kept), torch.bfloat16))
    patchout_mfu = patchout_flops * patchout_rate / (peak * 1e12) if peak else None
    patchout_patches = (grid[0] if kept[0] is None else len(kept[0])) * (grid[1] if kept[1] is None else len(kept[1]))
    print(f"step with patchout ({patchout_patches} of {grid[0] * grid[1]} patches): {patchout_rate:.1f} clips/s"
          + (f", MFU {patchout_mfu:.1%}" if patchout_mfu is not None else ""), flush=True)  # fmt: skip

    work = Path(tempfile.mkdtemp(prefix="ast-device-"))
    try:
        labels = write_labels(work / "labels.csv", 527)  # the files use the first ten
        df = read_datafile(write_clips(work / "flac", args.clips, 44100, "FLAC"), labels)
        dataset = AudioDataset(
            df, AUDIOSET_INPUT, AUDIOSET_AUGMENTATION, seed=0, fbank_on="device", cache_dir=str(work / "cache")
        )
        sampler = EpochSampler(len(dataset), seed=0)  # shuffled, fresh augmentation per epoch
        loader = dataset.loader(
            batch, sampler=sampler, num_workers=args.workers, drop_last=True, pin_memory=device.type == "cuda",
            persistent_workers=args.workers > 0,
        )  # fmt: skip
        rates: dict[str, float] = {}
        for epoch, label in ((1, "first epoch (decoding)"), (2, "second epoch (waveform cache)")):
            sampler.set_epoch(epoch)
            loader_clips, begin = 0, time.perf_counter()
            for raw in loader:  # the loader alone, batches finished on the device
                features, targets = dataset.model_input(raw, device)
                loader_clips += len(targets)
            sync(device)
            rates[f"loader alone, {label}"] = loader_clips / (time.perf_counter() - begin)
        sampler.set_epoch(3)
        loop_clips, begin = 0, time.perf_counter()
        for raw in loader:  # the whole loop over cached clips
            features, targets = dataset.model_input(raw, device)
            step(features, targets)
            loop_clips += len(targets)
        sync(device)
        rates["loader + training step, cached clips"] = loop_clips / (time.perf_counter() - begin)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for label, rate in rates.items():
        print(f"{label}: {rate:.1f} clips/s", flush=True)

    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    loop = rates["loader + training step, cached clips"]
    lines = [
        START,
        "## Training on an accelerator (`bench/device.py`)",
        "",
        f"Run {now} on {name} ({machine()}). {args.model_size}, depth {args.depth}, 1024 frames, bf16 autocast, "
        f"fused Adam, batch {batch}; {args.workers} loader workers; {args.clips} ten-second 44.1 kHz FLAC files, "
        f"`fbank_on=device`, SpecAugment and mixup as the AudioSet recipe. {flops / 1e9:.0f} GFLOP per training "
        "clip (three times the counted forward).",
        "",
        "| measurement | clips/s |",
        "| --- | ---: |",
        f"| training step alone (inputs on the device) | {step_rate:.1f} |",
        f"| training step alone, patchout 4 rows / 50% columns ({patchout_patches} of {grid[0] * grid[1]} patches) "
        f"| {patchout_rate:.1f} |",
        *[f"| {label} | {rate:.1f} |" for label, rate in rates.items()],
        "",
        f"Model FLOP utilisation of the step: {f'{mfu:.1%} of {peak:.0f} TFLOP/s' if mfu is not None else 'n/a'}; "
        f"with patchout {f'{patchout_mfu:.1%}' if patchout_mfu is not None else 'n/a'} "
        f"({patchout_flops / 1e9:.0f} GFLOP per training clip, {patchout_rate / step_rate:.2f}x the clips/s). "
        f"The whole loop runs at {loop / step_rate:.0%} of the step alone.",
        END,
    ]
    return publish(lines, args, START, END)


if __name__ == "__main__":
    sys.exit(main())
