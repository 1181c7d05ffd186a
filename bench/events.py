"""Sound event detection: event-based F1 of the demo's model on fresh scenes, and the
latency and real-time factor of live tagging (``AudioTagger.stream``).

    python bench/events.py --model runs/demo/exp/models/best_audio_model.safetensors \
        [--before OLD_MODEL] [--scenes 10] [--latency]

Scenes come from ``ast-audio synth --scenes`` with a seed the demo never used (its data
is seed 0 clips; these are 30-120 s recordings, seed 2026 by default): no one tuned on
them. Each model is run three ways and scored by sed_eval (event-based F1, collar 200 ms
on onsets and max(200 ms, 20%) on offsets; segment-based F1 in 1 s segments):
the earlier timeline default (10 s windows every 5 s, merged above 0.5), the earlier
timeline at 1 s / 0.25 s, and the frame detection that ``--timeline`` now does (0.5 s
windows every 0.1 s) with every class at 0.5 and with the checkpoint's calibrated event
thresholds (``make demo`` calibrates them on its own scenes, seed 5003), and the same at a
0.25 s hop (the live setting recommended for big models: its accuracy cost). PSDS
(sed_scores_eval, DCASE scenario 1) comes from the frame score tables, over every
threshold, so it does not depend on the thresholds.

``--latency`` streams ``--latency-seconds`` of scene audio through the tagger in 0.1 s
blocks as fast as possible for tiny (the demo's) and base384 in fp32 (one frame per
forward, and several), bf16 (only where the CPU has bf16 units: emulated bf16 is slower
than fp32 and not timed) and int8, at hops 0.1 and 0.25 s (random weights: the cost does
not depend on them; their event counts mean nothing), and reports the real-time factor
(compute seconds per audio second; under 1 is faster than real time) and the latency of
event starts (audio seconds between an event's onset and the moment the stream reports
it).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import BENCHMARKS, cpu_has_bf16_units, machine, publish

from ast_audio import ASTModel
from ast_audio.audio.synth import write_scenes
from ast_audio.infer import AudioTagger, EventChange, FrameScores
from ast_audio.infer.events import PostProcessing, detect_events
from ast_audio.infer.scenes import write_timeline_scores
from ast_audio.infer.scoring import (
    psds_of_scores,
    read_events,
    read_score_tables,
    score_events,
)

START, END = "<!-- bench:events:start -->", "<!-- bench:events:end -->"

WAYS = [
    ("earlier default: windows 10 s / 5 s, merged above 0.5", dict(method="windows", window=10.0, hop=5.0)),
    ("earlier timeline at 1 s / 0.25 s", dict(method="windows", window=1.0, hop=0.25)),
    ("frame detection, every class at 0.5", dict(threshold=0.5)),
    ("frame detection, calibrated thresholds (the `--timeline` default)", dict()),
    ("frame detection, hop 0.25 s, calibrated thresholds (live for big models)", dict(hop=0.25)),
]
CALIBRATED = WAYS[3][0]


def predict_tsv(tagger: AudioTagger, files: list[Path], out: Path, scores: Path | None = None, cache: dict | None = None,
                **kwargs) -> Path:  # fmt: skip
    """The events of ``files`` as a DCASE table (and their frame score tables under ``scores``).
    Frame detection at one hop computes its scores once (``cache``): the thresholds only
    change the post-processing, which is :func:`detect_events` on the same scores, as
    ``timeline`` does it."""
    frames = kwargs.get("method", "frames") == "frames"
    if frames and cache is not None and kwargs.get("hop") in cache:
        timelines = cache[kwargs.get("hop")]
        post = PostProcessing(threshold=kwargs.get("threshold"))
        grid = tagger.frame_grid(kwargs.get("window"), kwargs.get("hop"))
        for tl in timelines:
            tl.events = detect_events(tl.scores, grid.hop, tagger.labels, post, duration=tl.duration,
                                      calibrated=tagger.thresholds, ignore=tagger.ignored)  # fmt: skip
    else:
        timelines = list(tagger.timeline([str(f) for f in files], **kwargs))
        if frames and cache is not None:
            cache[kwargs.get("hop")] = timelines
    with open(out, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(["filename", "onset", "offset", "event_label"])
        for tl in timelines:
            writer.writerows(tl.tsv_rows())
            if scores is not None:
                write_timeline_scores(tl, scores, tagger.ignored)
    return out


def detection(args, folder: Path) -> list[str]:
    scenes = write_scenes(folder / "scenes", count=args.scenes, seconds=(args.min_seconds, args.max_seconds),
                          seed=args.seed)  # fmt: skip
    files = sorted((scenes / "audio").glob("*.wav"))
    ref = scenes / "reference.tsv"
    hours = sum(float(r.split("\t")[1]) for r in (scenes / "durations.tsv").read_text().splitlines()[1:]) / 3600
    events = len((scenes / "reference.tsv").read_text().splitlines()) - 1
    lines = [
        f"{len(files)} fresh scenes (`synth --scenes`, seed {args.seed}, {args.min_seconds:.0f}-{args.max_seconds:.0f} s, "
        f"{hours * 60:.1f} minutes, {events} reference events, about 15% overlapping); scored by sed_eval.",
        "",
        "| model | how | event F1 | event ER | segment F1 | PSDS (frame scores) | PSDS (the events alone) "
        "| events predicted | s per audio minute |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    models = [("demo model (11 classes: 10 sounds + background)", args.model)]
    if args.before:
        models.insert(0, ("earlier demo model", args.before))
    results = {}
    reference = read_events(ref)
    durations = {r.split("\t")[0].rsplit(".", 1)[0]: float(r.split("\t")[1])
                 for r in (scenes / "durations.tsv").read_text().splitlines()[1:]}  # fmt: skip
    for name, path in models:
        tagger = AudioTagger(path, device="cpu", batch_size=32, precision="fp32")  # the reference figures
        cache: dict = {}
        compute: dict = {}
        calibrated = "calibrated" if tagger.thresholds is not None else "NOT calibrated: 0.5"
        for how, kwargs in WAYS:
            frames = kwargs.get("method", "frames") == "frames"
            tables = folder / f"scores{len(results)}" if frames else None
            shared = frames and kwargs.get("hop") in cache
            started = time.perf_counter()
            pred = predict_tsv(tagger, files, folder / f"pred{len(results)}.tsv", tables, cache, **kwargs)
            seconds = compute[kwargs.get("hop")] if shared else time.perf_counter() - started
            if frames:
                compute[kwargs.get("hop")] = seconds  # the rows at one hop share their scores' compute
            s = score_events(ref, pred, durations=scenes / "durations.tsv")
            psds = psds_of_scores(read_score_tables(tables), reference, durations)[0] if frames else None
            results[(name, how)] = s
            lines.append(f"| {name} | {how.replace('calibrated', calibrated) if 'calibrated' in how else how} | "
                         f"{s.event_f1:.3f} | {s.event_error_rate:.3f} | {s.segment_f1:.3f} | "
                         f"{'' if psds is None else f'{psds:.3f}'} | {s.psds:.3f} | "
                         f"{s.predicted_events} | {seconds / (hours * 60):.2f} |")  # fmt: skip
            print(lines[-1], file=sys.stderr, flush=True)
    final = results[(models[-1][0], CALIBRATED)]
    fixed = results[(models[-1][0], WAYS[2][0])]
    slow = results[(models[-1][0], WAYS[4][0])]
    before = [results[(models[-1][0], how)].event_f1 for how, _ in WAYS[:2]]
    lines += ["", f"Before and after, same model and scenes: the earlier `--timeline` scored event F1 {before[0]:.3f} "
              f"(10 s / 5 s windows) and {before[1]:.3f} (1 s / 0.25 s); the frame detection {fixed.event_f1:.3f} "
              f"with every class at 0.5 and {final.event_f1:.3f} with the thresholds `make demo` calibrated on its "
              "own scenes, " + ("meeting" if final.event_f1 >= 0.5 else "short of") + " the goal of 0.5. "
              f"At a 0.25 s hop: {slow.event_f1:.3f} (the accuracy cost of the live setting for big models)."]  # fmt: skip
    worst = sorted(final.class_wise_event_f1.items(), key=lambda kv: kv[1])
    lines += ["Class-wise event F1 of the demo model with frame detection (calibrated): "
              + ", ".join(f"{k} {v:.2f}" for k, v in sorted(final.class_wise_event_f1.items())) + "."]  # fmt: skip
    lines.append(f"Weakest: {worst[0][0]} ({worst[0][1]:.2f}).")
    return lines


def stream_figures(tagger: AudioTagger, wave: np.ndarray, rate: int, group: int, hop: float = 0.1,
                   block: float = 0.1) -> tuple[float, float, float, int]:  # fmt: skip
    """(real-time factor, CPU seconds per audio second, mean start latency in seconds, start events)
    of streaming ``wave``."""
    size = round(block * rate)
    received = {"samples": 0}

    def blocks():
        for i in range(0, len(wave), size):
            received["samples"] = min(len(wave), i + size)
            yield wave[i : i + size]

    latencies, compute = [], 0.0
    started, cpu = time.perf_counter(), time.process_time()
    for item in tagger.stream(blocks(), rate, hop=hop, frames_per_call=group):
        if isinstance(item, EventChange) and item.kind == "start":
            # audio that had to arrive before the start was known, then the compute to get there
            latencies.append(received["samples"] / rate - item.time)
        elif isinstance(item, FrameScores):
            pass
    compute, cpu = time.perf_counter() - started, time.process_time() - cpu
    seconds = len(wave) / rate
    return compute / seconds, cpu / seconds, float(np.mean(latencies)) if latencies else float("nan"), len(latencies)


def latency(args, folder: Path) -> list[str]:
    scenes = write_scenes(folder / "lat", count=1, seconds=(args.latency_seconds,) * 2, seed=args.seed + 1)
    import soundfile as sf

    wave, rate = sf.read(next((scenes / "audio").glob("*.wav")), dtype="float32")
    threads = torch.get_num_threads()
    lines = [
        "",
        f"Live tagging (`AudioTagger.stream`, 0.1 s blocks, 0.5 s windows, default post-processing), "
        f"{args.latency_seconds:.0f} s of scene audio streamed as fast as possible on {threads} threads. "
        "Real-time factor = wall-clock compute seconds per audio second (under 1: faster than real time); CPU = "
        "CPU seconds the process used per audio second, all threads together, which other programs on the "
        "machine inflate much less than the wall clock (load average before and after each row). Start latency = "
        "audio that had arrived when an event's start was reported, minus its onset (window half-width + the "
        "median filter's look-ahead + min duration + the frames waiting for their call); at a real-time pace add "
        "the compute of one call. base384 has random weights (527 classes): its cost does not depend on them, "
        "its event counts mean nothing.",
        "",
        "| model | precision | hop (s) | frames per call | real-time factor | CPU s per audio s | frames per second "
        "| start latency (audio s) | starts | load average |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    configs = [("tiny (the demo's)", args.model, "fp32", 0.1, 1)]
    base = ASTModel(label_dim=527, imagenet_pretrain=False, audioset_pretrain=False, model_size="base384")
    configs += [("base384", base, "fp32", 0.1, 1), ("base384", base, "fp32", 0.1, 10), ("base384", base, "bf16", 0.1, 10),
                ("base384", base, "int8", 0.1, 10), ("base384", base, "fp32", 0.25, 4),
                ("base384", base, "int8", 0.25, 4)]  # fmt: skip
    for name, model, precision, hop, group in configs:
        if precision == "bf16" and not cpu_has_bf16_units():
            lines.append(f"| {name} | bf16 | {hop} | {group} | not timed: this CPU has no bf16 units (bf16 is emulated, "
                         "slower than fp32) | | | | | |")  # fmt: skip
            continue
        tagger = AudioTagger(model, device="cpu", precision=precision)
        load = os.getloadavg()[0]
        rtf, cpu, lat, starts = stream_figures(tagger, wave, rate, group, hop)
        lines.append(f"| {name} | {precision} | {hop} | {group} | {rtf:.3f} | {cpu:.3f} | {1 / hop / rtf:.1f} | {lat:.2f} | "
                     f"{starts} | {load:.1f}-{os.getloadavg()[0]:.1f} |")  # fmt: skip
        print(lines[-1], file=sys.stderr, flush=True)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="runs/demo/exp/models/best_audio_model.safetensors")
    parser.add_argument("--before", default=None, help="an earlier demo model, scored the same way")
    parser.add_argument("--scenes", type=int, default=10)
    parser.add_argument("--min-seconds", type=float, default=30.0)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--latency", action="store_true", help="also the live tagging figures")
    parser.add_argument("--latency-only", action="store_true", help="only the live tagging figures (printed, not written)")
    parser.add_argument("--latency-seconds", type=float, default=30.0)
    parser.add_argument("--keep-latency", action="store_true",
                        help="keep the live tagging lines already in --output (measure the detection only)")  # fmt: skip
    parser.add_argument("--output", type=Path, default=BENCHMARKS)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        lines = [START, "## Sound events: detection and live tagging (`bench/events.py`)", "", f"Machine: {machine()}; load average {os.getloadavg()[0]:.1f} when it started (a shared machine: "
                 "other programs ran beside it, so its seconds are upper bounds).", ""]
        if args.latency_only:
            for line in latency(args, folder):
                print(line)
            return 0
        lines += detection(args, folder)
        if args.latency:
            lines += latency(args, folder)
        elif args.keep_latency:
            text = args.output.read_text()
            section = text[text.index(START) : text.index(END)].splitlines()
            live = next(i for i, line in enumerate(section) if line.startswith("Live tagging"))
            lines += [""] + section[live:]
        lines.append(END)
    return publish(lines, args, START, END)


if __name__ == "__main__":
    sys.exit(main())
