"""Training speed: a base384 step against Hugging Face's, and accuracy after the same time budget.

One command (``.venv/bin/python bench/train.py``, also run by ``make bench``; about ten
minutes on an idle 2-core CPU with the defaults, part 1 half of it).

1. **A training step** (forward, BCE, backward, fused Adam: :func:`ast_audio.train.loop.train_step`,
   the trainer's own) of base384 (strides 10/10, 1024 frames, 527 classes; ``--steps-clips``
   clips) for Hugging Face's ``ASTForAudioClassification`` and ours holding the same random
   weights (exported with ``export_hf``, logits compared first), fp32; then ours with
   structured patchout (PaSST): a third of the frequency rows and half, resp. a third, of
   the time columns dropped. bf16 autocast rows only where the CPU has bf16 matrix units
   (AMX or AVX512-BF16, read from ``/proc/cpuinfo``; elsewhere bf16 is emulated and slower
   than fp32, so timing it says nothing about training).
2. **Accuracy after the same training time**: a tiny AST (the demo's: tiny224, 2
   blocks, 16x16 patches) trained from scratch on the project's synthetic sounds
   (:mod:`ast_audio.audio.synth`) of random length (``--min-seconds``..3 s, padded to 300 frames,
   as a dataset of varied clips is), by the trainer's own epoch loop (:class:`ast_audio.train.loop.Run`),
   scored on held-out clips at full length after each of the ``--budget`` marks (seconds of
   training, default 60 then 180: a short budget favours whatever does more steps, a longer
   one shows whether it also learns as well; scoring is not counted). Training time is CPU
   seconds of the run's process by default (``--clock wall`` for wall-clock: on a shared
   machine wall-clock time favours whichever row ran while the other jobs were idle), in
   whole epochs: a row may run over a mark, and its seconds are given. Plain,
   ``--patchout-f 0.33 --patchout-t 0.5``, ``--bucket-by-length``, and both, in two
   scenarios (``--scenarios``): **varied** clips padded to the input, cut into 16x16
   patches (bucketing's case), and **long** clips that fill it, cut into AST's overlapping
   patches (strides 10: attention a larger share of the step, patchout's case; no
   bucketing rows, the clips being of one length). Each run on
   one thread, so that CPU time counts work (two threads on a loaded 2-core machine spent
   four times the CPU time per epoch, waiting on each other); ``--jobs 2`` runs two of them
   side by side in their own processes. ``--no-step``: this part alone (``--no-budget``:
   part 1 alone). The same seed, data and initial weights for every row; ``--seeds``
   repeats with others.

Writes its tables between the ``bench:train`` markers of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from common import BENCHMARKS, cpu_has_bf16_units, machine, publish, timed, training_step

from ast_audio.audio.synth import CLASSES, SAMPLE_RATE, make_clip
from ast_audio.base.distributed import Dist
from ast_audio.data import read_datafile, write_datafile
from ast_audio.data.dataset import AudioDataset, norm_stats
from ast_audio.data.labels import LabelTable, write_label_table
from ast_audio.features import InputContract
from ast_audio.model import ASTModel, draw_patchout, patch_grid
from ast_audio.train import Run
from ast_audio.train.config import TrainConfig, patchout_drops

START, END = "<!-- bench:train:start -->", "<!-- bench:train:end -->"
PATCHOUTS = [(0.33, 0.5), (0.33, 0.33)]  # (rows, columns) dropped: PaSST keeps about 2/3 and 1/2..2/3
SMALL = dict(model_size="tiny224", depth=2, fstride=16, tstride=16, audio_length=300, imagenet_pretrain=False,
             loss="CE", metrics="acc", lrscheduler_start=1000, lr=1e-3, progress=False)  # fmt: skip
# What the budget counts. CPU time of this process (all its threads) by default: on a shared
# machine, wall-clock time would favour whichever row ran while the others' jobs were idle.
CLOCKS = {"cpu": "CPU time of the process, all threads", "wall": "wall-clock time"}
# Where each option should pay: "varied", short clips of mixed length padded to the input
# (bucketing's case), and "long", clips that fill the input cut into AST's overlapping
# patches (stride 10: 12x29 = 348 of them), where attention is a larger share of the step
# (patchout's case, as in PaSST's 10-second AudioSet clips).
SCENARIOS = {
    "varied": {"strides": 16, "whole": False},
    "long": {"strides": 10, "whole": True},
}
WAYS = [
    ("plain", {}),
    ("patchout 0.33 / 0.5", dict(patchout_f=0.33, patchout_t=0.5)),
    ("bucket by length", dict(bucket_by_length=True)),
    ("patchout + bucket by length", dict(patchout_f=0.33, patchout_t=0.5, bucket_by_length=True)),
]


def step_rows(args) -> tuple[list[str], dict]:
    """Part 1: the training step, Hugging Face against ours, with and without patchout."""
    from transformers import ASTForAudioClassification

    from ast_audio import load_model
    from ast_audio.checkpoints import export_hf

    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="ast-bench-train-"))
    ours = ASTModel(label_dim=527, input_tdim=args.frames, imagenet_pretrain=False, verbose=False,
                    model_size=args.model_size, depth=args.depth)  # fmt: skip
    with torch.no_grad():  # move LayerNorms and biases off their init, as trained weights are
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    export_hf(ours, work / "hf")
    hf = ASTForAudioClassification.from_pretrained(work / "hf").train()
    ours = load_model(work / "hf").train()
    x = torch.randn(args.step_clips, args.frames, 128)
    target = torch.zeros(args.step_clips, 527)
    target[:, :3] = 1.0
    with torch.no_grad():
        parity = float((hf.eval()(input_values=x).logits - ours.eval()(x)).abs().max())
    hf.train()
    ours.train()
    grid = ours.config.grid
    precisions = [("fp32", None)] + ([("bf16 autocast", torch.bfloat16)] if cpu_has_bf16_units() else [])
    seconds: dict[tuple[str, str], float] = {}
    for label, dtype in precisions:
        seconds[("Hugging Face", label)] = timed(
            training_step(hf, lambda v: hf(input_values=v).logits, x, target, dtype), args.repeats
        )
        seconds[("ours", label)] = timed(training_step(ours, ours, x, target, dtype), args.repeats)
        for spec in PATCHOUTS:
            drop_f, drop_t = patchout_drops(spec, grid)
            kept = draw_patchout(grid, drop_f, drop_t, torch.Generator().manual_seed(0))
            name = (f"ours + patchout (keeps {grid[0] - drop_f} of {grid[0]} rows, {grid[1] - drop_t} of {grid[1]} "
                    f"columns: {(grid[0] - drop_f) * (grid[1] - drop_t)} of {grid[0] * grid[1]} patches)")  # fmt: skip
            step = training_step(ours, lambda v, kept=kept: ours(v, patchout=kept), x, target, dtype)
            seconds[(name, label)] = timed(step, args.repeats)
        for (who, what), sec in seconds.items():
            if what == label:
                print(f"training step {label}, {who}: {sec:.3g} s", file=sys.stderr, flush=True)
    base = seconds[("Hugging Face", "fp32")]
    lines = [
        f"Training step (forward, BCE, backward, fused Adam: the trainer's `train_step` for both models): "
        f"{ours.config.model_size}, strides {ours.config.fstride}/{ours.config.tstride}, {args.step_clips} clips x "
        f"{args.frames} frames, 527 classes, the same random weights in both (max logit difference before timing "
        f"{parity:.1e}); best of {args.repeats} after a warm-up.",
        "",
        "| model | precision | s/step | clips/s | vs HF fp32 |",
        "| --- | --- | ---: | ---: | ---: |",
        *[f"| {who} | {label} | {sec:.3g} | {args.step_clips / sec:.3g} | {base / sec:.2f}x |"
          for (who, label), sec in seconds.items()],
    ]  # fmt: skip
    if len(precisions) == 1:
        lines += ["", "bf16: not timed: this CPU has no bf16 matrix units (no AMX, no AVX512-BF16), bf16 is emulated "
                  "there and slower than fp32."]  # fmt: skip
    return lines, seconds


def write_clips(root: Path, per_class: int, seed: int, min_seconds: float) -> Path:
    """``per_class`` clips of each synthetic class, each of a random length in ``min_seconds``..3 s."""
    rng = np.random.default_rng(seed)
    (root / "audio").mkdir(parents=True)
    rows = []
    for target, (name, _) in enumerate(CLASSES):
        for i in range(per_class):
            path = root / "audio" / f"{target}_{i}.wav"
            sf.write(path, make_clip(target, rng, float(rng.uniform(min_seconds, 3.0))), SAMPLE_RATE, subtype="PCM_16")
            rows.append((path, [name]))
    return write_datafile(root / "data.json", rows)


def train_one_way(cfg: TrainConfig, marks: list[float], clock_name: str) -> tuple[list[float], list[float], list[int]]:
    """Train ``cfg`` on one thread until each of ``marks`` seconds of training, scoring the held-out set at each.

    Returns the accuracy, the training seconds and the epochs at every mark. Scoring is not
    counted as training time. Run in a worker process by ``--jobs``, so it sets its own threads.
    """
    logging.getLogger("ast_audio").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    run = Run.build(cfg, torch.device("cpu"), Dist(), Path(cfg.exp_dir))
    clock = time.process_time if clock_name == "cpu" else time.perf_counter
    trained, epoch = 0.0, 0
    accuracies, times, epochs = [], [], []
    for mark in marks:
        while trained < mark:
            began = clock()
            epoch += 1
            run.sampler.set_epoch(epoch)
            run.train_one_epoch(epoch)
            trained += clock() - began
        scores = run.predict(run.model, run.val_set).scores
        accuracies.append(float(np.mean(scores.argmax(1) == run.val_set.datafile.targets().argmax(1))))
        times.append(trained)
        epochs.append(epoch)
    return accuracies, times, epochs


def budget_rows(args, work: Path, scenario: str) -> list[str]:
    """Part 2: held-out accuracy of each way of training after the same training time, in ``scenario``."""
    names = [name for name, _ in CLASSES]
    labels = write_label_table(LabelTable(names, names), work / "labels.csv")
    whole = SCENARIOS[scenario]["whole"]
    shortest = 3.0 if whole else args.min_seconds
    small = {**SMALL, "fstride": SCENARIOS[scenario]["strides"], "tstride": SCENARIOS[scenario]["strides"]}
    ways = [w for w in WAYS if not (whole and "bucket_by_length" in w[1])]  # one length: nothing to bucket
    work = work / scenario
    train_file = write_clips(work / "train", args.clips, 0, shortest)
    test_file = write_clips(work / "test", args.test_clips, 1, shortest)
    contract = InputContract(target_length=SMALL["audio_length"])
    train_set = AudioDataset(read_datafile(train_file, labels), contract)
    mean, std = norm_stats(train_set)
    frames = train_set.natural_frames()
    marks = args.budget
    jobs = []
    for index, (_, way) in enumerate(ways):
        for seed in range(args.seeds):
            cfg = TrainConfig(data_train=str(train_file), data_val=str(test_file), label_csv=str(labels),
                              n_class=len(CLASSES), exp_dir=str(work / f"{index}-{seed}"), seed=seed,
                              batch_size=args.batch_size, dataset_mean=mean, dataset_std=std, n_epochs=10_000,
                              **small, **way)  # fmt: skip
            jobs.append((index, cfg))
    # One thread per run: the CPU-time budget then counts work, not the spinning of a thread
    # waiting for its partner on a shared machine (measured: 4x the CPU time per epoch with 2
    # threads on a loaded 2-core machine). ``--jobs`` runs that many of them side by side.
    if args.jobs == 1:
        threads = torch.get_num_threads()
        done = [train_one_way(cfg, marks, args.clock) for _, cfg in jobs]
        torch.set_num_threads(threads)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            done = list(pool.map(train_one_way, [cfg for _, cfg in jobs], [marks] * len(jobs),
                                 [args.clock] * len(jobs)))  # fmt: skip
    results = []
    for index, (title, way) in enumerate(ways):
        runs = [got for (i, _), got in zip(jobs, done, strict=True) if i == index]
        accuracies = np.array([r[0] for r in runs])  # (seeds, marks)
        times = np.array([r[1] for r in runs])
        epochs = np.array([r[2] for r in runs])
        results.append((title, way, accuracies, times, epochs))
        print(f"{scenario}, {title}: " + ", ".join(f"{a:.1%} after {e:.1f} epochs in {t:.0f} s" for a, e, t in
                                       zip(accuracies.mean(0), epochs.mean(0), times.mean(0), strict=True)),
              file=sys.stderr, flush=True)  # fmt: skip
    grid = patch_grid(128, small["audio_length"], small["fstride"], small["tstride"])
    spread = "" if args.seeds == 1 else " (min..max over seeds)"
    budget = " then ".join(f"{m:g}" for m in marks)
    lines = [
        f"Accuracy after the same training time, **{scenario}** clips: tiny224, 2 blocks, "
        f"{small['fstride']}x{small['tstride']} strides ({grid[0]}x{grid[1]} = {grid[0] * grid[1]} patches), "
        f"{SMALL['audio_length']} frames, trained from scratch on the {len(CLASSES)} synthetic classes, "
        f"{args.clips} clips each of {shortest:g}..3 s (on average {np.mean(frames):.0f} of "
        f"{SMALL['audio_length']} frames are audio), batch {args.batch_size}, CE, lr 1e-3, no augmentation, one thread "
        f"per run, {args.jobs} run(s) side by side; held-out accuracy of {args.test_clips * len(CLASSES)} clips scored at "
        f"full length after {budget} s of training ({CLOCKS[args.clock]}; whole epochs, so a row may run over: its "
        f"seconds are given; scoring is not counted); {args.seeds} seed(s) per row.",
        "",
        "| way | " + " | ".join(f"after {m:g} s: epochs, s, accuracy{spread}" for m in marks) + " |",
        "| --- |" + " ---: |" * len(marks),
    ]
    for title, way, accuracies, times, epochs in results:
        flags = " ".join(f"`{k}={v}`" for k, v in way.items()) or "defaults"
        cells = []
        for j in range(len(marks)):
            acc = accuracies[:, j]
            extra = "" if len(acc) == 1 else f" ({acc.min():.1%}..{acc.max():.1%})"
            cells.append(f"{epochs[:, j].mean():.1f} ep, {times[:, j].mean():.0f} s, **{acc.mean():.1%}**{extra}")
        lines.append(f"| {title} ({flags}) | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-size", default="base384", help="of the step timing (1)")
    parser.add_argument("--depth", type=int, default=12, help="of the step timing (1)")
    parser.add_argument("--frames", type=int, default=1024, help="of the step timing (1)")
    parser.add_argument("--step-clips", type=int, default=2, help="clips per timed step (1)")
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per row, best kept (1)")
    parser.add_argument("--budget", type=_marks, default=[60.0, 180.0],
                        help="seconds of training per row, or several (comma-separated) to score at each (2)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu", help="what the budget counts (2)")
    parser.add_argument("--clips", type=int, default=40, help="training clips per class (2)")
    parser.add_argument("--test-clips", type=int, default=10, help="held-out clips per class (2)")
    parser.add_argument("--min-seconds", type=float, default=0.5, help="shortest clip (2)")
    parser.add_argument("--batch-size", type=int, default=8, help="(2)")
    parser.add_argument("--seeds", type=int, default=1, help="(2)")
    parser.add_argument("--scenarios", type=lambda t: t.split(","), default=list(SCENARIOS),
                        help=f"of part 2, comma-separated: {', '.join(SCENARIOS)} (the notes at SCENARIOS)")
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side, one thread each (2)")
    parser.add_argument("--no-step", action="store_true", help="part 2 only")
    parser.add_argument("--no-budget", action="store_true", help="part 1 only")
    parser.add_argument("--note", default="", help="how loaded the machine was, for the text")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--output", type=Path, default=BENCHMARKS)
    args = parser.parse_args(argv)
    if unknown := set(args.scenarios) - set(SCENARIOS):
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}")
    logging.getLogger("ast_audio").setLevel(logging.WARNING)

    began = time.time()
    steps = [] if args.no_step else [*step_rows(args)[0], ""]
    with tempfile.TemporaryDirectory() as tmp:
        budget = [] if args.no_budget else [
            line for scenario in args.scenarios for line in [*budget_rows(args, Path(tmp), scenario), ""]][:-1]
    minutes = (time.time() - began) / 60
    note = f" {args.note.rstrip('.')}." if args.note else ""
    lines = [
        START,
        "## Training speed: patchout and length bucketing (`bench/train.py`)",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}, {minutes:.1f} minutes in all.{note}",
        "",
        *steps,
        *budget,
        END,
    ]
    return publish(lines, args, START, END)


def _marks(text: str) -> list[float]:
    marks = [float(m) for m in text.split(",")]
    if any(m <= 0 for m in marks) or marks != sorted(marks):
        raise argparse.ArgumentTypeError(f"budget marks must be positive and increasing: {text}")
    return marks


if __name__ == "__main__":
    sys.exit(main())
