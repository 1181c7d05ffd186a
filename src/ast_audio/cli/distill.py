"""``ast-audio distill``: a small, fast student taught by a checkpoint or an ensemble."""

from __future__ import annotations

import argparse
import dataclasses

from ..base.checks import number_arg
from ..model.students import STUDENTS


def _bool(value: str) -> bool:
    from ..train.config import parse_bool

    flag = parse_bool(value)
    if flag is None:
        raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")
    return flag


_TRAINING_FLAGS = [  # (flags, TrainConfig field, type): the train command's names and ranges
    (["--lr"], "lr", number_arg(above=0, high=10)),
    (["-b", "--batch-size"], "batch_size", number_arg(low=1, high=65_536, integer=True)),
    (["-w", "--num-workers"], "num_workers", number_arg(low=0, high=1024, integer=True)),
    (["--n-epochs"], "n_epochs", number_arg(low=1, high=100_000, integer=True)),
    (["--freqm"], "freqm", number_arg(low=0, high=100_000, integer=True)),
    (["--timem"], "timem", number_arg(low=0, high=100_000, integer=True)),
    (["--mixup"], "mixup", number_arg(low=0, high=1)),
    (["--lrscheduler-start"], "lrscheduler_start", number_arg(low=0, high=100_000, integer=True)),
    (["--lrscheduler-step"], "lrscheduler_step", number_arg(low=1, high=100_000, integer=True)),
    (["--lrscheduler-decay"], "lrscheduler_decay", number_arg(above=0, high=1)),
    (["--seed"], "seed", number_arg(low=0, high=4_294_967_295, integer=True)),
    (["--amp"], "amp", str),
    (["--cache-dir"], "cache_dir", str),
    (["--device"], "device", str),
    (["--clip-stats"], "clip_stats", _bool),
]
_HELP = {"clip_stats": "True: the student also gets the clip-statistics branch of recipe folder's from-scratch "
                       "preset, fitted on the labelled clips once distillation ends; its transformer is then taught "
                       "by the teachers' transformers alone (their branches left out) "}  # fmt: skip


def _cmd_distill(args: argparse.Namespace) -> int:
    from ..train.config import STUDENT_TRAINING, TrainConfig
    from ..train.distill import DistillConfig, distill

    given = {name: getattr(args, name) for _, name, _ in _TRAINING_FLAGS if getattr(args, name) is not None}
    train = TrainConfig(**{**STUDENT_TRAINING, **given, "exp_dir": args.exp_dir, "data_val": args.data_val,
                           "progress": args.progress})  # fmt: skip
    settings = DistillConfig(teachers=args.teacher, student=args.student, data_train=args.data_train,
                             unlabelled=args.unlabelled or [], draws=args.draws, top_k=args.top_k,
                             temperature=args.temperature, label_weight=args.label_weight, metrics=args.metrics,
                             train=train)  # fmt: skip
    state = distill(settings)
    if state.stopped:
        print(f"stopped after epoch {state.epoch}: {state.stopped}")
    if state.rows:
        print(f"done: {state.epoch} epochs, best at epoch {state.best_epoch} ({state.best_metric:.4f}); the student is "
              f"{args.exp_dir}/models/best_audio_model.safetensors")  # fmt: skip
    return 0


def add_commands(sub) -> None:
    from ..train.config import STUDENT_TRAINING, TrainConfig

    defaults = {**{f.name: f.default for f in dataclasses.fields(TrainConfig)}, **STUDENT_TRAINING}
    p = sub.add_parser(
        "distill", help="teach a small, fast student AST from a checkpoint (or an ensemble), labels and unlabelled audio",
        description="Distil one or more teacher checkpoints into a small AST student (a preset from --student). "
        "The teacher runs once over every clip and augmentation draw (the outputs are stored in EXP/teacher/, "
        "resumably); the student then replays exactly those draws. The student lands in EXP/models/ like a "
        "trained model. Running the same command again resumes.",
    )  # fmt: skip
    p.add_argument("--teacher", action="append", required=True, metavar="CKPT",
                   help="a checkpoint (any we load); repeat for an ensemble (the mean of their scores)")  # fmt: skip
    p.add_argument("--data-train", help="labelled clips: a datafile JSON, a CSV (filename,label) or a folder of "
                   "class folders; labels matched to the teacher's by name")  # fmt: skip
    p.add_argument("--unlabelled", action="append", metavar="DIR",
                   help="a folder of any audio files for the teacher to label (repeatable); long recordings are cut "
                   "to the model's length at a random place per draw")  # fmt: skip
    p.add_argument("--data-val", required=True, help="labelled validation clips (as --data-train)")
    p.add_argument("--student", required=True, choices=list(STUDENTS),
                   help="the student preset, smallest first (parameters, FLOPs and speed: docs/distill.md)")  # fmt: skip
    p.add_argument("--exp-dir", required=True)
    p.add_argument("--draws", type=number_arg(low=1, high=100_000, integer=True), default=None,
                   help="augmentation draws stored per clip (default: one per epoch; fewer are cycled)")  # fmt: skip
    p.add_argument("--top-k", type=number_arg(low=1, high=100_000, integer=True), default=20,
                   help="teacher scores kept per draw (default 20; all when the teacher has fewer classes)")  # fmt: skip
    p.add_argument("--temperature", type=number_arg(above=0, high=100), default=1.0,
                   help="KL temperature for a single-label (softmax) teacher (default 1)")  # fmt: skip
    p.add_argument("--label-weight", type=number_arg(low=0, high=1), default=0.1,
                   help="lambda: the labels' share of the loss where a clip has labels (default 0.1, as EfficientAT)")  # fmt: skip
    p.add_argument("--metrics", choices=("mAP", "acc"), default=None,
                   help="validation metric (default: acc for a single-label teacher, mAP for a multi-label one)")  # fmt: skip
    for flags, name, kind in _TRAINING_FLAGS:
        p.add_argument(*flags, dest=name, type=kind, default=None, help=f"{_HELP.get(name, '')}(default {defaults[name]!r})")
    p.add_argument("--progress", type=_bool, nargs="?", const=True, default=None, help="progress bars (default: on a terminal)")
    p.set_defaults(func=_cmd_distill)
