"""Feature extraction speed: ten-second 16 kHz clips per second, ours against the references.

    .venv/bin/python bench/features.py [--quick] [--no-write]

Measures, in one run on one machine: Hugging Face's ``ASTFeatureExtractor`` (its NumPy
path, one clip at a time, as it works), ``kaldi-native-fbank`` (C++, one clip at a time,
80 bins because it refuses 128 at 16 kHz), and ours on the CPU one clip at a time and
batched, plus the GPU when there is one. Every figure is preceded by a check of the
numbers against a reference, so speed is never reported for wrong results. Writes the
table between the ``bench:features`` markers of BENCHMARKS.md (other content is kept).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import kaldi_native_fbank as knf
import numpy as np
import torch
from common import BENCHMARKS, machine, write_section
from transformers import ASTFeatureExtractor
from transformers.utils import is_speech_available

from ast_audio.features import FeatureConfig, fbank, waveform_to_input

START, END = "<!-- bench:features:start -->", "<!-- bench:features:end -->"
SAMPLE_RATE, SECONDS, BATCH = 16000, 10.0, 32
KNF_BINS = 80
# float32 FFT rounding in the weakest bins of a frame reaches ~2e-3 in log-mel units
# between two float32 implementations; a real mistake shows up as 1e-1 or more.
MAX_DIFF, MEAN_DIFF = 5e-3, 1e-5


def clips(n: int, seed: int = 0) -> np.ndarray:
    """``[n, samples]`` float32: tones, a chirp and noise at 16-bit resolution, one mix per clip."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(SAMPLE_RATE * SECONDS)) / SAMPLE_RATE
    out = np.empty((n, t.size), np.float32)
    for i in range(n):
        f0, f1 = rng.uniform(100, 1000), rng.uniform(1000, 7000)
        x = (
            0.3 * np.sin(2 * np.pi * f0 * t)
            + 0.2 * np.sin(2 * np.pi * (f0 + (f1 - f0) * t / SECONDS / 2) * t)
            + rng.uniform(0.01, 0.1) * rng.standard_normal(t.size)
        )
        out[i] = np.round(x * 32767) / 32768
    return out


def throughput(fn: Callable[[], int], min_time: float, sync: Callable[[], None] = lambda: None) -> float:
    """Clips per second, the best of 3 rounds of ``min_time / 3`` s each (the machine is shared).

    ``fn`` returns how many clips it did.
    """
    fn()  # warm-up (constants, allocator, FFT plans)
    sync()
    best = 0.0
    for _ in range(3):
        done, start = 0, time.perf_counter()
        while True:
            done += fn()
            sync()
            elapsed = time.perf_counter() - start
            if elapsed >= min_time / 3:
                break
        best = max(best, done / elapsed)
    return best


def check(name: str, ours: np.ndarray, ref: np.ndarray) -> str:
    diff = np.abs(np.asarray(ours, np.float64) - np.asarray(ref, np.float64))
    if ours.shape != ref.shape or diff.max() > MAX_DIFF or diff.mean() > MEAN_DIFF:
        sys.exit(f"{name}: wrong numbers (shapes {ours.shape} vs {ref.shape}, max {diff.max():.2e}, "
                 f"mean {diff.mean():.2e}); not reporting speed")  # fmt: skip
    return f"{diff.max():.1e}"


def knf_fbank(clip: np.ndarray) -> np.ndarray:
    """kaldi-native-fbank as its Python API is used: one clip, then one frame at a time."""
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = SAMPLE_RATE
    opts.frame_opts.dither = 0.0
    opts.frame_opts.window_type = "hanning"
    opts.mel_opts.num_bins = KNF_BINS
    opts.htk_compat = True
    opts.use_energy = False
    online = knf.OnlineFbank(opts)
    online.accept_waveform(SAMPLE_RATE, clip)
    online.input_finished()
    return np.stack([online.get_frame(i) for i in range(online.num_frames_ready)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter timings (about 20 s in all)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    parser.add_argument("--output", type=Path, default=BENCHMARKS)
    args = parser.parse_args(argv)
    min_time = 1.5 if args.quick else 6.0
    data = clips(BATCH)
    batch = torch.from_numpy(data)  # (B, S)
    cfg = FeatureConfig()  # AudioSet: 128 bins, 1024 frames, normalised
    rows: list[tuple[str, int, float, str]] = []  # (what, bins, clips/s, max diff)

    def one_at_a_time(fn: Callable[[np.ndarray], object]) -> Callable[[], int]:
        def run() -> int:
            for clip in data[: 8 if args.quick else BATCH]:
                fn(clip)
            return 8 if args.quick else BATCH

        return run

    # --- references ---------------------------------------------------------------------
    if is_speech_available():
        sys.exit("torchaudio is installed: Hugging Face's extractor would not use its NumPy path")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one of its 128 filters is empty at 16 kHz, as in Kaldi
        extractor = ASTFeatureExtractor()

    def hf(clip: np.ndarray) -> np.ndarray:
        return extractor(clip, sampling_rate=SAMPLE_RATE, return_tensors="np")["input_values"][0]

    hf_ref = np.stack([hf(c) for c in data[:4]]) * (2 * cfg.std)  # log-mel units
    hf_rate = throughput(one_at_a_time(hf), min_time)
    rows.append(("Hugging Face `ASTFeatureExtractor` (NumPy), per clip", 128, hf_rate, "reference"))

    knf_ref = np.stack([knf_fbank(c) for c in data[:4]])
    knf_rate = throughput(one_at_a_time(knf_fbank), min_time)
    rows.append(("kaldi-native-fbank (C++), per clip", KNF_BINS, knf_rate, "reference"))

    # --- ours on the CPU ----------------------------------------------------------------
    def ours_input(x: torch.Tensor) -> np.ndarray:
        return waveform_to_input(x, cfg).cpu().numpy() * (2 * cfg.std)

    diff = check("ours vs HF", ours_input(batch[:4]), hf_ref)
    rate = throughput(one_at_a_time(lambda c: waveform_to_input(torch.from_numpy(c), cfg)), min_time)
    rows.append(("ours, model input, CPU, per clip", 128, rate, diff))
    rate = throughput(lambda: len(waveform_to_input(batch, cfg)), min_time)
    rows.append((f"ours, model input, CPU, batch {BATCH}", 128, rate, diff))
    batched_cpu_rate = rate

    diff = check("ours vs knf", fbank(batch[:4], SAMPLE_RATE, KNF_BINS).numpy(), knf_ref)
    rate = throughput(one_at_a_time(lambda c: fbank(torch.from_numpy(c), SAMPLE_RATE, KNF_BINS)), min_time)
    rows.append(("ours, fbank only, CPU, per clip", KNF_BINS, rate, diff))
    per_clip_80 = rate
    rate = throughput(lambda: len(fbank(batch, SAMPLE_RATE, KNF_BINS)), min_time)
    rows.append((f"ours, fbank only, CPU, batch {BATCH}", KNF_BINS, rate, diff))

    # --- ours on a GPU --------------------------------------------------------------------
    if torch.cuda.is_available():
        device = torch.device("cuda")
        sync = torch.cuda.synchronize
        on_gpu = batch.to(device)
        diff = check("ours GPU vs HF", ours_input(on_gpu[:4]), hf_ref)
        rate = throughput(lambda: len(waveform_to_input(on_gpu, cfg)), min_time, sync)
        rows.append((f"ours, model input, GPU, batch {BATCH} (on device)", 128, rate, diff))
        big = on_gpu.repeat(8, 1)  # (256, S)
        rate = throughput(lambda: len(waveform_to_input(big, cfg)), min_time, sync)
        rows.append((f"ours, model input, GPU, batch {len(big)} (on device)", 128, rate, diff))
        rate = throughput(lambda: len(waveform_to_input(batch.to(device, non_blocking=True), cfg).cpu()),
                          min_time, sync)  # fmt: skip
        rows.append((f"ours, model input, GPU, batch {BATCH} (host to host)", 128, rate, diff))

    # --- report -----------------------------------------------------------------------
    lines = [
        "| method | bins | clips/s | ms/clip | vs HF | vs knf | max abs diff (log-mel) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for what, bins, rate, diff in rows:
        lines.append(
            f"| {what} | {bins} | {rate:,.0f} | {1000 / rate:.2f} | {rate / hf_rate:.1f}x | "
            f"{rate / knf_rate:.1f}x | {diff} |"
        )
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = "\n".join([
        START,
        "## Features: Kaldi filterbanks (`bench/features.py`)",
        "",
        f"Ten-second 16 kHz clips, {BATCH} different mixes of tones, chirp and noise. "
        f"Run {today}{' (--quick)' if args.quick else ''} on {machine()}.",
        "\"Model input\" is the whole path (mean removal, fbank, pad/cut to 1024, normalise), as "
        "HF's extractor does; kaldi-native-fbank computes the fbank only, at 80 bins (it refuses "
        "128 at 16 kHz), so compare it with the 80-bin rows. Max abs diff: against HF (128 bins) "
        "or knf (80 bins) on four clips, checked before timing.",
        "",
        *lines,
        "",
        f"Batched CPU model input: {batched_cpu_rate / hf_rate:.0f}x Hugging Face's extractor; "
        f"per-clip fbank {per_clip_80 / knf_rate:.1f}x kaldi-native-fbank."
        + ("" if torch.cuda.is_available() else " No GPU in this run."),
        END,
    ])  # fmt: skip
    print(section)
    if not args.no_write:
        write_section(args.output, section, START, END)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
