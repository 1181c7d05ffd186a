"""``ast-audio check | synth``: decode every clip of datafiles once, and write the synthetic
sound library (ESC-50 layout, or long scenes with reference events)."""

from __future__ import annotations

import argparse
import sys

from ..base.checks import number_arg


def _cmd_check(args: argparse.Namespace) -> int:
    from ..data.datafiles import check_datafile

    bad = 0
    for datafile in args.datafiles:
        total, problems = check_datafile(datafile, args.label_csv, workers=args.workers, progress=False if args.quiet else None)
        for line in problems:
            print(line)
        print(f"{datafile}: {len(problems)} of {total} entries unusable", file=sys.stderr)
        bad += len(problems)
    return 1 if bad else 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from ..audio.synth import write_dataset, write_scenes

    if args.scenes:
        out = write_scenes(args.out, count=args.scenes, seconds=(args.min_seconds, args.max_seconds),
                           seed=args.seed, classes=args.classes)  # fmt: skip
        print(f"{args.scenes} scenes under {out / 'audio'}; reference events {out / 'reference.tsv'}")
        return 0
    out = write_dataset(args.out, per_class=args.per_class, classes=args.classes, seconds=args.seconds, seed=args.seed,
                        background=args.background)  # fmt: skip
    print(f"{(args.classes + args.background) * args.per_class} clips in ESC-50's layout under {out}")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("check", help="decode every clip of datafiles once; list each unusable entry (exit 1 if any)",
                       description="One pass over each datafile: malformed entries (unknown labels with "
                       "--label-csv) and every audio file that is missing, unreadable, empty, undecodable, "
                       "truncated or holds NaN samples, one 'path: reason' line each.")  # fmt: skip
    p.add_argument("datafiles", nargs="+", help="datafiles ({\"data\": [{\"wav\": ..., \"labels\": ...}]})")
    p.add_argument("--label-csv", default=None, help="also check the labels against this table")
    p.add_argument("-w", "--workers", type=number_arg(low=1, high=1024, integer=True), default=None, help="threads decoding clips (default: up to 8)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_check)
    p = sub.add_parser("synth", help="write a small labelled sound dataset (ESC-50 layout) for demos and tests")
    p.add_argument("--out", required=True, help="folder to write audio/ and meta/esc50.csv into")
    p.add_argument("--per-class", type=number_arg(low=1, high=100_000, integer=True), default=150, help="clips per class (spread over 5 folds)")
    p.add_argument("--classes", type=number_arg(low=1, high=1000, integer=True), default=10, help="how many of the 10 sound classes")
    p.add_argument("--seconds", type=number_arg(above=0, high=3600, unit="seconds"), default=1.0, help="clip length")
    p.add_argument("--background", action="store_true", help="add the class 'background' (the noise alone)")
    p.add_argument("--scenes", type=number_arg(low=0, high=10_000, integer=True), default=0,
                   help="write this many long recordings with reference events (reference.tsv) instead")  # fmt: skip
    p.add_argument("--min-seconds", type=number_arg(above=0, high=86_400, unit="seconds"), default=30.0, help="--scenes: shortest recording (30)")
    p.add_argument("--max-seconds", type=number_arg(above=0, high=86_400, unit="seconds"), default=120.0, help="--scenes: longest recording (120)")
    p.add_argument("--seed", type=number_arg(low=0, high=2**32 - 1, integer=True), default=0)
    p.set_defaults(func=_cmd_synth)
