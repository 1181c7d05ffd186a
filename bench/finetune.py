"""Fine-tuning on little data: from scratch vs linear probe vs full fine-tune, on synthetic sounds.

One command (``.venv/bin/python bench/finetune.py``, also run by ``make bench``; a few
minutes on a CPU). The project's synthetic sounds (:mod:`ast_audio.audio.synth`, one-second
clips) are split by class:

1. **pretraining**: a tiny AST (the demo's model: tiny224, 2 blocks, 16x16 patches, 100
   frames) trains from scratch on the first six classes (``--pretrain-clips`` per class,
   a fifth of them for validation), as ``make demo`` does on all ten;
2. **the new task**: the other four classes, never seen in pretraining, with
   ``--shots`` training clips per class, ``--valid-clips`` validation clips (the best epoch
   is kept on them) and ``--test-clips`` held-out test clips per class;
3. each way of training the new task runs with ``--seeds`` seeds through ``ast-audio
   train``'s own trainer; the figure is the held-out test accuracy of the best-on-valid
   model (``eval_result.csv``), mean and spread over the seeds.

Writes its table between the ``bench:finetune`` markers of BENCHMARKS.md.
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
from common import BENCHMARKS, machine, publish

from ast_audio import load_model
from ast_audio.audio.synth import CLASSES, write_dataset
from ast_audio.data import read_datafile, write_datafile
from ast_audio.data.dataset import AudioDataset, norm_stats
from ast_audio.data.labels import LabelTable, write_label_table
from ast_audio.features import InputContract
from ast_audio.train import train
from ast_audio.train.config import TrainConfig

START, END = "<!-- bench:finetune:start -->", "<!-- bench:finetune:end -->"
PRETRAIN_CLASSES, NEW_CLASSES = range(0, 6), range(6, 10)
MODEL = dict(model_size="tiny224", depth=2, fstride=16, tstride=16, audio_length=100, imagenet_pretrain=False,
             loss="CE", metrics="acc", lrscheduler_start=1000, progress=False)  # fmt: skip

# (row, settings): every one trains the new task; "pretrained" runs start from the pretrained trunk.
WAYS = [
    ("from scratch (random init)", dict(lr=1e-3)),
    ("linear probe (`--freeze all`)", dict(pretrained=True, freeze="all", lr=1e-2)),
    ("full fine-tune", dict(pretrained=True, lr=3e-4)),
    ("fine-tune, `--freeze 0 --llrd 0.75`", dict(pretrained=True, freeze=0, llrd=0.75, lr=3e-4)),
]


def split(data: Path, out: Path, classes: range, counts: dict[str, int]) -> dict[str, Path]:
    """Datafiles of ``classes``: the first ``counts[name]`` clips of each class for each split, in order."""
    names = [CLASSES[c][0] for c in classes]
    label_csv = write_label_table(LabelTable(names, names), out / "labels.csv")
    files = {"labels": label_csv}
    rows: dict[str, list] = {name: [] for name in counts}
    for target in classes:
        clips = sorted((data / "audio").glob(f"*-{target:03d}????-A-{target}.wav"), key=lambda p: p.name[2:])
        start = 0
        for name, count in counts.items():
            rows[name] += [(p, [CLASSES[target][0]]) for p in clips[start : start + count]]
            start += count
    for name, items in rows.items():
        files[name] = write_datafile(out / f"{name}.json", items)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=10, help="training clips per new class")
    parser.add_argument("--valid-clips", type=int, default=5, help="validation clips per new class")
    parser.add_argument("--test-clips", type=int, default=30, help="held-out clips per new class")
    parser.add_argument("--pretrain-clips", type=int, default=80, help="clips per pretraining class")
    parser.add_argument("--pretrain-epochs", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=15, help="epochs on the new task")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--work", type=Path, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--output", type=Path, default=BENCHMARKS)
    args = parser.parse_args(argv)
    logging.getLogger("ast_audio").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        began = time.time()
        per_class = max(args.pretrain_clips, args.shots + args.valid_clips + args.test_clips)
        data = write_dataset(work / "data", per_class=per_class, seconds=1.0, seed=0)
        valid = args.pretrain_clips // 5
        pre = split(data, work / "pretrain", PRETRAIN_CLASSES, {"train": args.pretrain_clips - valid, "valid": valid})
        new = split(data, work / "new", NEW_CLASSES, {"train": args.shots, "valid": args.valid_clips,
                                                          "test": args.test_clips})  # fmt: skip
        contract = InputContract(target_length=MODEL["audio_length"])
        mean, std = norm_stats(AudioDataset(read_datafile(pre["train"], pre["labels"]), contract))
        stats = dict(dataset_mean=mean, dataset_std=std)

        pre_cfg = TrainConfig(data_train=str(pre["train"]), data_val=str(pre["valid"]), label_csv=str(pre["labels"]),
                              n_class=len(PRETRAIN_CLASSES), exp_dir=str(work / "pretrain" / "exp"), lr=1e-3,
                              batch_size=32, n_epochs=args.pretrain_epochs, **MODEL, **stats)  # fmt: skip
        pre_state = train(pre_cfg)
        pretrained = work / "pretrain" / "exp" / "models" / "best_audio_model.safetensors"
        parameters = sum(p.numel() for p in load_model(pretrained).parameters()) / 1e6

        rows = []
        for title, way in WAYS:
            way = dict(way)
            source = str(pretrained) if way.pop("pretrained", False) else False
            accuracies = []
            for seed in range(args.seeds):
                exp = work / "new" / f"{title.split()[0]}-{len(rows)}-{seed}"
                cfg = TrainConfig(data_train=str(new["train"]), data_val=str(new["valid"]), data_eval=str(new["test"]),
                                  label_csv=str(new["labels"]), n_class=len(NEW_CLASSES), exp_dir=str(exp),
                                  batch_size=8, n_epochs=args.epochs, seed=seed, audioset_pretrain=source,
                                  **{**MODEL, **stats, **way})  # fmt: skip
                train(cfg)
                accuracies.append(float(np.loadtxt(exp / "eval_result.csv")[2]))  # eval (= test) accuracy
            flags = " ".join(f"{k}={v}" for k, v in way.items())
            rows.append((title, flags, accuracies))
            print(f"{title}: {np.mean(accuracies):.1%} ({', '.join(f'{a:.1%}' for a in accuracies)})", file=sys.stderr)
        minutes = (time.time() - began) / 60

    chance = 1 / len(NEW_CLASSES)
    lines = [
        START,
        "## Fine-tuning on little data (`bench/finetune.py`)",
        "",
        f"The synthetic sounds of `ast-audio synth` (one-second clips). Pretraining: a tiny AST (tiny224, 2 blocks, "
        f"16x16 patches, 100 frames, {parameters:.1f}M parameters) from scratch on six classes "
        f"({', '.join(CLASSES[c][0] for c in PRETRAIN_CLASSES)}), {args.pretrain_clips - valid} clips each, "
        f"{args.pretrain_epochs} epochs: best validation accuracy {pre_state.best_metric:.1%}. "
        f"New task: the four other classes ({', '.join(CLASSES[c][0] for c in NEW_CLASSES)}), **{args.shots} training "
        f"clips per class**, {args.valid_clips} validation clips per class (best epoch), {args.test_clips} held-out test clips "
        f"per class (chance {chance:.0%}); {args.epochs} epochs, batch 8, CE, no augmentation, no lr decay; "
        f"{args.seeds} seeds per row. Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}, "
        f"{minutes:.1f} minutes in all.",
        "",
        "| new task trained by | settings | test accuracy, mean | per seed |",
        "| --- | --- | ---: | --- |",
    ]
    for title, flags, accuracies in rows:
        lines.append(f"| {title} | {flags} | {np.mean(accuracies):.1%} | {', '.join(f'{a:.1%}' for a in accuracies)} |")
    lines.append(END)
    return publish(lines, args, START, END)


if __name__ == "__main__":
    sys.exit(main())
