"""Self-supervised pretraining on unlabelled real recordings, measured on a labelled real task.

One command (``.venv/bin/python bench/pretrain.py [--cache DIR] [--quick]``). A small AST
(the from-scratch preset's architecture, ``src/ast_audio/recipes/scratch.toml``) is pretrained
with ``ast-audio pretrain``'s SSAST objective (:func:`ast_audio.train.pretrain.pretrain`) on
unlabelled recordings: the sound files of Debian's game-data packages (``redeclipse-data``,
``hedgewars-data``: effects, ambiences, music, voices; fetched into the real-recordings cache
as :mod:`realsets` fetches the sets) plus the task's training clips with their labels
ignored; never a test clip. Then, on one split of a labelled real task (default the drum
kits of :mod:`realsets`, held out by kit; ``--task DIR`` takes any ``DIR/{train,test}/<class>/``
folder, a file's group being the part of its name before ``__``), in one run:

1. **from scratch**: the preset trained by the trainer (:func:`ast_audio.train.loop.train`);
2. **pretrained + fine-tuned**: the same, its trunk initialised from the pretrained model
   (``audioset_pretrain=``, what ``train --audioset_pretrain`` does);
3. **pretrained + linear probe**: logistic regression on the pretrained model's mean-pooled
   patch embeddings (:func:`ast_audio.train.probe.probe_accuracy`), and the same probe on the
   untrained model's embeddings (what the pretraining adds to random features);
4. **baseline**: log-mel statistics + logistic regression, as ``bench/real.py``.

Every model way sees the same training clips, the same validation fifth (whole groups) to
choose its epoch, the same normalisation statistics (the task's training clips') and the same
input length. Writes its table between the ``bench:pretrain`` markers of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import realsets
from common import BENCHMARKS, ROOT, machine, publish
from realsets import Clip, baseline, frames_for

from ast_audio.audio.io import AUDIO_EXTENSIONS, audio_info
from ast_audio.checkpoints.load import load_model
from ast_audio.data.datafiles import read_datafile, write_datafile
from ast_audio.data.dataset import AudioDataset, norm_stats
from ast_audio.data.labels import LabelTable, read_label_csv, write_label_table
from ast_audio.features.contract import InputContract
from ast_audio.model.ast import ASTModel
from ast_audio.train.config import TrainConfig, load_config_file
from ast_audio.train.loop import train
from ast_audio.train.pretrain import CHECKPOINT, PretrainConfig, pretrain
from ast_audio.train.probe import LabelledClips, probe_accuracy

START, END = "<!-- bench:pretrain:start -->", "<!-- bench:pretrain:end -->"
SCRATCH = ROOT / "src" / "ast_audio" / "recipes" / "scratch.toml"
UNLABELLED_PACKAGES = ("redeclipse-data", "hedgewars-data")
VALID_SHARE = 0.2  # of the training groups, for choosing the epoch
GPU_NOTE = (
    "What a GPU run would change (not measured here): this run is bounded by a shared 2-core CPU: minutes of "
    "pretraining, under an hour of audio, a 2-block tiny model. SSAST's gains come from a base model pretrained on "
    "thousands of hours (AudioSet + Librispeech) for hundreds of thousands of steps. On one GPU the same command "
    "takes a deeper model (`--depth`), far more crops an epoch (`--crops`) and epochs (`--pretrain-epochs`) in the "
    "time this run took; the objective, the masking and the fine-tuning path are the same code."
)


def task_clips(folder: Path) -> list[Clip]:
    """The clips of ``folder/<class>/*``; a file's group is its name's part before ``__``
    (the layout :func:`realsets.materialise` writes), else its stem."""
    clips = []
    for path in sorted(folder.glob("*/*")):
        if path.suffix.lower() in AUDIO_EXTENSIONS:
            group = path.name.split("__")[0] if "__" in path.name else path.stem
            clips.append(Clip(path.resolve(), path.parent.name, group))  # the file, not a link a re-made set replaces
    if not clips:
        raise SystemExit(f"bench/pretrain.py: no clips in {folder}/<class>/")
    return clips


def unlabelled_files(roots: list[Path], crops: int, clip_seconds: float, seed: int) -> tuple[list[Path], float]:
    """Audio files under ``roots``, in a seeded order, until they give ``crops`` crops an epoch;
    and their total hours."""
    files = sorted(p for root in roots for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    order = np.random.default_rng(seed).permutation(len(files))
    chosen, views, seconds = [], 0, 0.0
    for i in order:
        try:
            info = audio_info(files[i])
        except Exception:  # noqa: BLE001 - an unreadable file of a package is just not taken
            continue
        length = info.frames / info.sample_rate
        if length < 0.3:
            continue
        chosen.append(files[i])
        views += max(1, int(length // clip_seconds))
        seconds += length
        if views >= crops:
            break
    return chosen, seconds / 3600


def write_files(folder: Path, fit: list[Clip], valid: list[Clip], test: list[Clip]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    classes = sorted({c.label for c in fit + valid})
    files = {"label_csv": write_label_table(LabelTable(classes, classes), folder / "labels.csv")}
    for name, clips in (("train", fit), ("valid", valid), ("test", [c for c in test if c.label in classes])):
        files[name] = write_datafile(folder / f"{name}.json", [(c.path, [c.label]) for c in clips])
    return files


def finetune(files: dict[str, Path], exp: Path, settings: dict, init: str | bool, cache_dir: Path) -> dict:
    """Train the preset on the split (trunk from ``init``); test accuracy of the best-on-valid model."""
    shutil.rmtree(exp, ignore_errors=True)
    begin = time.perf_counter()
    cfg = TrainConfig(**{**settings, "audioset_pretrain": init}, data_train=str(files["train"]), data_val=str(files["valid"]),
                      data_eval=str(files["test"]), label_csv=str(files["label_csv"]),
                      n_class=len(read_label_csv(files["label_csv"])), exp_dir=str(exp), progress=False,
                      cache_dir=str(cache_dir))  # fmt: skip
    state = train(cfg)
    with open(exp / "eval_result.csv", newline="") as fh:  # val acc, val mAUC, eval acc, eval mAUC
        values = [float(v) for row in csv.reader(fh) for v in row]
    return {"valid": values[0], "test": values[2], "seconds": time.perf_counter() - begin, "best_epoch": state.best_epoch}


def probe(model: ASTModel, fit: list[Clip], test: list[Clip], contract: InputContract) -> dict:
    begin = time.perf_counter()
    known = {c.label for c in fit}
    train_set = LabelledClips([c.path for c in fit], [c.label for c in fit])
    test_set = LabelledClips([c.path for c in test if c.label in known], [c.label for c in test if c.label in known])
    accuracy = probe_accuracy(model, train_set, test_set, contract, batch_size=32)
    return {"valid": math.nan, "test": accuracy, "seconds": time.perf_counter() - begin}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=realsets.DEFAULT_CACHE, help="the real-recordings cache")
    parser.add_argument("--task", type=Path, help="DIR/{train,test}/<class>/ (default: the drum kits' split --seed)")
    parser.add_argument("--unlabelled", type=Path, nargs="*", help="folders of unlabelled audio (default: the "
                        "game-data packages in the cache)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 epoch each, few crops")
    parser.add_argument("--crops", type=int, default=800, help="unlabelled crops an epoch (the files chosen to give them)")
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default: the preset's)")
    parser.add_argument("--depth", type=int, default=None, help="transformer blocks (default: the preset's)")
    parser.add_argument("--note", default="", help="a line under the table, e.g. about the machine's load")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--output", type=Path, default=BENCHMARKS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cache = args.cache.expanduser()
    begin = time.perf_counter()
    try:
        if args.task is None:
            sides = realsets.build(realsets.SETS["drums"], cache, args.seed)
            train_clips, test_clips, task = sides["train"], sides["test"], f"drums split {args.seed}"
        else:
            train_clips, test_clips, task = task_clips(args.task / "train"), task_clips(args.task / "test"), str(args.task)
        roots = args.unlabelled if args.unlabelled is not None else list(realsets.fetch(UNLABELLED_PACKAGES, cache).values())
    except realsets.FetchError as err:
        print(f"bench/pretrain.py: {err}", file=sys.stderr)
        return 2
    crops = 24 if args.quick else args.crops
    # a killed run's pretraining resumes here; other unlabelled data or another model is another folder
    work = cache / "runs" / f"pretrain-{realsets.safe_name(task)}-c{crops}-d{args.depth or 0}{'-quick' if args.quick else ''}"
    fit, valid = realsets.split(train_clips, VALID_SHARE, args.seed + 1000)
    files = write_files(work, fit, valid, test_clips)
    frames = frames_for([c.path for c in train_clips])
    contract = InputContract(target_length=frames)
    mean, std = norm_stats(AudioDataset(read_datafile(files["train"], read_label_csv(files["label_csv"])), contract))
    contract = contract.replace(mean=mean, std=std)
    preset = dict(load_config_file(SCRATCH))
    if args.depth:
        preset["depth"] = args.depth
    if args.epochs or args.quick:
        preset["n_epochs"] = 1 if args.quick else args.epochs
    settings = {**preset, "audio_length": frames, "dataset_mean": mean, "dataset_std": std, "seed": args.seed}

    chosen, hours = unlabelled_files(roots, crops, contract.samples / contract.sample_rate, args.seed)
    pool = write_datafile(work / "unlabelled.json", [(p, []) for p in chosen])
    pretrain_exp = work / "pretrain"
    pcfg = PretrainConfig(data=[str(pool), str(files["train"])], exp_dir=str(pretrain_exp),
                          model_size=preset["model_size"], depth=preset["depth"], audio_length=frames,
                          batch_size=preset["batch_size"], n_epochs=1 if args.quick else args.pretrain_epochs,
                          lr=1e-4 if args.quick else 5e-4, dataset_mean=mean, dataset_std=std, seed=args.seed,
                          progress=False, lrscheduler_start=1000)  # fmt: skip
    started = time.perf_counter()
    state = pretrain(pcfg)
    pretrain_seconds = time.perf_counter() - started
    pretrained = pretrain_exp / "models" / CHECKPOINT

    results = {}
    results["from scratch"] = finetune(files, work / "scratch", settings, False, cache / "waves")
    results["pretrained + fine-tuned"] = finetune(files, work / "finetuned", settings, str(pretrained), cache / "waves")
    results["pretrained + linear probe"] = probe(load_model(pretrained), fit + valid, test_clips, contract)
    untrained = ASTModel(527, 16, 16, 128, frames, imagenet_pretrain=False, model_size=preset["model_size"],
                         verbose=False, depth=preset["depth"], pool=preset.get("pool", "cls"))  # fmt: skip
    results["untrained + linear probe"] = probe(untrained, fit + valid, test_clips, contract)
    results["baseline (log-mel statistics + logistic regression)"] = baseline(train_clips, test_clips)
    summary = {"task": task, "seed": args.seed, "frames": frames, "unlabelled_files": len(chosen),
               "unlabelled_hours": hours,
               "pretrain_seconds": pretrain_seconds, "results": results, "quick": args.quick,
               "when": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip
    print(json.dumps(summary, default=str), flush=True)
    if not args.quick:
        with open(cache / "results-pretrain.jsonl", "a") as fh:
            fh.write(json.dumps(summary, default=str) + "\n")
    lines = table(summary, state, pcfg, settings, fit, valid, test_clips, time.perf_counter() - begin, args)
    return publish(lines, args, START, END)


def table(summary, state, pcfg, settings, fit, valid, test, total, args) -> list[str]:
    rows = state.rows
    first, last = rows[0], rows[-1]
    lines = [
        START,
        "## Self-supervised pretraining (SSAST) on unlabelled real recordings",
        "",
        f"`python bench/pretrain.py{' --quick' if args.quick else ''}` on {summary['when'][:10]}; {machine()}.",
        f"Task: {summary['task']}: {len({c.label for c in fit})} classes, {len(fit)} training clips + {len(valid)} "
        f"validation clips (whole groups), {len(test)} test clips (held-out groups), {summary['frames']} frames.",
        f"Unlabelled: {summary['unlabelled_files']} files of {', '.join(UNLABELLED_PACKAGES)} "
        f"({summary['unlabelled_hours']:.2f} h) plus the task's training clips, labels ignored; "
        f"{pcfg.model_size}, {pcfg.depth} blocks, {pcfg.n_epochs} epochs of random crops, cluster masking, "
        f"lr {pcfg.lr:g}, batch {pcfg.batch_size}: {summary['pretrain_seconds']:.0f} s. "
        f"Masked-patch accuracy {first[4]:.3f} -> {last[4]:.3f}, InfoNCE {first[2]:.3f} -> {last[2]:.3f}, "
        f"MSE {first[3]:.3f} -> {last[3]:.3f} (first -> last epoch).",
        f"Fine-tuning: the preset (`recipes/scratch.toml`, {settings['n_epochs']} epochs, lr {settings['lr']:g}), "
        "the model of the best validation epoch scored on the test clips. One run, one split: "
        f"{total:.0f} s in all.",
        "",
        "| way | test accuracy | valid accuracy | seconds |",
        "|---|---|---|---|",
    ]
    for way, result in summary["results"].items():
        valid_acc = "" if math.isnan(result["valid"]) else f"{result['valid']:.3f}"
        lines.append(f"| {way} | **{result['test']:.3f}** | {valid_acc} | {result['seconds']:.0f} |")
    lines += ["", GPU_NOTE]
    if args.note:
        lines += ["", args.note]
    lines.append(END)
    return lines


if __name__ == "__main__":
    sys.exit(main())
