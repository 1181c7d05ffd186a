"""Training settings: the one home of ``TrainConfig``, its file form and its checks.

``TrainConfig`` keeps the original ``run.py`` option names. Settings come, lowest to
highest, from the dataclass defaults, the older ``run.py``'s ``--dataset`` (see
:data:`DATASETS`), a TOML file (a ``[train]`` table of these names) and the command line.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from pathlib import Path

from ..base.checks import is_int, is_number
from ..base.fileio import read_toml
from ..errors import ConfigError
from ..features.contract import InputContract
from ..features.presets import PRESETS
from ..model.config import POOLS

# What the older run.py/traintest.py (the one the "hack" fork's run.sh drives) derived from
# ``--dataset``: input length, statistics, noise, loss, metric, warm-up, schedule and, for
# AudioSet, weight averaging. MultiStepLR milestones there were [10, 15, 20, 25] (balanced
# AudioSet), [2, 3, 4, 5] (full AudioSet, over 200k clips) and range(5, 26); here they are
# ``range(start, 1000, step)``, which is the same list up to the number of epochs the original
# recipes ran (25 and 5).
DATASETS: dict[str, dict] = {
    "audioset": dict(
        audio_length=PRESETS["audioset"].target_length, dataset_mean=PRESETS["audioset"].mean,
        dataset_std=PRESETS["audioset"].std, noise=False, loss="BCE", metrics="mAP", warmup=True,
        lrscheduler_start=10, lrscheduler_step=5, lrscheduler_decay=0.5, wa=True, wa_start=6, wa_end=25,
    ),
    "esc50": dict(
        audio_length=PRESETS["esc50"].target_length, dataset_mean=PRESETS["esc50"].mean,
        dataset_std=PRESETS["esc50"].std, noise=False, loss="CE", metrics="acc", warmup=False,
        lrscheduler_start=5, lrscheduler_step=1, lrscheduler_decay=0.85,
    ),
    "speechcommands": dict(
        audio_length=PRESETS["speechcommands"].target_length, dataset_mean=PRESETS["speechcommands"].mean,
        dataset_std=PRESETS["speechcommands"].std, noise=True, loss="BCE", metrics="acc", warmup=False,
        lrscheduler_start=5, lrscheduler_step=1, lrscheduler_decay=0.85,
    ),
}  # fmt: skip
FULL_AUDIOSET = 200_000  # more training clips than this: the full-AudioSet schedule and averaging
_FULL_AUDIOSET = dict(lrscheduler_start=2, lrscheduler_step=1, lrscheduler_decay=0.5, wa_start=1, wa_end=5)


# Booleans as the original's scripts wrote them: True/False, and `--bal bal` / `--bal none`.
TRUE_WORDS = frozenset({"true", "1", "yes", "y", "on", "bal"})
FALSE_WORDS = frozenset({"false", "0", "no", "n", "off", "none"})


def parse_bool(text: str) -> bool | None:
    """``True``/``False`` for a word of :data:`TRUE_WORDS`/:data:`FALSE_WORDS`, else ``None``."""
    low = text.strip().lower()
    return True if low in TRUE_WORDS else False if low in FALSE_WORDS else None


def _scalar(key: str, text: str, kinds: tuple) -> object:
    low = text.strip().lower()
    if type(None) in kinds and low in ("none", "null"):
        return None
    if bool in kinds:
        flag = parse_bool(text)
        if flag is not None:
            return flag
        if str in kinds:  # a checkpoint path or published name
            return text
        raise ConfigError(f"--set {key}={text}: expected true or false")
    numbers = [(kind, what) for kind, what in ((int, "an integer"), (float, "a number")) if kind in kinds]
    for kind, what in numbers:  # int | float (a count or a fraction): an integer if it is one
        try:
            return kind(text)
        except ValueError:
            if str not in kinds and kind is numbers[-1][0]:
                raise ConfigError(f"--set {key}={text}: expected {what}") from None
    return text


def coerce(key: str, text: str, kind: object) -> object:
    """The value of ``--set key=text`` for a setting of type ``kind`` (a type, a union, or,
    for recipe options, the shipped default whose type it takes)."""
    if not isinstance(kind, type) and not typing.get_args(kind):  # a default value
        if isinstance(kind, list):
            element = type(kind[0]) if kind else str
            parts = [p.strip() for p in text.strip().strip("[]").split(",") if p.strip()]
            try:
                return [_scalar(key, p, (element,)) for p in parts]
            except ConfigError:
                raise ConfigError(f"--set {key}={text}: expected a comma-separated list like 1,2") from None
        if isinstance(kind, float):
            return float(_scalar(key, text, (float,)))
        kind = type(kind)
    if typing.get_origin(kind) is tuple:  # e.g. betas: "0.9,0.999"
        parts = [p.strip() for p in text.strip().strip("()[]").split(",") if p.strip()]
        return tuple(_scalar(key, p, (typing.get_args(kind)[0],)) for p in parts)
    return _scalar(key, text, typing.get_args(kind) or (kind,))


def dataset_defaults(name: str, data_train: str | None = None) -> dict:
    """The settings the older ``run.py --dataset NAME`` implied; for AudioSet, the full-set
    schedule when the training datafile has more than 200k clips, as ``traintest.py`` chose."""
    if name not in DATASETS:
        raise ConfigError(f"--dataset must be one of {', '.join(DATASETS)}, got {name!r}")
    values = dict(DATASETS[name])
    if name == "audioset" and data_train:
        try:
            if Path(data_train).is_dir():  # WebDataset shards (ast_audio.data.shards): the index counts the clips
                clips = int(json.loads((Path(data_train) / "index.json").read_text(encoding="utf-8"))["samples"])
            else:
                clips = len(json.loads(Path(data_train).read_text(encoding="utf-8")).get("data", []))
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            clips = 0  # an unreadable datafile is reported by the trainer, with its name
        if clips > FULL_AUDIOSET:
            values.update(_FULL_AUDIOSET)
    return values


def resolve_train_config(*layers: dict) -> TrainConfig:
    """A ``TrainConfig`` from layers of settings, lowest first; a ``dataset`` named in any
    layer fills in its settings below every layer (only where no layer sets them)."""
    values: dict = {}
    for layer in layers:
        values.update(layer)
    if values.get("dataset"):
        values = {**dataset_defaults(values["dataset"], values.get("data_train")), **values}
    unknown = sorted(set(values) - set(TrainConfig.field_names()))
    if unknown:
        raise ConfigError(f"unknown training setting {unknown[0]!r}")
    try:
        return TrainConfig(**values)
    except TypeError as err:
        raise ConfigError(f"bad training settings: {err}") from None


def check_train_table(train: object, path: str | Path) -> dict:
    """A config file's table of TrainConfig settings, checked: every key a setting, a
    ``dataset`` one of :data:`DATASETS`; errors name the file."""
    if not isinstance(train, dict):
        raise ConfigError(f"{path}: [train] must be a table")
    unknown = sorted(set(train) - set(TrainConfig.field_names()))
    if unknown:
        raise ConfigError(f"{path}: unknown training setting {unknown[0]!r}")
    if train.get("dataset") is not None and train["dataset"] not in DATASETS:
        raise ConfigError(f"{path}: dataset must be one of {', '.join(DATASETS)}, got {train['dataset']!r}")
    return train


def load_config_file(path: str | Path) -> dict:
    """A config file: a TOML ``[train]`` table (or a bare table) of TrainConfig fields."""
    data = read_toml(path)
    return check_train_table(data.get("train", data), path)


# A student's training settings where the user gives none: the from-scratch preset's
# (recipes/scratch.toml: a small AST learning from a few hundred clips), with mixup on, since
# the teacher labels each mix.
STUDENT_TRAINING = {"lr": 3e-4, "batch_size": 16, "n_epochs": 20, "freqm": 24, "timem": 48, "mixup": 0.5,
                    "lrscheduler_start": 10, "lrscheduler_step": 5, "lrscheduler_decay": 0.5}  # fmt: skip


@dataclass
class TrainConfig:
    """The original ``run.py`` options (same names), plus ours at the end."""

    data_train: str = ""
    data_val: str = ""
    data_eval: str | None = None
    label_csv: str = ""
    n_class: int = 527
    exp_dir: str = "exp"
    lr: float = 0.001
    batch_size: int = 12
    num_workers: int = 0
    n_epochs: int = 1
    freqm: int = 0
    timem: int = 0
    mixup: float = 0.0
    bal: bool = False
    fstride: int = 10
    tstride: int = 10
    imagenet_pretrain: bool | str = True
    audioset_pretrain: bool | str = False
    dataset_mean: float = PRESETS["audioset"].mean
    dataset_std: float = PRESETS["audioset"].std
    audio_length: int = 1024
    noise: bool = False
    metrics: str = "mAP"
    loss: str = "BCE"
    warmup: bool = False
    lrscheduler_start: int = 2
    lrscheduler_step: int = 1
    lrscheduler_decay: float = 0.5
    wa: bool = False
    wa_start: int = 1
    wa_end: int = 10
    save_model: bool = False
    dataset: str | None = None  # the older run.py flag: fills in a dataset's settings (see DATASETS)
    # ours
    model_size: str = "base384"
    depth: int = 12
    pool: str = "cls"  # cls (AST's: the cls and dist tokens) | mean (the patch tokens; from-scratch preset)
    clip_stats: bool = False  # a linear branch over the clip's log-mel statistics, fitted after training
    num_mel_bins: int = 128
    seed: int = 0
    resample: bool = True  # False: features at each file's own sample rate (the "hack" fork's way)
    amp: str = "auto"  # auto (base.runtime.auto_amp: AST_AUDIO_PRECISION's pin, else bf16 where native, fp16 + scaler on other CUDA, else off) | off | bf16 | fp16
    fbank_on: str = "auto"  # auto (device on CUDA, else loader) | loader | device
    cache_dir: str | None = None  # decoded, resampled waveforms kept here for later epochs
    compile: bool = False  # torch.compile the model
    device: str | None = None
    skip_bad: bool = False
    progress: bool | None = None  # None: a bar only on a terminal
    # fine-tuning on small data and small GPUs (defaults: the original's behaviour)
    grad_accum: int = 1  # micro-batches of batch_size per optimiser step
    grad_checkpointing: bool = False  # recompute the blocks' activations in backward
    freeze: int | str | None = None  # N: patch embedding + first N blocks frozen; "all": only the head trains
    llrd: float = 1.0  # layer-wise lr decay: layer l of depth+1 (head) gets lr * llrd ** (depth + 1 - l)
    patience: int = 0  # stop after this many epochs without a main-metric gain over min_delta (0: never)
    min_delta: float = 0.0
    label_smoothing: float = 0.0  # CE only
    weight_decay: float = 5e-7  # Adam's, as the original
    betas: tuple[float, float] = (0.95, 0.999)  # Adam's, as the original
    # training faster (off by default: the original recipes stay exact)
    patchout_f: int | float = 0  # structured patchout: frequency rows dropped per step (count, or fraction < 1)
    patchout_t: int | float = 0  # ... and time columns
    bucket_by_length: bool = False  # batches of similar length, cut to their longest clip
    # what the checkpoint says of its labels
    none_label: str | None = None  # the class meaning "none of these" (a background class); ModelInfo.extra

    def __post_init__(self):
        if isinstance(self.betas, (list, tuple)):  # TOML gives a list; one form for resume comparisons
            self.betas = tuple(self.betas)
        if isinstance(self.freeze, str) and self.freeze.strip().lstrip("-").isdigit():
            self.freeze = int(self.freeze)

    def check(self) -> None:
        for name in ("data_train", "data_val", "label_csv"):
            if not getattr(self, name):
                raise ConfigError(f"--{name.replace('_', '-')} is required")
        if self.metrics not in ("mAP", "acc"):
            raise ConfigError(f"metrics must be 'mAP' or 'acc', got {self.metrics!r}")
        if self.pool not in POOLS:
            raise ConfigError(f"pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        if self.clip_stats and self.data_train and Path(self.data_train).is_dir():
            raise ConfigError("clip_stats needs a training datafile (it reads every training clip once more after "
                              f"training); {self.data_train} is a folder of shards")  # fmt: skip
        if self.loss not in ("BCE", "CE"):
            raise ConfigError(f"loss must be 'BCE' or 'CE', got {self.loss!r}")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            raise ConfigError(f"amp must be auto, off, bf16 or fp16, got {self.amp!r}")
        if self.fbank_on not in ("auto", "loader", "device"):
            raise ConfigError(f"fbank_on must be auto, loader or device, got {self.fbank_on!r}")
        if self.n_epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("n_epochs and batch_size must be positive and lr > 0")
        if self.none_label is not None and (not isinstance(self.none_label, str) or not self.none_label.strip()):
            raise ConfigError(f"none_label must be a label name, got {self.none_label!r}")
        if self.dataset is not None and self.dataset not in DATASETS:
            raise ConfigError(f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        self._check_fine_tuning()
        self._check_speed()
        if self.wa and not 1 <= self.wa_start <= self.wa_end:
            raise ConfigError(f"weight averaging needs 1 <= wa_start <= wa_end, got {self.wa_start}..{self.wa_end}")

    def _check_fine_tuning(self) -> None:
        if not is_int(self.grad_accum) or self.grad_accum < 1:
            raise ConfigError(f"grad_accum must be a positive integer, got {self.grad_accum!r}")
        if self.freeze is not None and self.freeze != "all":
            if not is_int(self.freeze) or not 0 <= self.freeze <= self.depth:
                raise ConfigError(f"freeze must be 0..depth ({self.depth}) or 'all', got {self.freeze!r}")
        if not 0 < self.llrd <= 1:
            raise ConfigError(f"llrd must be in (0, 1] (1: no decay), got {self.llrd!r}")
        if self.patience < 0 or self.min_delta < 0:
            raise ConfigError("patience and min_delta must be >= 0")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if self.label_smoothing and self.loss != "CE":
            raise ConfigError("label_smoothing applies to the CE loss only (use loss = 'CE')")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        betas = self.betas
        numbers = isinstance(betas, tuple) and all(is_number(b) for b in betas)
        if not numbers or len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {betas!r}")

    def _check_speed(self) -> None:
        for flag, value in (("f", self.patchout_f), ("t", self.patchout_t)):
            if not _patchout_value(value):
                raise ConfigError(f"patchout_{flag} must be a count (0, 1, 2...) or a fraction in (0, 1), got {value!r}")
        if not isinstance(self.bucket_by_length, bool):
            raise ConfigError(f"bucket_by_length must be true or false, got {self.bucket_by_length!r}")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


def _patchout_value(value: object) -> bool:
    """A patchout setting: a count (0, 1, 2..., a whole float included) or a fraction in (0, 1)."""
    return is_number(value) and value >= 0 and not (isinstance(value, float) and value >= 1 and not value.is_integer())


def patchout_drops(spec: tuple[float, float], grid: tuple[int, int]) -> tuple[int, int]:
    """How many frequency rows and time columns of a ``grid`` ``(f_dim, t_dim)`` patchout drops,
    from ``spec`` ``(f, t)`` (``--patchout-f``/``--patchout-t``): a whole number is a count
    (``4``: four rows), a number in (0, 1) a fraction (``0.4``: 40% of the columns, rounded),
    0 none. Dropping every row or every column (or a spec that is neither) is a :class:`ConfigError`."""
    drops = []
    for value, size, axis, flag in zip(spec, grid, ("frequency rows", "time columns"), ("f", "t"), strict=True):
        if not _patchout_value(value):
            raise ConfigError(f"--patchout-{flag} must be a count (0, 1, 2...) or a fraction in (0, 1), got {value!r}")
        count = round(value * size) if 0 < value < 1 else int(value)
        if count >= size:
            raise ConfigError(f"--patchout-{flag} {value:g} drops {count} of the {size} {axis}: at least one must stay")
        drops.append(count)
    return drops[0], drops[1]


def contract_of(cfg: TrainConfig) -> InputContract:
    """The input contract a run trains with (and writes into its checkpoints)."""
    return InputContract(
        num_mel_bins=cfg.num_mel_bins, target_length=cfg.audio_length, mean=cfg.dataset_mean, std=cfg.dataset_std,
        activation="sigmoid" if cfg.loss == "BCE" else "softmax", resample=cfg.resample,
    )  # fmt: skip
