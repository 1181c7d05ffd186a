"""``ast-audio shard DATAFILE --label-csv L --out DIR``: a datafile as WebDataset shards
(see :mod:`ast_audio.data.shard_writer`); ``ast-audio train --data-train DIR`` reads them."""

from __future__ import annotations

import argparse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _cmd_shard(args: argparse.Namespace) -> int:
    from ..data.shard_writer import write_shards

    more = {} if args.min_shards is None else {"min_shards": args.min_shards}  # else the writer's default
    summary = write_shards(args.datafile, args.label_csv, args.out, max_size=args.max_size, flac=args.flac, **more)
    sizes = sum(s["bytes"] for s in summary["shards"])
    print(f"{summary['samples']} clips in {len(summary['shards'])} shards ({sizes / 1e6:.1f} MB) under {args.out}")
    print(f"index: {args.out}/index.json")
    print(f"bad files: {summary['bad_files']} (listed in {summary['report']})")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser(
        "shard", help="write a datafile's clips as WebDataset shards (tar) for training",
        description="Every usable clip (its own bytes, or 16 kHz FLAC with --flac) and its labels as one sample; "
        "DIR/index.json lists shards, sample and label counts; unusable clips are listed in DIR/bad_files.txt.",
    )  # fmt: skip
    p.add_argument("datafile", help="a datafile ({\"data\": [{\"wav\": ..., \"labels\": ...}]})")
    p.add_argument("--label-csv", "--label_csv", required=True, help="the label CSV (index,mid,display_name)")
    p.add_argument("--out", required=True, help="folder for shard-NNNNNN.tar, index.json, bad_files.txt")
    p.add_argument("--max-size", default="500MB", help="largest shard (500MB, 2GB, 64KiB...; default 500MB)")
    p.add_argument("--min-shards", type=_positive_int, default=None,
                   help="spread the clips over at least this many shards when there are that many (default 8, "
                   "ast_audio.data.shard_writer.MIN_SHARDS): training deals whole shards to processes x loader workers")
    p.add_argument("--flac", action="store_true", help="store clips as 16 kHz mono 16-bit FLAC")
    p.set_defaults(func=_cmd_shard)
