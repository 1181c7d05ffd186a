"""``ast-audio checkpoints | download | info | convert``: the published checkpoints, what a
checkpoint holds and how it would run here, and rewriting one in another layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..base import allocator
from ..base.checks import number_arg
from ..errors import CheckpointError


def _cmd_checkpoints(args: argparse.Namespace) -> int:
    from ..checkpoints.hub import REGISTRY, cache_dir

    home = cache_dir()
    print(f"cache: {home}")
    for entry in REGISTRY.values():
        state = "cached" if (home / entry.filename).exists() else "-"
        strides = f"{entry.fstride}/{entry.tstride}" if entry.layout == "ast" else entry.model_size
        print(f"{entry.name:36s} {strides:9s} {state:7s} {entry.score}")
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from ..checkpoints.hub import REGISTRY, cache_dir, download, resolve

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
    """This machine's bf16 units, the ``AST_AUDIO_PRECISION`` pin, and what ``precision="auto"``
    and ``--amp auto`` pick on ``device``, and why."""
    from ..base import runtime

    chosen = runtime.device_for("auto", device)  # the CPU where AST_AUDIO_PRECISION pins int8
    precision, why = runtime.auto_precision(chosen)
    amp, amp_why = runtime.auto_amp(chosen)
    return {
        "device": str(chosen),
        "cpu_bf16_units": runtime.cpu_bf16_units(),  # amx_bf16 / avx512_bf16 in /proc/cpuinfo
        "bf16_native": runtime.bf16_native(chosen),
        "precision_pinned": runtime.pinned_precision(),  # AST_AUDIO_PRECISION, or None
        "precision_auto": precision,
        "precision_auto_reason": why,
        "training_amp_auto": amp,
        "training_amp_auto_reason": amp_why,
        "allocator": allocator.tune(),
    }


def _cmd_info(args: argparse.Namespace) -> int:
    from ..base.fileio import dumps_json
    from ..checkpoints.load import load_model
    from ..checkpoints.read import read_checkpoint

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
    from ..checkpoints.load import export_hf, export_original, export_ssast, load_model, save_checkpoint

    if args.format == "ssast":  # the pretraining checkpoint as it is: heads, mask token, no adaptation
        adapted = [flag for flag in ("label_dim", "fstride", "tstride", "input_tdim", "input_fdim")
                   if getattr(args, flag) is not None]  # fmt: skip
        if adapted:
            raise CheckpointError(f"--format ssast writes the pretraining checkpoint as it is; --{adapted[0].replace('_', '-')} "
                                  "does not apply", args.source)  # fmt: skip
        print(export_ssast(args.source, args.out, allow_nonfinite=args.allow_nonfinite))
        return 0
    model = load_model(
        args.source, label_dim=args.label_dim, fstride=args.fstride, tstride=args.tstride,
        input_tdim=args.input_tdim, input_fdim=args.input_fdim, allow_nonfinite=args.allow_nonfinite,
    )  # fmt: skip
    out = Path(args.out)
    if args.format == "hf":
        from ..base.fileio import output_folder
        from ..checkpoints.model_card import write_model_card

        if out.exists() and not out.is_dir():
            raise CheckpointError("is a file; a Hugging Face model is a folder (give a new or existing folder)", out)
        with output_folder(out):  # a folder made here is removed again if any of its files fails
            export_hf(model, out)
            write_model_card(model, out, args.source)  # README.md: the folder is ready to upload
    elif args.format == "original":
        export_original(model, out)
    else:
        save_checkpoint(model, out)
    print(out)
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("checkpoints", help="list the published checkpoints and whether they are cached")
    p.set_defaults(func=_cmd_checkpoints)
    p = sub.add_parser("download", help="fetch published checkpoints into the cache")
    p.add_argument("names", nargs="+", help="checkpoint names (see `ast-audio checkpoints`)")
    p.add_argument("--url", help="fetch from this address instead (a mirror)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_download)
    p = sub.add_parser("info", help="describe a checkpoint (layout, config, labels, input contract) and this "
                       "machine's runtime (bf16 units, what precision auto picks and why)")  # fmt: skip
    p.add_argument("source", nargs="?", help="file, Hugging Face folder or published name (none: the runtime only)")
    p.add_argument("--device", default=None, help="the device the runtime entry is about (default: cuda if available)")
    p.add_argument("--allow-nonfinite", action="store_true", help="load NaN/Inf weights anyway (forensics)")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("convert", help="rewrite a checkpoint in another layout",
                       description="Rewrite a checkpoint: ast-audio (ours), hf (a Hugging Face folder), original "
                       "(the AST repository's .pth) or ssast (an SSAST pretraining checkpoint, ours from `ast-audio "
                       "pretrain` or a published one, in the SSAST repository's layout for its fine-tuning code).")  # fmt: skip
    p.add_argument("source", help="file, Hugging Face folder or published name")
    p.add_argument("out", help="output file (ast-audio, original, ssast) or folder (hf)")
    p.add_argument("--format", choices=["ast-audio", "hf", "original", "ssast"], default="ast-audio")
    for flag in ("label-dim", "fstride", "tstride", "input-tdim", "input-fdim"):
        p.add_argument(f"--{flag}", type=number_arg(low=1, high=100_000, integer=True), default=None, help="adapt the model (see load_model)")
    p.add_argument("--allow-nonfinite", action="store_true", help="convert NaN/Inf weights anyway (forensics)")
    p.set_defaults(func=_cmd_convert)
