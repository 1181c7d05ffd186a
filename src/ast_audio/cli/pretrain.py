"""``ast-audio pretrain PATH... --exp-dir EXP``: self-supervised pretraining (SSAST) on unlabelled audio."""

from __future__ import annotations

import argparse
import dataclasses

from ..base.checks import number_arg
from .train import _betas, _flag, _int, _spread, _statistic, _workers

_count = number_arg(low=1, high=1_000_000, integer=True)

# (flags, PretrainConfig field, type, help); train's spellings where the setting is train's.
_FLAGS = [
    (["--exp-dir", "--exp_dir"], "exp_dir", str, "the run's folder; the model lands in EXP/models/"),
    (["--model-size", "--model_size"], "model_size", str, "tiny224, small224, base224 or base384"),
    (["--depth"], "depth", _int("depth"), "transformer blocks"),
    (["--num-mel-bins", "--num_mel_bins"], "num_mel_bins", _int("num_mel_bins"), "mel bins of the input"),
    (["--audio-length", "--audio_length"], "audio_length", _int("audio_length"),
     "frames of each crop (longer recordings give several random crops per epoch)"),
    (["--masking"], "masking", str, "cluster (squares of 3x3..5x5 patches, SSAST's) or random"),
    (["--mask-patches", "--mask_patches"], "mask_patches", _count,
     "patches masked per clip (default: SSAST's share, 400 of the 512 patches of 1024 frames x 128 bins)"),
    (["--lr"], "lr", number_arg(above=0, high=10), "learning rate"),
    (["-b", "--batch-size", "--batch_size"], "batch_size", _int("batch_size"), "clips per step (all processes)"),
    (["-w", "--num-workers", "--num_workers"], "num_workers", _workers, "DataLoader worker processes"),
    (["--n-epochs", "--n_epochs"], "n_epochs", _int("n_epochs"), "epochs"),
    (["--warmup"], "warmup", _flag, "ramp the lr up over the first 1000 steps"),
    (["--lrscheduler_start"], "lrscheduler_start", _int("lrscheduler_start"), "first epoch of lr decay"),
    (["--lrscheduler_step"], "lrscheduler_step", _int("lrscheduler_step"), "epochs between decays"),
    (["--lrscheduler_decay"], "lrscheduler_decay", number_arg(above=0, high=1), "lr factor at each decay"),
    (["--weight-decay", "--weight_decay"], "weight_decay", number_arg(low=0, high=1000), "Adam's weight decay"),
    (["--betas"], "betas", _betas, "Adam's betas, as 0.95,0.999"),
    (["--dataset_mean", "--dataset-mean"], "dataset_mean", _statistic,
     "normalisation mean (default: measured on the data's crops)"),
    (["--dataset_std", "--dataset-std"], "dataset_std", _spread, "normalisation std (with --dataset-mean)"),
    (["--seed"], "seed", _int("seed"), "seed of the model, the crops and the masks"),
    (["--amp"], "amp", str, "auto, off, bf16 or fp16 (as train's)"),
    (["--fbank-on", "--fbank_on"], "fbank_on", str, "auto, loader or device (as train's)"),
    (["--device"], "device", str, "cpu, cuda, cuda:1... (default: cuda if available)"),
    (["--progress"], "progress", _flag, "a progress bar (default: on a terminal)"),
    (["--skip-bad", "--skip_bad"], "skip_bad", _flag, "leave unreadable files out (listed in EXP/skipped_entries.txt)"),
    (["--grad-checkpointing", "--grad_checkpointing"], "grad_checkpointing", _flag,
     "recompute block activations in backward: less memory for ~1/3 more compute"),
    (["--probe-train", "--probe_train"], "probe_train", str,
     "labelled clips (folder of class folders, CSV or datafile) the linear probe is fitted on"),
    (["--probe-valid", "--probe_valid"], "probe_valid", str, "labelled clips the linear probe is scored on"),
    (["--probe-every", "--probe_every"], "probe_every", _count, "score the linear probe every N epochs (and after the last)"),
]  # fmt: skip


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from ..train.pretrain import CHECKPOINT, PretrainConfig, pretrain

    values = {name: getattr(args, name) for _, name, _, _ in _FLAGS if getattr(args, name) is not None}
    cfg = PretrainConfig(data=args.paths, **values)
    state = pretrain(cfg)
    if state.rows:
        last = state.rows[-1]
        print(f"done: {state.epoch} epochs, loss {last[1]:.4f}, masked-patch accuracy {last[4]:.4f}; "
              f"model in {cfg.exp_dir}/models/{CHECKPOINT}")  # fmt: skip
    return 0


def add_commands(sub) -> None:
    from ..train.pretrain import PretrainConfig

    p = sub.add_parser(
        "pretrain", help="self-supervised pretraining (SSAST) on unlabelled audio; rerun the same command to resume",
        description="Pretrain an AST on unlabelled audio with SSAST's masked patch modelling (a discriminative and a "
        "generative objective on masked 16x16 patches). PATH: folders (any audio files below them), datafiles, CSVs "
        "or shards; labels are ignored. The model lands in EXP/models/pretrained.safetensors: give it to train as "
        "--audioset_pretrain (recipes: --set audioset_pretrain=PATH). Running the same command again resumes.",
    )  # fmt: skip
    p.add_argument("paths", nargs="+", metavar="PATH", help="folders, datafiles, CSVs or shards of audio")
    defaults = {f.name: f.default for f in dataclasses.fields(PretrainConfig)}
    for flags, name, kind, text in _FLAGS:
        nargs = "?" if kind is _flag else None
        extra = {"const": True} if nargs else {}
        p.add_argument(*flags, dest=name, type=kind, default=None, nargs=nargs,
                       help=f"{text} (default {defaults[name]!r})", **extra)  # fmt: skip
    p.set_defaults(func=_cmd_pretrain)
