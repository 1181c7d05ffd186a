"""``ast-audio train | evaluate | weights | stats``: the original ``run.py`` flags and friends."""

from __future__ import annotations

import argparse
import dataclasses

from ..base.checks import check_number, number_arg
from ..errors import ConfigError
from ..train.config import parse_bool

_statistic = number_arg(low=-1000, high=1000)  # a normalisation mean of log-mel energies
_spread = number_arg(above=0, high=1000)  # their standard deviation
_workers = number_arg(low=0, high=1024, integer=True)  # DataLoader worker processes
# The range each integer flag is parsed into (the float flags' are in _TRAIN_FLAGS): beyond it no run can work
# (or fit in memory); TrainConfig.check then checks the settings together (wa_start <= wa_end, freeze <= depth...).
_INT_RANGES = {
    "n_class": (1, 100_000), "batch_size": (1, 65_536), "num_workers": (0, 1024), "n_epochs": (1, 100_000),
    "freqm": (0, 100_000), "timem": (0, 100_000), "fstride": (1, 1024), "tstride": (1, 1024),
    "audio_length": (1, 100_000), "lrscheduler_start": (0, 100_000), "lrscheduler_step": (1, 100_000),
    "wa_start": (0, 100_000), "wa_end": (0, 100_000), "depth": (1, 64), "num_mel_bins": (1, 1024),
    "seed": (0, 4_294_967_295), "grad_accum": (1, 65_536), "patience": (0, 100_000),
}


def _int(name: str):
    low, high = _INT_RANGES[name]
    return number_arg(low=low, high=high, integer=True)


def _flag(value: str) -> bool:
    """The original passed booleans as ``True``/``False`` (and ``--bal bal``/``none``)."""
    flag = parse_bool(value)
    if flag is None:
        raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")
    return flag


def _flag_or_path(value: str) -> bool | str:
    """``True``/``False`` as in the original, or a checkpoint file / published name."""
    flag = parse_bool(value)
    return value if flag is None else flag


def _count(value: str) -> int:
    """A count of 0 or more (at most a million)."""
    try:
        number = int(value)
    except ValueError:
        number = -1
    if not 0 <= number <= 1_000_000:
        raise argparse.ArgumentTypeError(f"expected a count (0 to 1000000), got {value!r}")
    return number


def _freeze(value: str) -> int | str:
    """``N`` (the patch embedding and the first N blocks) or ``all`` (everything but the head)."""
    if value.strip().lower() == "all":
        return "all"
    try:
        return check_number(int(value), "freeze", low=0, high=_INT_RANGES["depth"][1], integer=True)
    except (ValueError, ConfigError):
        raise argparse.ArgumentTypeError(f"expected a number of blocks (0 to 64) or 'all', got {value!r}") from None


def _betas(value: str) -> tuple[float, float]:
    """Adam's two betas, ``0.9,0.999``."""
    try:
        first, second = (check_number(float(v), "betas") for v in value.split(","))
    except (ValueError, ConfigError):
        raise argparse.ArgumentTypeError(f"expected two finite numbers like 0.9,0.999, got {value!r}") from None
    return first, second


def _count_or_fraction(value: str) -> int | float:
    """Patchout: a count of rows/columns (``4``) or a fraction of them (``0.4``)."""
    try:
        number = check_number(float(value), "patchout", low=-1024, high=1024)  # a grid is at most 1024 patches wide
    except (ValueError, ConfigError):
        raise argparse.ArgumentTypeError(f"expected a count like 4 or a fraction like 0.4, got {value!r}") from None
    return int(number) if number.is_integer() else number


# (flags, TrainConfig field, type); original names first, our spellings as aliases.
_TRAIN_FLAGS = [
    (["--data-train", "--data_train"], "data_train", str),
    (["--data-val", "--data_val"], "data_val", str),
    (["--data-eval", "--data_eval"], "data_eval", str),
    (["--label-csv", "--label_csv"], "label_csv", str),
    (["--n_class", "--n-class"], "n_class", _int("n_class")),
    (["--exp-dir", "--exp_dir"], "exp_dir", str),
    (["--lr"], "lr", number_arg(above=0, high=10)),
    (["-b", "--batch-size", "--batch_size"], "batch_size", _int("batch_size")),
    (["-w", "--num-workers", "--num_workers"], "num_workers", _int("num_workers")),
    (["--n-epochs", "--n_epochs"], "n_epochs", _int("n_epochs")),
    (["--freqm"], "freqm", _int("freqm")),
    (["--timem"], "timem", _int("timem")),
    (["--mixup"], "mixup", number_arg(low=0, high=1)),
    (["--bal"], "bal", _flag),
    (["--fstride"], "fstride", _int("fstride")),
    (["--tstride"], "tstride", _int("tstride")),
    (["--imagenet_pretrain", "--imagenet-pretrain"], "imagenet_pretrain", _flag_or_path),
    (["--audioset_pretrain", "--audioset-pretrain"], "audioset_pretrain", _flag_or_path),
    (["--dataset_mean", "--dataset-mean"], "dataset_mean", _statistic),
    (["--dataset_std", "--dataset-std"], "dataset_std", _spread),
    (["--audio_length", "--audio-length"], "audio_length", _int("audio_length")),
    (["--noise"], "noise", _flag),
    (["--metrics"], "metrics", str),
    (["--loss"], "loss", str),
    (["--warmup"], "warmup", _flag),
    (["--lrscheduler_start"], "lrscheduler_start", _int("lrscheduler_start")),
    (["--lrscheduler_step"], "lrscheduler_step", _int("lrscheduler_step")),
    (["--lrscheduler_decay"], "lrscheduler_decay", number_arg(above=0, high=1)),
    (["--wa"], "wa", _flag),
    (["--wa_start"], "wa_start", _int("wa_start")),
    (["--wa_end"], "wa_end", _int("wa_end")),
    (["--save_model", "--save-model"], "save_model", _flag),
    (["--dataset"], "dataset", str),
    (["--model-size", "--model_size"], "model_size", str),
    (["--depth"], "depth", _int("depth")),
    (["--pool"], "pool", str),
    (["--clip-stats", "--clip_stats"], "clip_stats", _flag),
    (["--num-mel-bins", "--num_mel_bins"], "num_mel_bins", _int("num_mel_bins")),
    (["--seed"], "seed", _int("seed")),
    (["--resample"], "resample", _flag),
    (["--amp"], "amp", str),
    (["--fbank-on", "--fbank_on"], "fbank_on", str),
    (["--cache-dir", "--cache_dir"], "cache_dir", str),
    (["--compile"], "compile", _flag),
    (["--device"], "device", str),
    (["--skip-bad", "--skip_bad"], "skip_bad", _flag),
    (["--progress"], "progress", _flag),
    (["--grad-accum", "--grad_accum"], "grad_accum", _int("grad_accum")),
    (["--grad-checkpointing", "--grad_checkpointing"], "grad_checkpointing", _flag),
    (["--freeze"], "freeze", _freeze),
    (["--llrd"], "llrd", number_arg(above=0, high=1)),
    (["--patience"], "patience", _int("patience")),
    (["--min-delta", "--min_delta"], "min_delta", number_arg(low=0, high=1000)),
    (["--label-smoothing", "--label_smoothing"], "label_smoothing", number_arg(low=0, high=1)),
    (["--weight-decay", "--weight_decay"], "weight_decay", number_arg(low=0, high=1000)),
    (["--betas"], "betas", _betas),
    (["--patchout-f", "--patchout_f"], "patchout_f", _count_or_fraction),
    (["--patchout-t", "--patchout_t"], "patchout_t", _count_or_fraction),
    (["--bucket-by-length", "--bucket_by_length"], "bucket_by_length", _flag),
    (["--none-label", "--none_label"], "none_label", str),
]
# When to reach for the fine-tuning flags (the README's "Fine-tuning on your data" says more).
_HELP = {
    "grad_accum": "optimiser step every K micro-batches of -b clips: a large batch on a small GPU",
    "grad_checkpointing": "recompute block activations in backward: less memory for ~1/3 more compute",
    "freeze": "freeze the patch embedding and the first N blocks; 'all' = linear probe (few clips per class)",
    "llrd": "layer-wise lr decay, e.g. 0.75: lower layers move less than the head (small data)",
    "patience": "stop after N epochs without a gain of the main metric over --min-delta (0: never)",
    "min_delta": "the smallest gain that counts for --patience",
    "label_smoothing": "CE only: soften one-hot targets, e.g. 0.1, against over-confident overfitting",
    "weight_decay": "Adam's weight decay",
    "betas": "Adam's betas, as 0.95,0.999",
    "patchout_f": "structured patchout (training only): drop N frequency rows of the patch grid per step, "
    "or a fraction like 0.3",
    "patchout_t": "structured patchout: drop N time columns per step, or a fraction like 0.4",
    "none_label": "the label meaning 'none of these' (a background class), recorded in the checkpoint",
    "pool": "what the head reads: cls (AST's cls and dist tokens) or mean (the patch tokens: small models "
    "from scratch)",
    "clip_stats": "add a linear branch over each clip's per-band log-mel statistics, fitted after training and "
    "mixed with the transformer on validation (the from-scratch preset's; see docs/benchmarks-real.md)",
    "bucket_by_length": "group clips of similar length into batches and cut each batch to its longest clip",
}
# Accepted for compatibility with the original's scripts, without effect here.
_IGNORED = ["--model", "--n-print-steps", "--lr_patience", "--lr-patience"]


def train_config_from_args(args: argparse.Namespace):
    """Defaults <- ``--dataset``'s settings <- ``--config`` file <- flags given on the command line."""
    from ..train.config import load_config_file, resolve_train_config

    values = load_config_file(args.config) if args.config else {}
    flags = {name: getattr(args, name) for _, name, _ in _TRAIN_FLAGS if getattr(args, name) is not None}
    return resolve_train_config(values, flags)


def _cmd_train(args: argparse.Namespace) -> int:
    from ..train.loop import train

    cfg = train_config_from_args(args)
    state = train(cfg)
    if state.stopped:
        print(f"stopped after epoch {state.epoch}: {state.stopped}")
    if state.rows:
        print(f"done: {state.epoch} epochs, best {cfg.metrics} {state.best_metric:.4f} at epoch {state.best_epoch}; "
              f"results in {cfg.exp_dir}")  # fmt: skip
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import tempfile

    from ..train.evaluate import evaluate, write_stats_csv
    from ..train.report import summary_lines, write_html, write_report_files

    ev = evaluate(
        args.checkpoint, args.data, args.label_csv, batch_size=args.batch_size, num_workers=args.num_workers,
        device=args.device, dataset_mean=args.dataset_mean, dataset_std=args.dataset_std,
    )  # fmt: skip
    print("\n".join(summary_lines(ev)))
    if args.out:
        write_stats_csv(args.out, ev.results)
    if args.out_dir or args.report:
        with tempfile.TemporaryDirectory(prefix="ast-audio-report-") as scratch:
            files = write_report_files(ev, args.out_dir or scratch, args.mistakes)
            if args.report:
                files["report"] = write_html(ev, args.report, files, args.mistakes)
            if args.out_dir:
                print(f"tables and figures in {args.out_dir}")
            if args.report:
                print(f"report: {files['report']}")
    return 0


def _cmd_weights(args: argparse.Namespace) -> int:
    from ..data.datafiles import read_datafile, write_weights

    out = write_weights(read_datafile(args.datafile, args.label_csv), args.out)
    print(out)
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    from ..data.datafiles import read_datafile
    from ..data.dataset import AudioDataset, norm_stats
    from ..features.contract import InputContract

    datafile = read_datafile(args.datafile, args.label_csv)
    conf = InputContract(num_mel_bins=args.num_mel_bins, target_length=args.audio_length)
    mean, std = norm_stats(AudioDataset(datafile, conf), num_workers=args.num_workers)
    print(f"dataset_mean={mean:.7f} dataset_std={std:.7f}")
    return 0


def add_commands(sub) -> None:
    from ..train.config import DATASETS, TrainConfig

    p = sub.add_parser(
        "train", help="train or fine-tune (the original run.py flags; rerun the same command to resume)",
        description="Train AST. Flags keep the original run.py names; booleans take True/False. "
        "Settings: defaults < --config FILE (TOML) < flags. Running the same command again resumes.",
    )  # fmt: skip
    p.add_argument("--config", help="a recipe config (TOML) whose settings the flags override")
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for flags, name, kind in _TRAIN_FLAGS:
        nargs = "?" if kind in (_flag, _flag_or_path) else None
        extra = {"const": True} if nargs else {}
        text = f"(default {defaults[name]!r})"
        if name in _HELP:
            text = f"{_HELP[name]} {text}"
        if name == "dataset":
            extra["choices"] = list(DATASETS)
            text = "the older run.py flag: fill in that dataset's length, statistics, noise, loss, metric, warm-up, "
            text += "schedule (and AudioSet's weight averaging) where no flag or --config sets them"
        p.add_argument(*flags, dest=name, type=kind, default=None, nargs=nargs, help=text, **extra)
    for flag in _IGNORED:
        p.add_argument(flag, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "evaluate", help="score checkpoints (and their ensemble) on labelled clips; per-class table, mistakes, report",
        description="Score checkpoints (several: also their ensemble) on a datafile JSON, a CSV (filename,label) or "
        "a folder with one subfolder per class. Prints the totals, the per-class table and the most confident "
        "mistakes; --out-dir writes them as CSV with the confusion matrix as PNG, --report as one HTML page.",
    )  # fmt: skip
    p.add_argument("--checkpoint", nargs="+", required=True, help="one or more checkpoints; several = ensemble")
    p.add_argument("--data", required=True,
                   help="a datafile JSON, a CSV with 'filename' and 'label' columns, or a folder of class folders")  # fmt: skip
    p.add_argument("--label-csv", default=None,
                   help="label table (index,mid,display_name) the data's labels refer to, matched to each checkpoint's "
                   "labels by name; default: the datafile's own labels, or for a CSV or folder the checkpoint's")  # fmt: skip
    p.add_argument("-b", "--batch-size", type=number_arg(low=1, high=65536, integer=True), default=32)
    p.add_argument("-w", "--num-workers", type=_workers, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--dataset-mean", type=_statistic, default=None, help="override the checkpoint's statistics")
    p.add_argument("--dataset-std", type=_spread, default=None)
    p.add_argument("--out", help="write the rows as CSV here")
    p.add_argument("--out-dir", help="write stats.csv, classes.csv, confusion.png/.csv, mistakes.csv "
                   "(and curves.png, from the checkpoint's run folder) here")  # fmt: skip
    p.add_argument("--mistakes", type=_count, default=20, metavar="N",
                   help="list the N most confident mistakes in mistakes.csv and the report (default 20)")  # fmt: skip
    p.add_argument("--report", metavar="FILE.html", help="write one self-contained HTML page: totals, per-class "
                   "table, confusion, mistakes with their audio, training curves")  # fmt: skip
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("weights", help="balanced-sampling weights of a datafile (written next to it)")
    p.add_argument("datafile")
    p.add_argument("--label-csv", required=True)
    p.add_argument("--out", help="default: <datafile>_weight.csv, as the original")
    p.set_defaults(func=_cmd_weights)

    p = sub.add_parser("stats", help="normalisation statistics (dataset_mean, dataset_std) of a datafile")
    p.add_argument("datafile")
    p.add_argument("--label-csv", required=True)
    p.add_argument("--audio-length", type=number_arg(low=1, high=100_000, integer=True), default=1024,
                   help="frames, as in training")  # fmt: skip
    p.add_argument("--num-mel-bins", type=number_arg(low=1, high=1024, integer=True), default=128)
    p.add_argument("-w", "--num-workers", type=_workers, default=0)
    p.set_defaults(func=_cmd_stats)
