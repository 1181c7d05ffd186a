"""The ``ast-audio`` command: thin subcommands over the library.

Library errors (:class:`AstAudioError`) become one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .. import __version__
from ..base import allocator
from ..errors import AstAudioError, CheckpointError


def _cmd_checkpoints(args: argparse.Namespace) -> int:
    from ..checkpoints.load import REGISTRY, cache_dir

    home = cache_dir()
    print(f"cache: {home}")
    for entry in REGISTRY.values():
        state = "cached" if (home / entry.filename).exists() else "-"
        strides = f"{entry.fstride}/{entry.tstride}" if entry.layout == "ast" else entry.model_size
        print(f"{entry.name:36s} {strides:9s} {state:7s} {entry.score}")
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from ..checkpoints.load import REGISTRY, cache_dir, download, resolve

    for name in args.names:
        key = name.removesuffix(".pth")
        if key not in REGISTRY:
            raise CheckpointError("not a known checkpoint name (see `ast-audio checkpoints`)", name)
        if args.url:
            entry = REGISTRY[key]
            path = download(args.url, cache_dir() / entry.filename, progress=not args.quiet)
        else:
            path = resolve(key, progress=not args.quiet)
        print(path)
    return 0


def _runtime_info(device: str | None) -> dict:
    """This machine's bf16 units and what ``precision="auto"`` and ``--amp auto`` pick on ``device``."""
    import torch

    from ..base import runtime

    chosen = runtime.pick_device(device)
    precision, why = runtime.auto_precision(chosen)
    amp, _ = runtime.training_amp("auto", chosen)
    return {
        "device": str(chosen),
        "cpu_bf16_units": runtime.cpu_bf16_units(),  # amx_bf16 / avx512_bf16 in /proc/cpuinfo
        "bf16_native": runtime.bf16_native(chosen),
        "precision_auto": precision,
        "precision_auto_reason": why,
        "training_amp_auto": {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp],
        "allocator": allocator.tune(),
    }


def _cmd_info(args: argparse.Namespace) -> int:
    from ..base.fileio import dumps_json
    from ..checkpoints.load import load_model, read_checkpoint

    if args.source is None:
        print(dumps_json({"runtime": _runtime_info(args.device)}, indent=2))
        return 0
    raw = read_checkpoint(args.source)
    model = load_model(args.source, allow_nonfinite=args.allow_nonfinite)
    cfg, info = model.config, model.info
    out = {
        "path": str(raw.path),
        "layout": raw.layout,
        "config": cfg.to_dict(),
        "patch_grid": list(cfg.grid),
        "parameters": sum(p.numel() for p in model.parameters()),
        "labels": len(info.labels) if info.labels else None,
        "first_labels": (info.labels or [])[:5],
        "dataset_mean": info.dataset_mean,
        "dataset_std": info.dataset_std,
        "multilabel": info.multilabel,
        "input_contract": model.input_contract.to_dict(),  # what turns audio into this model's input
        "runtime": _runtime_info(args.device),  # how it would compute here
    }
    print(dumps_json(out, indent=2))
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from ..checkpoints.load import export_hf, export_original, load_model, save_checkpoint

    model = load_model(
        args.source, label_dim=args.label_dim, fstride=args.fstride, tstride=args.tstride,
        input_tdim=args.input_tdim, input_fdim=args.input_fdim, allow_nonfinite=args.allow_nonfinite,
    )  # fmt: skip
    out = Path(args.out)
    if args.format == "hf":
        export_hf(model, out)
        from ..checkpoints.model_card import write_model_card

        write_model_card(model, out, args.source)  # README.md: the folder is ready to upload
    elif args.format == "original":
        export_original(model, out)
    else:
        save_checkpoint(model, out)
    print(out)
    return 0


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


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    from ..recipes.demo import TEST_FOLD, run_demo

    started = time.time()
    result = run_demo(args.out, per_class=args.per_class, epochs=args.epochs, seed=args.seed, scenes=args.scenes)
    exp = result.exp_dir
    print(f"\nheld-out accuracy: {result.accuracy:.1%} on {result.test_clips} clips of fold {TEST_FOLD} "
          "(never used for training or for choosing the model)")  # fmt: skip
    if result.event_f1 is not None:
        print(f"event thresholds calibrated on {args.scenes} scenes: event F1 there {result.event_f1[0]:.3f} "
              f"at 0.5, {result.event_f1[1]:.3f} calibrated ({exp / 'event_thresholds.json'})")  # fmt: skip
    print("\ntop-3 labels of one held-out clip per class:")
    for path, labels in result.tagged:
        shown = ", ".join(f"{name} {prob:.2f}" for name, prob in labels)
        print(f"  {Path(path).name:22s} {shown}")
    print(f"\nmodel:      {result.model}")
    print(f"results:    {exp / 'result.csv'} (one row per epoch), {exp / 'eval_result.csv'}")
    print(f"curves:     {exp / 'curves.png'}")
    print(f"confusion:  {result.confusion_png}")
    print(f"tag more:   ast-audio predict {Path(args.out) / 'data' / 'audio'} --checkpoint {result.model} --top-k 3")
    print(f"({time.time() - started:.0f} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ast-audio", description="Audio Spectrogram Transformer tools")
    parser.add_argument("--version", action="version", version=f"ast-audio {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("checkpoints", help="list the published checkpoints and whether they are cached")
    p.set_defaults(func=_cmd_checkpoints)

    p = sub.add_parser("download", help="fetch published checkpoints into the cache")
    p.add_argument("names", nargs="+", help="checkpoint names (see `ast-audio checkpoints`)")
    p.add_argument("--url", help="fetch from this address instead (a mirror)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("info", help="describe a checkpoint (layout, config, labels, input contract) and this "
                       "machine's runtime (bf16 units, what precision auto picks)")  # fmt: skip
    p.add_argument("source", nargs="?", help="file, Hugging Face folder or published name (none: the runtime only)")
    p.add_argument("--device", default=None, help="the device the runtime entry is about (default: cuda if available)")
    p.add_argument("--allow-nonfinite", action="store_true", help="load NaN/Inf weights anyway (forensics)")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("convert", help="rewrite a checkpoint in another layout")
    p.add_argument("source", help="file, Hugging Face folder or published name")
    p.add_argument("out", help="output file (ast-audio, original) or folder (hf)")
    p.add_argument("--format", choices=["ast-audio", "hf", "original"], default="ast-audio")
    for flag in ("label-dim", "fstride", "tstride", "input-tdim", "input-fdim"):
        p.add_argument(f"--{flag}", type=int, default=None, help="adapt the model (see load_model)")
    p.add_argument("--allow-nonfinite", action="store_true", help="convert NaN/Inf weights anyway (forensics)")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("check", help="decode every clip of datafiles once; list each unusable entry (exit 1 if any)",
                       description="One pass over each datafile: malformed entries (unknown labels with "
                       "--label-csv) and every audio file that is missing, unreadable, empty, undecodable, "
                       "truncated or holds NaN samples, one 'path: reason' line each.")  # fmt: skip
    p.add_argument("datafiles", nargs="+", help="datafiles ({\"data\": [{\"wav\": ..., \"labels\": ...}]})")
    p.add_argument("--label-csv", default=None, help="also check the labels against this table")
    p.add_argument("-w", "--workers", type=int, default=None, help="threads decoding clips (default: up to 8)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("synth", help="write a small labelled sound dataset (ESC-50 layout) for demos and tests")
    p.add_argument("--out", required=True, help="folder to write audio/ and meta/esc50.csv into")
    p.add_argument("--per-class", type=int, default=150, help="clips per class (spread over 5 folds)")
    p.add_argument("--classes", type=int, default=10, help="how many of the 10 sound classes")
    p.add_argument("--seconds", type=float, default=1.0, help="clip length")
    p.add_argument("--background", action="store_true", help="add the class 'background' (the noise alone)")
    p.add_argument("--scenes", type=int, default=0,
                   help="write this many long recordings with reference events (reference.tsv) instead")  # fmt: skip
    p.add_argument("--min-seconds", type=float, default=30.0, help="--scenes: shortest recording (30)")
    p.add_argument("--max-seconds", type=float, default=120.0, help="--scenes: longest recording (120)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("demo", help="make data, train a tiny AST on the CPU, evaluate and tag files (offline)")
    p.add_argument("--out", default="runs/demo", help="where the data, the run and the plots go")
    p.add_argument("--per-class", type=int, default=200, help="synthetic clips per class")
    p.add_argument("--epochs", type=int, default=None, help="default: recipes/demo.toml's (20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scenes", type=int, default=4,
                   help="recordings (30-60 s, seed + 5003) that calibrate the event thresholds (4; 0: none)")  # fmt: skip
    p.set_defaults(func=_cmd_demo)

    from . import events as cli_events
    from . import infer as cli_infer
    from . import recipes as cli_recipes
    from . import serve as cli_serve
    from . import shards as cli_shards
    from . import train as cli_train

    cli_train.add_commands(sub)
    cli_recipes.add_commands(sub)
    cli_infer.add_commands(sub)
    cli_serve.add_commands(sub)
    cli_shards.add_commands(sub)
    cli_events.add_commands(sub)
    return parser


def _safe_output() -> None:
    """File names that are not valid text (``caf\\xe9.wav`` on a UTF-8 system) are printed with
    the undecodable bytes escaped (``caf\\udce9.wav``): the output stays valid text."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    _safe_output()
    allocator.tune()  # AST_AUDIO_MALLOC=reuse only: freed tensor memory kept for reuse (allocator.py)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except AstAudioError as err:
        print(f"ast-audio: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = "; run the same command to resume after the last completed epoch" if args.command in ("train", "recipe") else ""
        print(f"ast-audio: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
