"""``ast-audio prepare DATASET ...`` and ``ast-audio recipe NAME ...``: datasets as distributed,
prepared and trained with the original hyper-parameters (see :mod:`ast_audio.recipes`)."""

from __future__ import annotations

import argparse
import json


def _print_prepared(summary: dict, out: str) -> None:
    for key, value in summary.items():
        if key not in ("report", "label_csv"):
            print(f"{key}: {json.dumps(value)}")
    print(f"label CSV: {summary['label_csv']}")
    print(f"bad files: {summary['bad_files']} (listed in {summary['report']})")
    print(f"prepared in {out}")


def _cmd_prepare(args: argparse.Namespace) -> int:
    from . import recipes

    common = {"workers": args.workers, "force": True}
    if args.dataset == "esc50":
        summary = recipes.esc50.prepare(args.root, args.out, **common)
    elif args.dataset == "speechcommands":
        summary = recipes.speechcommands.prepare(args.root, args.out, **common)
    elif args.dataset == "audioset":
        summary = recipes.audioset.prepare(args.segments, args.audio_dir, args.out, label_csv=args.label_csv, **common)
    elif args.dataset == "hack":
        summary = recipes.hack.prepare(
            args.root, args.out, label_column=args.label_column, valid_fraction=args.valid_fraction,
            stratify=args.stratify, seed=args.seed, **common,
        )  # fmt: skip
    else:
        summary = recipes.csvdata.prepare(
            args.train_csv, args.audio_dir, args.out, label_column=args.label_column, test_csv=args.test_csv,
            test_audio_dir=args.test_audio_dir, valid_fraction=args.valid_fraction, seed=args.seed,
            audio_length=args.audio_length, num_mel_bins=args.num_mel_bins, **common,
        )  # fmt: skip
    _print_prepared(summary, args.out)
    return 0


def _cmd_recipe(args: argparse.Namespace) -> int:
    from .recipes import run_recipe

    result = run_recipe(
        args.name, args.root, args.exp_dir, sets=args.set or (), config=args.config, data_dir=args.data_dir,
        force_prepare=args.force_prepare, workers=args.workers,
    )  # fmt: skip
    if args.name == "esc50":
        for fold, acc in zip(result["folds"], result["accuracy"], strict=True):
            print(f"fold {fold}: accuracy {acc:.4f}")
        print(f"mean accuracy {result['mean']:.4f} (epoch {result['best_epoch']}, best by the folds' mean)")
    else:
        for key, value in result.items():
            if key not in ("recipe", "deliverable"):
                print(f"{key}: {value if isinstance(value, str) else json.dumps(value)}")
    print(f"deliverable: {result['deliverable']}")
    return 0


def add_commands(sub) -> None:
    from .recipes import RECIPES

    p = sub.add_parser(
        "prepare", help="turn a dataset as distributed into datafiles + label CSV (bad clips reported)",
        description="Check every clip once and write datafiles, the label CSV, bad_files.txt (path: reason) "
        "and prepared.json into --out.",
    )  # fmt: skip
    datasets = p.add_subparsers(dest="dataset", required=True)

    def dataset_parser(name: str, help: str) -> argparse.ArgumentParser:
        q = datasets.add_parser(name, help=help)
        q.add_argument("--out", required=True, help="folder for the prepared data")
        q.add_argument("-w", "--workers", type=int, default=None, help="threads decoding clips (default: up to 8)")
        q.set_defaults(func=_cmd_prepare)
        return q

    q = dataset_parser("esc50", "ESC-50-master: five folds of train/eval datafiles")
    q.add_argument("--root", required=True, help="the ESC-50-master folder (meta/esc50.csv, audio/)")
    q = dataset_parser("speechcommands", "speech_commands_v0.02: train/valid/test datafiles")
    q.add_argument("--root", required=True, help="the speech_commands_v0.02 folder (word folders, *_list.txt)")
    q = dataset_parser("audioset", "AudioSet segment CSVs + downloaded clips: datafiles, missing counts, weights")
    q.add_argument("--segments", nargs="+", required=True, help="*_segments.csv files")
    q.add_argument("--audio-dir", required=True, help="the downloaded clips (searched recursively, matched by YouTube id)")
    q.add_argument("--label-csv", default=None, help="class_labels_indices.csv (default: the shipped one)")
    q = dataset_parser("hack", "the seed's folder: the fork's split (last 20%), all usable rows, the test list")
    q.add_argument("--root", required=True, help="train.csv, test.csv, TrainAudioFiles/, TestAudioFiles/")
    q.add_argument("--label-column", default=None, help="default: the one column besides filename")
    q.add_argument("--valid-fraction", type=float, default=0.2, help="the last share of usable rows (default 0.2)")
    q.add_argument("--stratify", action="store_true", help="a seeded stratified split instead of the last rows")
    q.add_argument("--seed", type=int, default=0, help="seed of the stratified split (default 0)")
    q = dataset_parser("csv", "any CSV-labelled dataset: labels from the data, stratified validation split")
    q.add_argument("--train-csv", required=True, help="filename,<label column>")
    q.add_argument("--audio-dir", required=True, help="folder of the training files")
    q.add_argument("--label-column", default=None, help="default: the one column besides filename")
    q.add_argument("--test-csv", default=None, help="filename only (unlabelled)")
    q.add_argument("--test-audio-dir", default=None, help="folder of the test files (default: --audio-dir)")
    q.add_argument("--valid-fraction", type=float, default=0.2, help="stratified validation share (default 0.2)")
    q.add_argument("--seed", type=int, default=0, help="seed of the validation split (default 0)")
    q.add_argument("--audio-length", type=int, default=512, help="frames, for the normalisation statistics")
    q.add_argument("--num-mel-bins", type=int, default=128)

    p = sub.add_parser(
        "recipe", help="prepare (if needed), train with a recipe's original settings, write its deliverable",
        description="Recipes: " + "; ".join(f"{r.name}: {r.description}" for r in RECIPES.values()) + ". "
        "Settings: the shipped config < --config FILE < --set key=value. Run the same command again to resume.",
    )  # fmt: skip
    p.add_argument("name", choices=list(RECIPES))
    p.add_argument("--root", required=True, help="the dataset as distributed")
    p.add_argument("--exp-dir", required=True, help="experiment folder (runs, deliverable; data/ unless --data-dir)")
    p.add_argument("--data-dir", default=None, help="where prepared data goes (default: EXP_DIR/data)")
    p.add_argument("--config", default=None, help="a TOML with [train] / [recipe] tables over the shipped config")
    p.add_argument(
        "--set", nargs="+", action="extend", metavar="KEY=VALUE",
        help="override settings, e.g. --set model_size=tiny224 imagenet_pretrain=false n_epochs=3 "
        "(audioset: --set full for the full set)",
    )  # fmt: skip
    p.add_argument("--force-prepare", action="store_true", help="prepare again even if the stamp matches")
    p.add_argument("-w", "--workers", type=int, default=None, help="threads decoding clips during prepare")
    p.set_defaults(func=_cmd_recipe)
