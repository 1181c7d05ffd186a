"""Open-set recognition: how well a model trained on some classes says "none of these" for the others.

One command (``.venv/bin/python bench/openset.py``; about half an hour on 2 CPU cores). The project's
synthetic sounds (:mod:`ast_audio.audio.synth`, one-second clips) are split by class into
``--known`` classes a tiny AST learns (from scratch, with ``recipe folder``'s from-scratch
preset, ``recipes/scratch.toml``) and the remaining classes it never sees. Each rotation shifts which classes are known, so no figure
rests on one split. For each rotation:

1. train on the known classes (``--train-clips`` per class, ``--valid-clips`` for validation:
   the best epoch is kept on them);
2. calibrate each open-set score (:mod:`ast_audio.infer.openset`: ``max_prob``, ``energy``) on
   the validation clips, at the true-positive rate ``--tpr``, as ``ast-audio calibrate
   --open-set`` does;
3. score ``--test-clips`` held-out clips per known class and as many of every unseen class:
   the AUROC of the knownness (known against unseen), the share of known test clips kept
   known, the share of unseen clips answered "unknown", and the closed-set accuracy.

Each rotation trains twice: on the known classes only, and with the synthetic background
noise as one more class that the checkpoint names as its none label (what ``recipe folder``
does with a background folder), so that a top prediction of it answers "unknown" too.

Writes its table between the ``bench:openset`` markers of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import tomllib
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from common import BENCHMARKS, ROOT, machine, publish

from ast_audio import load_model, save_checkpoint
from ast_audio.audio.synth import BACKGROUND, CLASSES, write_dataset
from ast_audio.data import read_datafile, write_datafile
from ast_audio.data.dataset import AudioDataset, norm_stats
from ast_audio.data.labels import LabelTable, write_label_table
from ast_audio.features import InputContract
from ast_audio.infer import AudioTagger
from ast_audio.infer.openset import DEFAULT_SCORE, SCORES, OpenSet, auroc, choose_threshold, probe
from ast_audio.train import train
from ast_audio.train.config import TrainConfig

START, END = "<!-- bench:openset:start -->", "<!-- bench:openset:end -->"
SCRATCH = ROOT / "src" / "ast_audio" / "recipes" / "scratch.toml"  # the from-scratch preset: the model and its training
VARIANTS = ("the known classes", "the known classes + background (none label)")


def preset() -> dict:
    """The from-scratch preset's training settings, for one-second clips."""
    with open(SCRATCH, "rb") as fh:
        return {**tomllib.load(fh)["train"], "audio_length": 100, "progress": False}


def clips_of(data: Path, target: int) -> list[Path]:
    """The clips of class ``target`` of :func:`write_dataset`, in the order they were drawn."""
    return sorted((data / "audio").glob(f"*-{target:03d}????-A-{target}.wav"), key=lambda p: p.name[2:])


def rotation(data: Path, out: Path, known: list[int], background: bool, counts: dict[str, int]) -> dict:
    """Datafiles of the known classes (and the background) for train/valid/test, and the unseen clips."""
    targets = known + ([len(CLASSES)] if background else [])
    names = [CLASSES[c][0] if c < len(CLASSES) else BACKGROUND for c in targets]
    files = {"labels": write_label_table(LabelTable(names, names), out / "labels.csv"), "names": names}
    rows: dict[str, list] = {name: [] for name in counts}
    for target, name in zip(targets, names, strict=True):
        start = 0
        for split, count in counts.items():
            rows[split] += [(p, [name]) for p in clips_of(data, target)[start : start + count]]
            start += count
    for split, items in rows.items():
        files[split] = write_datafile(out / f"{split}.json", items)
    unseen = [c for c in range(len(CLASSES)) if c not in known]
    files["unseen"] = [p for c in unseen for p in clips_of(data, c)[: counts["test"]]]
    for split in ("valid", "test"):  # the clips of the known classes; the background's are not "known"
        files[f"known_{split}"] = [(p, labels[0]) for p, labels in rows[split] if labels[0] != BACKGROUND]
    return files


def measure(checkpoint: Path, files: dict, tpr: float, none_label: str | None) -> dict[str, dict]:
    """Each score's calibration on the validation clips and its figures on the test clips; with a
    none label, also what the none label alone answers."""
    out = {}
    for score in SCORES:
        tagger = AudioTagger(checkpoint, device="cpu", precision="fp32", open_set=probe(score))
        valid = [p.open_set_score for p in tagger.predict([p for p, _ in files["known_valid"]], top_k=1)]
        known = tagger.predict([p for p, _ in files["known_test"]], top_k=1)
        unseen = tagger.predict(files["unseen"], top_k=1)
        none = None if none_label is None else tagger.labels.index(none_label)
        ways = {score: OpenSet(score, choose_threshold(valid, tpr), tpr, none)}
        if none is not None and score == SCORES[-1]:
            ways["none label alone"] = OpenSet(none_index=none)
        for name, decision in ways.items():

            def is_known(p, decision=decision) -> bool:
                return bool(decision.known(p.open_set_score, int(np.argmax(p.scores))))

            out[name] = {
                "auroc": auroc([p.open_set_score for p in known], [p.open_set_score for p in unseen])
                if decision.threshold is not None else None,
                "kept": float(np.mean([is_known(p) for p in known])),
                "caught": float(np.mean([not is_known(p) for p in unseen])),
                "accuracy": float(np.mean([p.labels[0][0] == t for p, (_, t) in zip(known, files["known_test"],
                                                                                   strict=True)])),
            }  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--known", type=int, default=6, help="classes the model learns (of 10)")
    parser.add_argument("--rotations", type=int, default=2, help="splits of the classes into known and unseen")
    parser.add_argument("--train-clips", type=int, default=40, help="training clips per known class")
    parser.add_argument("--valid-clips", type=int, default=12, help="validation (calibration) clips per known class")
    parser.add_argument("--test-clips", type=int, default=20, help="test clips per known and per unseen class")
    parser.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    parser.add_argument("--tpr", type=float, default=0.95, help="share of known validation clips kept known")
    parser.add_argument("--work", type=Path, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--output", type=Path, default=BENCHMARKS)
    args = parser.parse_args(argv)
    logging.getLogger("ast_audio").setLevel(logging.WARNING)
    counts = {"train": args.train_clips, "valid": args.valid_clips, "test": args.test_clips}
    settings = preset() | ({} if args.epochs is None else {"n_epochs": args.epochs})

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        began = time.time()
        data = write_dataset(work / "data", per_class=sum(counts.values()), seconds=1.0, seed=0, background=True)
        results: dict[tuple[str, str], list[dict]] = {}
        splits = []
        for r in range(args.rotations):
            known = sorted((r * len(CLASSES) // args.rotations + i) % len(CLASSES) for i in range(args.known))
            splits.append(known)
            for variant in VARIANTS:
                background = variant != VARIANTS[0]
                out = work / f"rotation-{r}" / ("background" if background else "known")
                files = rotation(data, out, known, background, counts)
                contract = InputContract(target_length=settings["audio_length"])
                mean, std = norm_stats(AudioDataset(read_datafile(files["train"], files["labels"]), contract))
                cfg = TrainConfig(data_train=str(files["train"]), data_val=str(files["valid"]),
                                  label_csv=str(files["labels"]), n_class=len(files["names"]),
                                  exp_dir=str(out / "exp"), dataset_mean=mean, dataset_std=std, **settings)  # fmt: skip
                train(cfg)
                checkpoint = out / "exp" / "models" / "best_audio_model.safetensors"
                none_label = BACKGROUND if background else None
                if none_label:  # what recipe folder records for a background folder
                    model = load_model(checkpoint)
                    model.info = replace(model.info, extra={**model.info.extra, "none_label": none_label})
                    save_checkpoint(model, checkpoint)
                for way, figures in measure(checkpoint, files, args.tpr, none_label).items():
                    results.setdefault((variant, way), []).append(figures)
                    print(f"rotation {r}, {variant}, {way}: {figures}", file=sys.stderr)
        minutes = (time.time() - began) / 60

    def cell(key: str, values: list[dict], digits: str) -> str:
        if values[0][key] is None:
            return "-"
        numbers = [v[key] for v in values]
        return f"{np.mean(numbers):{digits}} ({', '.join(f'{n:{digits}}' for n in numbers)})"

    lines = [
        START,
        "## Open set: \"none of these\" on unseen classes (`bench/openset.py`)",
        "",
        f"The synthetic sounds of `ast-audio synth` (one-second clips). A tiny AST with the from-scratch preset "
        f"(`recipes/scratch.toml`: {settings['model_size']}, {settings['depth']} blocks, "
        f"{settings['fstride']}x{settings['tstride']} strides, {settings['n_epochs']} epochs, best epoch on the "
        f"validation clips) trained on {args.known} of the 10 classes ({args.train_clips} clips each), once per "
        f"rotation of which classes are known ({'; '.join(', '.join(CLASSES[c][0] for c in s) for s in splits)}), "
        f"without and with the background noise as an extra class named as the checkpoint's none label (what "
        f"`recipe folder` does with a background folder). Each score's threshold keeps {args.tpr:.0%} of the "
        f"{args.valid_clips} validation clips per known class known (`ast-audio calibrate --open-set`); then "
        f"{args.test_clips} test clips per known class and {args.test_clips} per unseen class. AUROC: knownness of "
        f"known against unseen clips (1 separates, 0.5 is chance); kept: known test clips answered with a class; "
        f"caught: unseen clips answered unknown; accuracy: top label of the known test clips. Default score: "
        f"`{DEFAULT_SCORE}`. Mean over the rotations (each rotation in brackets). "
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}, {minutes:.1f} minutes in all.",
        "",
        "| trained on | answers unknown by | AUROC | known kept | unseen caught | accuracy |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for (variant, way), values in results.items():
        lines.append(f"| {variant} | `{way}` | {cell('auroc', values, '.2f')} | {cell('kept', values, '.0%')} | "
                     f"{cell('caught', values, '.0%')} | {cell('accuracy', values, '.0%')} |")  # fmt: skip
    lines.append(END)
    return publish(lines, args, START, END)


if __name__ == "__main__":
    sys.exit(main())
