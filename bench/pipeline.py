"""Data-pipeline speed: training clips per second out of the loader, against what the model consumes.

    .venv/bin/python bench/pipeline.py [--clips N] [--no-write]

The AudioSet recipe's training items (ten seconds, 1024 frames, 128 bins, SpecAugment
freqm 48 / timem 192, mixup 0.5, batch 12), read from real files in two layouts: 16 kHz
WAV (AudioSet as the original prepared it) and 44.1 kHz FLAC (decoding and resampling,
as for ESC-50 or one's own recordings). Measured in one run:

1. each stage on one core: decode, resample, fbank (model input), SpecAugment +
   normalisation, batching (collation);
2. the ``DataLoader`` with 0, 1 and 2 workers, for ``fbank_on="loader"`` (workers do
   everything) and ``fbank_on="device"`` (workers decode and mix; the batch's features
   are then made by ``model_input`` on the model's device, timed separately here on the
   CPU), without and with the waveform cache (a second epoch over cached clips);
3. what the model consumes: a base384 training step (forward, BCE, backward, Adam) on
   this CPU, fp32 and bf16 autocast, in clips per second.

With no GPU in the run, the GPU demand is computed, not measured: the model's FLOPs per
training clip (counted by ``torch.utils.flop_counter`` on the real model) and an H200 at
40 % model FLOP utilisation give the clips per second the loader would have to deliver.
Writes the tables between the ``bench:pipeline`` markers of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
from common import (
    AUDIOSET_AUGMENTATION,
    AUDIOSET_INPUT,
    BENCHMARKS,
    PEAK_BF16_TFLOPS,
    cpu_has_bf16_units,
    forward_flops,
    machine,
    publish,
    timed,
    training_step,
    write_clips,
    write_labels,
)

from ast_audio.audio.io import load_audio
from ast_audio.audio.synth import SAMPLE_RATE
from ast_audio.data import read_datafile
from ast_audio.data.dataset import AudioDataset, EpochSampler
from ast_audio.features import normalize, waveform_to_input
from ast_audio.features.augment import spec_augment
from ast_audio.model import ASTModel

START, END = "<!-- bench:pipeline:start -->", "<!-- bench:pipeline:end -->"
BATCH = 12
AUG = AUDIOSET_AUGMENTATION
H200_BF16_PEAK = PEAK_BF16_TFLOPS["H200"] * 1e12
TARGET_MFU = 0.4


def per_clip(fn, items) -> float:
    """Milliseconds per item of ``fn`` over ``items`` (one warm-up call first)."""
    fn(items[0])
    begin = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - begin) * 1000 / len(items)


def stages(datafile: Path, labels: Path) -> dict[str, float]:
    """Milliseconds per clip of each stage, on one core."""
    df = read_datafile(datafile, labels)
    paths = [e.wav for e in df.entries]
    raw = [sf.read(p, dtype="float32")[0] for p in paths]
    rate = sf.info(paths[0]).samplerate
    waves = [load_audio(p) for p in paths]
    feats = [waveform_to_input(w, AUDIOSET_INPUT) for w in waves]
    rng = np.random.default_rng(0)
    out = {"decode": per_clip(lambda p: sf.read(p, dtype="float32"), paths)}
    if rate != SAMPLE_RATE:
        out["resample"] = per_clip(lambda x: soxr.resample(x, rate, SAMPLE_RATE, quality="HQ"), raw)
    out["fbank (model input)"] = per_clip(lambda w: waveform_to_input(w, AUDIOSET_INPUT), waves)
    out["SpecAugment + normalise"] = per_clip(
        lambda x: normalize(spec_augment(x, AUG.freqm, AUG.timem, rng), AUDIOSET_INPUT.mean, AUDIOSET_INPUT.std), feats
    )
    batches = [feats[i : i + BATCH] for i in range(0, len(feats) - BATCH + 1, BATCH)] or [feats]
    out["batching (collate)"] = per_clip(torch.stack, batches) / len(batches[0])
    return out


def loader_rate(dataset: AudioDataset, workers: int, epochs: int = 2) -> tuple[float, float]:
    """(clips/s out of the DataLoader in the last of ``epochs`` epochs, ms per batch of ``model_input``).

    The first epoch starts the (persistent) workers, and fills the cache where there is one:
    only the last epoch is timed."""
    sampler = EpochSampler(len(dataset), seed=0)
    loader = dataset.loader(BATCH, sampler=sampler, num_workers=workers, persistent_workers=workers > 0)
    seconds, finish_ms = 0.0, 0.0
    for epoch in range(1, epochs + 1):
        sampler.set_epoch(epoch)
        clips, batches, finish = 0, 0, 0.0
        begin = time.perf_counter()
        for batch in loader:
            # the device's part, timed apart (not counted in the loader's rate)
            if dataset.fbank_on == "device":
                mark = time.perf_counter()
                dataset.model_input(batch, "cpu")
                finish += time.perf_counter() - mark
            clips += len(batch["target"] if isinstance(batch, dict) else batch[1])
            batches += 1
        seconds = time.perf_counter() - begin - finish
        finish_ms = finish * 1000 / max(batches, 1)
    return clips / seconds, finish_ms


def training_rates() -> tuple[dict[str, float], float]:
    """(clips/s of a base384 training step on this CPU per precision, forward FLOPs per clip)."""
    torch.manual_seed(0)
    model = ASTModel(label_dim=527, imagenet_pretrain=False, verbose=False).train()
    x, target = torch.randn(2, 1024, 128), torch.zeros(2, 527)
    flops = forward_flops(model, 1024, 128)
    rates = {}
    precisions = [("fp32", None)] + ([("bf16 autocast", torch.bfloat16)] if cpu_has_bf16_units() else [])
    if not cpu_has_bf16_units():
        print("training step bf16: not measured (no bf16 matrix units on this CPU: emulated, slower than fp32)")
    for name, dtype in precisions:
        rates[name] = len(x) / timed(training_step(model, model, x, target, dtype), 2)
        print(f"training step {name}: {rates[name]:.2f} clips/s", flush=True)
    return rates, flops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=96, help="ten-second files per layout (96)")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--output", type=Path, default=BENCHMARKS)
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the loader's arithmetic, one core per worker; the model below gets both
    work = Path(tempfile.mkdtemp(prefix="ast-pipeline-"))
    try:
        labels = write_labels(work / "labels.csv", 10)
        layouts = {
            "16 kHz WAV": write_clips(work / "wav16k", args.clips, SAMPLE_RATE, "WAV"),
            "44.1 kHz FLAC": write_clips(work / "flac44k", args.clips, 44100, "FLAC"),
        }
        stage_rows, loader_rows = [], []
        for layout, datafile in layouts.items():
            for stage, ms in stages(datafile, labels).items():
                stage_rows.append((layout, stage, ms))
                print(f"{layout}: {stage} {ms:.2f} ms/clip", flush=True)
            df = read_datafile(datafile, labels)
            for fbank_on in ("loader", "device"):
                for workers in (0, 1, 2):
                    dataset = AudioDataset(df, AUDIOSET_INPUT, AUG, seed=0, fbank_on=fbank_on)
                    rate, finish = loader_rate(dataset, workers)
                    loader_rows.append((layout, fbank_on, "no", workers, rate, finish))
                    print(f"{layout}, fbank on {fbank_on}, {workers} workers: {rate:.1f} clips/s", flush=True)
                cache = work / f"cache-{fbank_on}-{layout[:2]}"
                dataset = AudioDataset(df, AUDIOSET_INPUT, AUG, seed=0, fbank_on=fbank_on, cache_dir=str(cache))
                rate, finish = loader_rate(dataset, 2)  # epoch 1 fills the cache
                loader_rows.append((layout, fbank_on, "warm", 2, rate, finish))
                print(f"{layout}, fbank on {fbank_on}, warm cache, 2 workers: {rate:.1f} clips/s", flush=True)
        torch.set_num_threads(threads)
        rates, flops_per_clip = training_rates()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    train_flops = 3 * flops_per_clip  # backward ~ twice the forward
    gpu_need = TARGET_MFU * H200_BF16_PEAK / train_flops
    best = {}
    for layout, fbank_on, cached, workers, rate, _ in loader_rows:
        if workers == 1 and cached == "no":
            best[(layout, fbank_on)] = rate
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        START,
        "## Data pipeline: loader against model (`bench/pipeline.py`)",
        "",
        f"Run {now} on {machine()}. The AudioSet recipe's training items: {args.clips} ten-second clips per "
        f"layout, 1024 frames x 128 bins, SpecAugment freqm {AUG.freqm} / timem {AUG.timem}, mixup "
        f"{AUG.mixup} (a mixed item decodes two files), batch {BATCH}. One thread per process.",
        "",
        "Each stage on one core (ms per clip):",
        "",
        "| layout | stage | ms/clip |",
        "| --- | --- | ---: |",
        *[f"| {layout} | {stage} | {ms:.2f} |" for layout, stage, ms in stage_rows],
        "",
        "The `DataLoader` (clips/s out of the loader; for `fbank_on=device` the batch's features are then made "
        "by `model_input` on the model's device, whose time on this CPU is the last column and is not part of "
        'the loader\'s rate; on a GPU it runs there). "warm": the second epoch over the waveform cache.',
        "",
        "| layout | fbank on | cache | workers | loader clips/s | model_input ms/batch (CPU) |",
        "| --- | --- | --- | ---: | ---: | ---: |",
        *[
            f"| {layout} | {fbank_on} | {cached} | {workers} | {rate:.1f} | "
            f"{f'{finish:.0f}' if fbank_on == 'device' else '-'} |"
            for layout, fbank_on, cached, workers, rate, finish in loader_rows
        ],
        "",
        "What the model consumes, measured here (base384, 1024 frames, batch 2, both cores): "
        + ", ".join(f"{name} {rate:.2f} clips/s" for name, rate in rates.items())
        + ("" if "bf16 autocast" in rates else " (bf16 not measured: this CPU has no bf16 matrix units, so torch "
           "emulates it, slower than fp32)")
        + f". On this CPU even one loader worker outpaces the training step "
        f"{min(best.values()) / max(rates.values()):.0f}-fold.",
        "",
        f"GPU demand, computed (no GPU in this run): the forward pass is {flops_per_clip / 1e9:.0f} GFLOP per clip "
        f"(`torch.utils.flop_counter` on the real model), a training step about three times that "
        f"({train_flops / 1e9:.0f} GFLOP). An H200 at {TARGET_MFU:.0%} of its {H200_BF16_PEAK / 1e12:.0f} TFLOP/s "
        f"bf16 peak trains {gpu_need:.0f} clips/s. Cores that many clips need, at one worker's rate above: "
        + ", ".join(
            f"{layout}, fbank on {fbank_on}: {gpu_need / rate:.1f}"
            for (layout, fbank_on), rate in best.items()
        )
        + " (the H200 machine has 16).",
        END,
    ]
    return publish(lines, args, START, END)


if __name__ == "__main__":
    sys.exit(main())
