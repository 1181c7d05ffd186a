"""Distillation: a small student against its teacher and against itself without a teacher.

One command (``.venv/bin/python bench/distill.py [--quick] [--cache DIR]``). On each dataset
(the project's synthetic sounds, :mod:`ast_audio.audio.synth`; and the real recordings of
``bench/real.py``, :mod:`realsets`, read from ``CACHE/sets/<name>-s0`` where they are laid out
already, else fetched), the training side is split into labelled clips, clips whose labels
are hidden (the "unlabelled" folder) and validation clips (the real sets: by whole group);
the test side is held out. Four models, each the best-on-validation epoch, through the
library's own trainer and ``distill``:

1. **teacher**: a tiny224 AST (``--teacher-depth`` blocks, AST's overlapping 16x16 patches at
   strides 10, pooling the patch tokens) trained on the labelled clips;
2. **student, distilled**: the ``--student`` preset taught by the teacher on the labelled clips;
3. **student, labels alone**: the same preset, the same settings and epochs, plain ``train``;
4. **student, distilled + unlabelled**: as 2, plus the unlabelled folder.

All four train with the from-scratch preset's settings (``src/ast_audio/recipes/scratch.toml``,
what ``recipe folder`` trains offline: lr, batches, epochs and schedule, SpecAugment, the
clip-statistics branch; ``--no-clip-stats`` leaves the branch out), so the teacher is the
project's best recipe for a few hundred clips with a deeper, overlapping trunk, and each
student has the same branch, fitted on the labelled clips once it has trained.

Test accuracy (and mAP) of each; then, in separate processes with ATen's default CPU kernels
and with ``ATEN_CPU_CAPABILITY=avx2``, the forward pass's clips per second (fp32, batch
``--batch``, model input precomputed: the filterbanks cost the same for every model) of those
models, of a base384 AST (random weights: the size of the published AudioSet models) and of
Hugging Face's ``ASTForAudioClassification`` (fp32, the same architecture) on the same
input; FLOPs per clip (torch's FLOP counter) and the fraction of the CPU's fp32 matmul peak,
measured in the same process (a 2048x2048 matmul). A second table gives every student preset,
base384 and Hugging Face's AST on a 10-s window (1024 frames): parameters, FLOPs and
clips per second, and the real-time factor of live tagging (seconds of compute per second
of audio). Writes its tables between the ``bench:distill`` markers of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import realsets
import torch
from common import BENCHMARKS, forward_flops, machine, publish, timed

from ast_audio.audio.synth import CLASSES, write_dataset
from ast_audio.checkpoints.load import load_model
from ast_audio.data.datafiles import read_datafile, write_datafile
from ast_audio.data.dataset import AudioDataset, norm_stats
from ast_audio.data.labels import LabelTable, read_label_csv, write_label_table
from ast_audio.features.contract import InputContract
from ast_audio.model.ast import ASTModel
from ast_audio.model.config import ASTConfig
from ast_audio.model.students import STUDENTS, student_config, student_cost
from ast_audio.train.config import TrainConfig, load_config_file
from ast_audio.train.distill import DistillConfig, distill
from ast_audio.train.evaluate import evaluate
from ast_audio.train.loop import train

START, END = "<!-- bench:distill:start -->", "<!-- bench:distill:end -->"
ROWS = ("teacher", "student, distilled", "student, labels alone", "student, distilled + unlabelled")
HF, BASE = "Hugging Face AST fp32 (base384 size)", "base384 AST (ours, random weights)"
SCRATCH = Path(__file__).resolve().parents[1] / "src" / "ast_audio" / "recipes" / "scratch.toml"
# What the preset sets that the bench does not take from it: the architecture (the teacher's
# and each student's own) and the loss and metric (single-label, set for every dataset here).
NOT_TAKEN = ("imagenet_pretrain", "audioset_pretrain", "model_size", "depth", "fstride", "tstride", "pool", "loss",
             "metrics")  # fmt: skip


# --------------------------------------------------------------------------- data


def _link(folder: Path, paths: list[Path]) -> Path:
    """A folder of symlinks to ``paths`` (unlabelled audio: no class folders)."""
    folder.mkdir(parents=True)
    for i, path in enumerate(paths):
        os.symlink(Path(path).resolve(), folder / f"{i:05d}_{Path(path).name}")
    return folder


def synthetic(work: Path, per_class: int) -> tuple[dict, str]:
    """The synthetic sounds, one second each: per class, 30% labelled, 30% unlabelled, 10%
    validation, 30% test."""
    data = write_dataset(work / "synth", per_class=per_class, seconds=1.0, seed=0)
    names = [CLASSES[c][0] for c in range(10)]
    sides: dict[str, list] = {"labelled": [], "unlabelled": [], "valid": [], "test": []}
    cut = np.cumsum([0.3, 0.3, 0.1, 0.3]) * per_class
    for target, name in enumerate(names):
        clips = sorted((data / "audio").glob(f"*-{target:03d}????-A-{target}.wav"), key=lambda p: p.name[2:])
        for i, clip in enumerate(clips):
            side = list(sides)[int(np.searchsorted(cut, i, side="right"))]
            sides[side].append((clip, [name]))
    files = _files(work / "synth-run", LabelTable(names, names), sides)
    return {**files, "frames": 100}, f"synthetic: 10 classes, {per_class} one-second clips a class"


def real(work: Path, cache: Path, name: str) -> tuple[dict, str]:
    """A real-recordings set (split 0): the test side as ``bench/real.py`` holds it out; the
    training side split by whole group into 50% labelled, 30% unlabelled, 20% validation."""
    folder = cache / "sets" / f"{name}-s0"
    sides = realsets.read_set(folder) if folder.exists() else realsets.build(realsets.SETS[name], cache, 0)
    rest, valid = realsets.split(sides["train"], 0.2, 1000)
    labelled, unlabelled = realsets.split(rest, 0.375, 2000)
    classes = sorted({c.label for c in sides["train"]})
    pick = {"labelled": labelled, "unlabelled": unlabelled, "valid": valid,
            "test": [c for c in sides["test"] if c.label in classes]}  # fmt: skip
    # each clip's group (kit, prompt, line) goes into the datafiles, as recipe folder writes it: the
    # clip-statistics fit cross-validates by group
    files = _files(work / f"{name}-run", LabelTable(classes, classes),
                   {k: [(c.path, [c.label], c.group) for c in v] for k, v in pick.items()})  # fmt: skip
    frames = realsets.frames_for([c.path for c in labelled])
    group = realsets.SETS[name].group_kind
    return {**files, "frames": frames}, (f"{name} (real recordings, held out by {group}): {len(classes)} classes, "
                                         f"{frames} frames")  # fmt: skip


def _files(folder: Path, labels: LabelTable, sides: dict[str, list]) -> dict:
    folder.mkdir(parents=True)
    files = {"labels": write_label_table(labels, folder / "labels.csv"), "counts": {}}
    for side, rows in sides.items():
        files["counts"][side] = len(rows)
        if side == "unlabelled":
            files[side] = _link(folder / "unlabelled", [row[0] for row in rows])
        else:
            files[side] = write_datafile(folder / f"{side}.json", rows)
    return files


# --------------------------------------------------------------------------- the four models


def models(files: dict, work: Path, args) -> dict[str, dict]:
    """Train the four models of :data:`ROWS`; each row's checkpoint, test scores and seconds."""
    frames = files["frames"]
    labelled = read_datafile(files["labelled"], _labels(files))
    mean, std = norm_stats(AudioDataset(labelled, InputContract(target_length=frames)))
    common = dict(data_val=str(files["valid"]), label_csv=str(files["labels"]), n_class=len(_labels(files)),
                  audio_length=frames, dataset_mean=mean, dataset_std=std, imagenet_pretrain=False, loss="CE",
                  metrics="acc", progress=False, amp="off", seed=0)  # fmt: skip
    preset = {k: v for k, v in load_config_file(SCRATCH).items() if k not in NOT_TAKEN}
    student = {**preset, "n_epochs": args.epochs, "clip_stats": args.clip_stats,
               "lrscheduler_start": max(1, min(preset["lrscheduler_start"], args.epochs * 2 // 3))}  # fmt: skip
    out: dict[str, dict] = {}

    def done(row: str, exp: Path, began: float) -> None:
        ckpt = exp / "models" / "best_audio_model.safetensors"
        stats = evaluate([ckpt], files["test"], files["labels"]).results[0][1]
        out[row] = {"checkpoint": ckpt, "acc": stats.acc, "mAP": stats.mAP, "seconds": time.perf_counter() - began}
        print(f"{row}: acc {stats.acc:.1%} mAP {stats.mAP:.3f} ({out[row]['seconds']:.0f} s)", file=sys.stderr)

    began, exp = time.perf_counter(), work / "teacher"
    train(TrainConfig(**common, **{**student, "n_epochs": args.teacher_epochs}, data_train=str(files["labelled"]),
                      exp_dir=str(exp), model_size="tiny224", depth=args.teacher_depth, fstride=10, tstride=10,
                      pool="mean"))  # fmt: skip
    done(ROWS[0], exp, began)
    teacher = out[ROWS[0]]["checkpoint"]
    for row, unlabelled in ((ROWS[1], []), (ROWS[3], [str(files["unlabelled"])])):
        began, exp = time.perf_counter(), work / row.replace(" ", "_").replace(",", "").replace("+", "and")
        settings = TrainConfig(**{**student, "exp_dir": str(exp), "data_val": str(files["valid"]), "amp": "off",
                                  "progress": False})  # fmt: skip
        distill(DistillConfig(teachers=[str(teacher)], student=args.student, data_train=str(files["labelled"]),
                              unlabelled=unlabelled, train=settings))  # fmt: skip
        done(row, exp, began)
    preset = STUDENTS[args.student]
    began, exp = time.perf_counter(), work / "labels_alone"
    train(TrainConfig(**common, **student, data_train=str(files["labelled"]), exp_dir=str(exp), fstride=16,
                      tstride=16, model_size=preset.model_size, depth=preset.depth, pool=preset.pool))  # fmt: skip
    done(ROWS[2], exp, began)
    return {row: out[row] for row in ROWS}


def _labels(files: dict) -> LabelTable:
    return read_label_csv(files["labels"])


# --------------------------------------------------------------------------- speed, in its own process


def matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    """fp32 GFLOP/s of a ``size``-cube matmul, best of ``repeats``: the CPU's measured peak."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size**3 / timed(lambda: a @ b, repeats) / 1e9


def _model(spec: dict) -> torch.nn.Module:
    if spec["kind"] == "checkpoint":
        return load_model(spec["path"]).eval()
    if spec["kind"] == "hf":
        from transformers import ASTConfig as HFConfig
        from transformers import ASTForAudioClassification

        torch.manual_seed(0)
        config = HFConfig(max_length=spec["frames"], num_mel_bins=128, num_labels=spec["classes"])
        return ASTForAudioClassification(config).eval()
    cfg = (student_config(spec["preset"], spec["classes"], 128, spec["frames"]) if spec["kind"] == "preset"
           else ASTConfig(label_dim=spec["classes"], input_tdim=spec["frames"]))  # fmt: skip
    torch.manual_seed(0)
    return ASTModel.from_config(cfg).eval()


def measure(specs: list[dict], batch: int, repeats: int, threads: int = 0) -> dict:
    """Clips per second and FLOPs of each model of ``specs``, and the matmul peak (this process,
    ``threads`` torch threads; 0: torch's default)."""
    if threads:
        torch.set_num_threads(threads)
    peak = matmul_peak()
    out = {"peak_gflops": peak, "capability": torch.backends.cpu.get_cpu_capability(), "models": [],
           "threads": torch.get_num_threads()}  # fmt: skip
    for spec in specs:
        model = _model(spec)
        x = torch.randn(spec.get("batch", batch), spec["frames"], 128)
        with torch.inference_mode():
            seconds = timed(lambda m=model, x=x: m(x), spec.get("repeats", repeats))
        flops = forward_flops(model, spec["frames"], 128)
        out["models"].append({**spec, "clips_s": len(x) / seconds, "flops": flops})
    return out


def measure_in_process(specs: list[dict], batch: int, repeats: int, avx2: bool, threads: int = 0) -> dict:
    """:func:`measure` in a fresh interpreter, with ATen's CPU kernels pinned to AVX2 where asked."""
    env = {**os.environ, **({"ATEN_CPU_CAPABILITY": "avx2"} if avx2 else {})}
    if not avx2:
        env.pop("ATEN_CPU_CAPABILITY", None)
    with tempfile.TemporaryDirectory() as tmp:
        spec_file, out_file = Path(tmp) / "specs.json", Path(tmp) / "out.json"
        spec_file.write_text(json.dumps({"specs": specs, "batch": batch, "repeats": repeats, "threads": threads},
                                        default=str))  # fmt: skip
        subprocess.run([sys.executable, __file__, "--measure", str(spec_file), str(out_file)], check=True, env=env,
                       cwd=Path(__file__).parent)  # fmt: skip
        return json.loads(out_file.read_text())


# --------------------------------------------------------------------------- tables


def _speed_cells(name: str, runs: list[dict]) -> list[str]:
    cells = []
    for run in runs:
        row = next(m for m in run["models"] if m["name"] == name)
        cells += [f"{row['clips_s']:.1f}", f"{row['clips_s'] * row['flops'] / 1e9 / run['peak_gflops']:.1%}"]
    return cells


def dataset_table(title: str, files: dict, rows: dict, runs: list[dict], batch: int) -> list[str]:
    counts = files["counts"]
    lines = [f"### {title}", "",
             f"{counts['labelled']} labelled, {counts['unlabelled']} unlabelled (labels hidden), {counts['valid']} "
             f"validation and {counts['test']} test clips; {files['frames']} frames a clip. Speed: batches of "
             f"{batch} clips.", "",
             "| model | test acc | test mAP | train s | GFLOP/clip | clips/s | of peak | clips/s (AVX2) | of peak (AVX2) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for row, result in rows.items():
        flops = next(m for m in runs[0]["models"] if m["name"] == row)["flops"]
        lines.append(f"| {row} | {result['acc']:.1%} | {result['mAP']:.3f} | {result['seconds']:.0f} | "
                     f"{flops / 1e9:.2f} | " + " | ".join(_speed_cells(row, runs)) + " |")  # fmt: skip
    for name in (BASE, HF):
        flops = next(m for m in runs[0]["models"] if m["name"] == name)["flops"]
        lines.append(f"| {name} | - | - | - | {flops / 1e9:.2f} | " + " | ".join(_speed_cells(name, runs)) + " |")
    speed = {m["name"]: m["clips_s"] for m in runs[0]["models"]}
    lines += ["", f"Student vs base384: {speed[ROWS[1]] / speed[BASE]:.1f}x the clips per second; vs Hugging Face "
              f"fp32: {speed[ROWS[1]] / speed[HF]:.1f}x (default kernels)."]  # fmt: skip
    return lines + [""]


def preset_table(runs: list[dict]) -> list[str]:
    lines = ["### Presets on a 10-s window (1024 frames x 128 bins, 527 classes)", "",
             "| model | parameters | GFLOP/clip | clips/s | of peak | real-time factor | clips/s (AVX2) | of peak (AVX2) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for spec in runs[0]["models"]:
        name = spec["name"]
        rtf = 1 / (spec["clips_s"] * 10.24)
        cells = _speed_cells(name, runs)
        lines.append(f"| {name} | {spec['parameters'] / 1e6:.1f}M | {spec['flops'] / 1e9:.1f} | {cells[0]} | {cells[1]} "
                     f"| {rtf:.3f} | {cells[2]} | {cells[3]} |")  # fmt: skip
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few clips and epochs, the synthetic set and drums")
    parser.add_argument("--cache", type=Path, default=realsets.DEFAULT_CACHE, help="bench/real.py's cache")
    parser.add_argument("--datasets", default="synthetic,drums,speech",
                        help="comma-separated: synthetic, " + ", ".join(realsets.SETS))  # fmt: skip
    parser.add_argument("--student", choices=list(STUDENTS), default="tiny4")
    parser.add_argument("--teacher-depth", type=int, default=6)
    parser.add_argument("--no-clip-stats", dest="clip_stats", action="store_false",
                        help="train the four models without the clip-statistics branch")  # fmt: skip
    parser.add_argument("--teacher-epochs", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=30, help="the students' epochs")
    parser.add_argument("--per-class", type=int, default=100, help="synthetic clips a class")
    parser.add_argument("--presets", default=",".join(STUDENTS), help="the presets of the 10-s table, comma-separated")
    parser.add_argument("--batch", type=int, default=8, help="clips a forward pass when timing")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads when timing (default: torch's own; 1 on a machine shared with other jobs)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--measure", nargs=2, type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--note", default="", help="a line under the title, e.g. about the machine's load")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--output", type=Path, default=BENCHMARKS)
    args = parser.parse_args(argv)
    if args.measure:
        spec = json.loads(args.measure[0].read_text())
        args.measure[1].write_text(json.dumps(measure(spec["specs"], spec["batch"], spec["repeats"], spec["threads"])))
        return 0
    if args.quick:
        args.teacher_depth, args.teacher_epochs, args.epochs, args.per_class, args.repeats = 2, 2, 2, 10, 1
        args.datasets = "synthetic,drums" if args.datasets == parser.get_default("datasets") else args.datasets
    logging.getLogger("ast_audio").setLevel(logging.WARNING)
    began = time.time()
    sections: list[str] = []
    avx2_note = "AVX2 columns: ATen's CPU kernels pinned with `ATEN_CPU_CAPABILITY=avx2` in a fresh process"
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for name in [s.strip() for s in args.datasets.split(",") if s.strip()]:
            if name == "synthetic":
                files, title = synthetic(work / name, args.per_class)
            else:
                try:
                    files, title = real(work / name, args.cache.expanduser(), name)
                except realsets.FetchError as err:
                    print(f"bench/distill.py: {err}", file=sys.stderr)
                    return 2
            rows = models(files, work / name / "runs", args)
            classes, frames = len(_labels(files)), files["frames"]
            specs = [{"name": row, "kind": "checkpoint", "path": str(r["checkpoint"]), "frames": frames}
                     for row, r in rows.items()]  # fmt: skip
            specs += [{"name": BASE, "kind": "base", "classes": classes, "frames": frames},
                      {"name": HF, "kind": "hf", "classes": classes, "frames": frames}]  # fmt: skip
            runs = [measure_in_process(specs, args.batch, args.repeats, avx2, args.threads) for avx2 in (False, True)]
            sections += dataset_table(title, files, rows, runs, args.batch)
        specs = [{"name": f"`{p}` student", "kind": "preset", "preset": p, "classes": 527, "frames": 1024,
                  "parameters": student_cost(p)[0], "batch": 1}
                 for p in STUDENTS if p in args.presets.split(",")]  # fmt: skip
        base_params = sum(p.numel() for p in ASTModel.from_config(ASTConfig()).parameters())
        specs += [{"name": BASE, "kind": "base", "classes": 527, "frames": 1024, "parameters": base_params,
                   "batch": 1, "repeats": 1},
                  {"name": HF, "kind": "hf", "classes": 527, "frames": 1024, "parameters": base_params, "batch": 1,
                   "repeats": 1}]  # fmt: skip
        presets = [measure_in_process(specs, 1, args.repeats, avx2, args.threads) for avx2 in (False, True)]
    minutes = (time.time() - began) / 60
    first = presets[0]
    branch = "its clip-statistics branch included" if args.clip_stats else "without its clip-statistics branch"
    trained = (f"Teacher: tiny224, {args.teacher_depth} blocks, strides 10, {args.teacher_epochs} epochs on the "
               f"labelled clips; students: `{args.student}`, {args.epochs} epochs; all four with the from-scratch "
               f"preset's settings (`scratch.toml`), {branch}. Test "
               "accuracy of the best-on-validation epoch. ") if sections else ""  # fmt: skip
    lines = [START, "## Distillation (`bench/distill.py`)", "", *([args.note, ""] if args.note else []),
             f"{'`--quick`: a smoke run, not a measurement of what distillation reaches. ' if args.quick else ''}"
             f"{trained}Speed: fp32 forward passes, best of {args.repeats}; the CPU's measured "
             f"fp32 matmul peak {first['peak_gflops']:.0f} GFLOP/s on the {first['threads']} timing threads (kernels "
             f"{first['capability']}), "
             f"{presets[1]['peak_gflops']:.0f} GFLOP/s pinned to AVX2. {avx2_note}. Run "
             f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}, {minutes:.1f} minutes in all; the machine may "
             "have been shared with other jobs, which slows every row alike only roughly.", "",
             *sections, *preset_table(presets), END]  # fmt: skip
    return publish(lines, args, START, END)


if __name__ == "__main__":
    sys.exit(main())
