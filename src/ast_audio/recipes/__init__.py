"""Recipes: from a dataset as its authors distribute it to the numbers the paper reports.

A recipe is three things (lhotse/icefall style): a ``prepare`` function that turns the
distributed layout into datafiles + a label CSV (checking every clip once and reporting
the bad ones), a config of hyper-parameters shipped with the package (``*.toml`` beside
this file: the original's values, SPEC §5), and a step that trains and writes the
recipe's deliverable:

=================  =====================================  ==========================================
recipe             config                                 deliverable (in the experiment folder)
=================  =====================================  ==========================================
``esc50``          ``esc50.toml``                         ``acc_fold.csv``: each fold's accuracy, mean
``speechcommands`` ``speechcommands.toml``                ``eval_result.csv``: best-on-valid on test
``audioset``       ``audioset_balanced.toml`` (default),  ``wa_result.csv`` + ``result.csv``;
                   ``audioset_full.toml`` (``--set full``) sampling weights beside the datafile
``csv``            ``csv.toml``                           ``submission.csv``: a label per test file
``folder``         ``folder.toml`` (AudioSet weights at   the best model; its validation (and
                   hand), else ``scratch.toml``           ``test_dir``) accuracy
``hack``           ``hack.toml``                          ``submission.csv`` (``final/`` with ``final``)
``hf``             ``hf.toml``                            the best model (``eval_result.csv`` with a test split)
=================  =====================================  ==========================================

Settings, lowest to highest: :class:`~ast_audio.train.loop.TrainConfig` defaults, the shipped
config, ``--config FILE`` (a TOML with a ``[train]`` table of TrainConfig fields and a
``[recipe]`` table of recipe options), then ``--set key=value`` (either kind; the string
is coerced to the setting's type: ``true``/``false``, integers, floats, ``1,2`` lists,
paths or names; ``none`` where a setting may be empty). The datafile, label and
experiment settings belong to the recipe and cannot be set.

Idempotence: prepared data goes to ``EXP/data`` (or ``--data-dir``) with a
``prepared.json`` stamp of its inputs; running the recipe again reuses it when the inputs
are unchanged, and training resumes in the same experiment folders (see
:func:`ast_audio.train.loop.train`), so an interrupted recipe is finished by running the same
command again. One recipe or training runs in an experiment folder at a time (``EXP/.lock``,
:mod:`ast_audio.base.lock`). A rerun whose data changed (a class gained) in a folder that
holds a run of the old data is refused before it trains, and the old data is put back
(:func:`~ast_audio.recipes.common.replacing_data`): the folder stays as that run left it. ``EXP/recipe.json`` records the resolved settings and
``EXP/recipe_result.json`` the deliverable's numbers.

Adding a recipe is registering it in :data:`RECIPES`: its entry brings the ``prepare``
function, the flags ``ast-audio prepare NAME`` takes for it (:func:`flag`, each filling
the ``prepare`` keyword of its name), the run step, the shipped configs and, optionally,
how the CLI shows its result. The CLI has no code per recipe.
"""

from __future__ import annotations

import json
import os
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..base.checks import checked_arg, number_arg
from ..base.fileio import read_toml
from ..base.lock import FolderLocked, folder_lock
from ..data.splits import check_valid_fraction
from ..errors import ConfigError, DataError
from ..train.config import coerce
from ..train.resume import RunRefused
from . import audioset, csvdata, esc50, folder, hack, hf, speechcommands
from .common import replacing_data, write_text_atomic

__all__ = ["RECIPES", "Flag", "Recipe", "RecipeContext", "config_path", "flag", "resolve_config", "run_recipe"]


@dataclass
class RecipeContext:
    """What a recipe's run step gets: where things are and the resolved settings."""

    name: str
    root: Path
    exp_dir: Path
    data_dir: Path
    train: dict  # TrainConfig fields (without the recipe's own data/label/exp settings)
    options: dict  # the [recipe] table
    user_set: frozenset[str] = frozenset()  # keys given with --set or in --config
    workers: int | None = None
    force_prepare: bool = False


@dataclass(frozen=True)
class Flag:
    """One flag of ``ast-audio prepare NAME`` besides ``--out`` and ``--workers``: the
    arguments of argparse's ``add_argument``. Its destination (``--audio-dir`` ->
    ``audio_dir``) is the keyword of the recipe's ``prepare`` that it fills."""

    names: tuple[str, ...]
    options: Mapping[str, object]


def flag(*names: str, **options: object) -> Flag:
    """``flag("--root", required=True, help=...)``, as ``parser.add_argument`` takes it."""
    return Flag(names, options)


@dataclass(frozen=True)
class Recipe:
    """A registered recipe: everything the library and the CLI need to know of it.

    ``prepare(**flags, out=..., workers=..., force=True)`` is called by ``ast-audio prepare``
    with the values of ``prepare_flags``; ``result_lines(result)`` gives what ``ast-audio
    recipe`` prints before the deliverable (default: one ``key: value`` line per number)."""

    name: str
    description: str
    prepare: Callable[..., dict]
    run: Callable[[RecipeContext], dict]
    configs: dict[str, str]  # variant -> shipped config file ("" when there is one)
    default_variant: str = ""
    variants: tuple[str, ...] = field(default=())
    prepare_help: str = ""  # the line of `ast-audio prepare --help` (default: description)
    prepare_flags: tuple[Flag, ...] = ()
    result_lines: Callable[[dict], list[str]] | None = None

    def config_file(self, variant: str = "") -> str:
        variant = variant or self.default_variant
        if variant not in self.configs:
            raise ConfigError(f"the {self.name} recipe has no variant {variant!r}; choose {', '.join(self.variants)}")
        return self.configs[variant]


RECIPES: dict[str, Recipe] = {
    "esc50": Recipe(
        "esc50", "ESC-50, five-fold cross-validation", esc50.prepare, esc50.run, {"": "esc50.toml"},
        prepare_help="ESC-50-master: five folds of train/eval datafiles",
        prepare_flags=(flag("--root", required=True, help="the ESC-50-master folder (meta/esc50.csv, audio/)"),),
        result_lines=esc50.result_lines,
    ),  # fmt: skip
    "speechcommands": Recipe(
        "speechcommands", "Speech Commands V2, 35 words", speechcommands.prepare, speechcommands.run,
        {"": "speechcommands.toml"},
        prepare_help="speech_commands_v0.02: train/valid/test datafiles",
        prepare_flags=(
            flag("--root", required=True, help="the speech_commands_v0.02 folder (word folders, *_list.txt)"),
        ),
    ),  # fmt: skip
    "audioset": Recipe(
        "audioset", "AudioSet, balanced or full training set", audioset.prepare, audioset.run,
        {"balanced": "audioset_balanced.toml", "full": "audioset_full.toml"}, "balanced", ("balanced", "full"),
        prepare_help="AudioSet segment CSVs + downloaded clips: datafiles, missing counts, weights",
        prepare_flags=(
            flag("--segments", nargs="+", required=True, help="*_segments.csv files"),
            flag("--audio-dir", required=True,
                 help="the downloaded clips (searched recursively, matched by YouTube id)"),
            flag("--label-csv", default=None, help="class_labels_indices.csv (default: the shipped one)"),
        ),
    ),  # fmt: skip
    "csv": Recipe(
        "csv", "any CSV-labelled dataset", csvdata.prepare, csvdata.run, {"": "csv.toml"},
        prepare_help="any CSV-labelled dataset: labels from the data, stratified validation split",
        prepare_flags=(
            flag("--train-csv", required=True, help="filename,<label column>"),
            flag("--audio-dir", required=True, help="folder of the training files"),
            flag("--label-column", default=None, help="default: the one column besides filename"),
            flag("--test-csv", default=None, help="filename only (unlabelled)"),
            flag("--test-audio-dir", default=None, help="folder of the test files (default: --audio-dir)"),
            flag("--valid-fraction", type=checked_arg(check_valid_fraction), default=0.2, help="stratified validation share (default 0.2)"),
            flag("--seed", type=number_arg(low=0, high=2**32 - 1, integer=True), default=0, help="seed of the validation split (default 0)"),
            flag("--audio-length", type=number_arg(low=1, high=100_000, integer=True), default=512, help="frames, for the normalisation statistics"),
            flag("--num-mel-bins", type=number_arg(low=1, high=1024, integer=True), default=128),
            flag("--folds", type=number_arg(low=0, high=100, integer=True), default=0, help="also K stratified cross-validation folds (default 0: none)"),
        ),
    ),  # fmt: skip
    "folder": Recipe(
        "folder", "a folder of your own sounds, one subfolder per class", folder.prepare, folder.run,
        {"": "folder.toml"},
        prepare_help="one subfolder per class: labels from the folder names, grouped validation split (takes and "
        "sessions kept together)",
        prepare_flags=(
            flag("root", metavar="DIR", help="one subfolder per class (nested folders belong to their class)"),
            flag("--valid-dir", default=None, help="a folder of the same layout as the validation set (no split)"),
            flag("--test-dir", default=None, help="a held-out folder of the same layout (test.json)"),
            flag("--valid-fraction", type=checked_arg(check_valid_fraction), default=0.2, help="grouped, stratified validation share (default 0.2)"),
            flag("--seed", type=number_arg(low=0, high=2**32 - 1, integer=True), default=0, help="seed of the split and folds (default 0)"),
            flag("--folds", type=number_arg(low=0, high=100, integer=True), default=0, help="also K cross-validation folds by groups (default 0: none)"),
            flag("--audio-length", type=number_arg(low=1, high=100_000, integer=True), default=None,
                 help="frames (default: the 90th percentile of the training clips' durations)"),
            flag("--num-mel-bins", type=number_arg(low=1, high=1024, integer=True), default=128),
        ),
        result_lines=folder.result_lines,
    ),
    "hack": Recipe(
        "hack", "the seed's 7 speech emotions, as its fork ran them", hack.prepare, hack.run, {"": "hack.toml"},
        prepare_help="the seed's folder: the fork's split (last 20%), all usable rows, the test list",
        prepare_flags=(
            flag("--root", required=True, help="train.csv, test.csv, TrainAudioFiles/, TestAudioFiles/"),
            flag("--label-column", default=None, help="default: the one column besides filename"),
            flag("--valid-fraction", type=checked_arg(check_valid_fraction), default=0.2, help="the last share of usable rows (default 0.2)"),
            flag("--stratify", action="store_true", help="a seeded stratified split instead of the last rows"),
            flag("--seed", type=number_arg(low=0, high=2**32 - 1, integer=True), default=0, help="seed of the stratified split (default 0)"),
        ),
    ),  # fmt: skip
    "hf": Recipe(
        "hf", "a Hugging Face datasets dataset on disk", hf.prepare, hf.run, {"": "hf.toml"},
        prepare_help="a datasets folder (save_to_disk, or parquet/arrow files): FLAC written once, datafiles",
        prepare_flags=(
            flag("--dataset", dest="dataset_dir", metavar="PATH", required=True,
                 help="a save_to_disk folder or a folder of .parquet/.arrow files (nothing is downloaded)"),
            flag("--audio-column", default="audio", help="default: audio"),
            flag("--label-column", default="label", help="ClassLabel, strings, integers or lists of them (default: label)"),
            flag("--valid-fraction", type=checked_arg(check_valid_fraction), default=0.2, help="stratified share of train when there is no validation split"),
            flag("--seed", type=number_arg(low=0, high=2**32 - 1, integer=True), default=0, help="seed of that split (default 0)"),
            flag("--audio-length", type=number_arg(low=1, high=100_000, integer=True), default=1024, help="frames, for the normalisation statistics"),
            flag("--num-mel-bins", type=number_arg(low=1, high=1024, integer=True), default=128),
        ),
    ),  # fmt: skip
}

# How a run is refused before it trains: its folder holds a run of other labels or settings, or
# another run holds a lock. The data it prepared is not kept (ast_audio.recipes.common).
REFUSALS = (RunRefused, FolderLocked, ConfigError)

# Settings each recipe sets itself (from the prepared data and --exp-dir).
RECIPE_OWNED = ("data_train", "data_val", "data_eval", "label_csv", "n_class", "exp_dir")


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ConfigError(f"no recipe {name!r}; known: {', '.join(RECIPES)}")
    return RECIPES[name]


def config_path(name: str, variant: str = "") -> Path:
    """The shipped config of a recipe (and variant)."""
    return Path(str(resources.files(__name__) / get_recipe(name).config_file(variant)))


def read_config(path: str | os.PathLike) -> tuple[dict, dict]:
    """``(train settings, recipe options)`` of a recipe config TOML."""
    from ..train.config import check_train_table

    path = Path(path)
    data = read_toml(path)
    options = data.get("recipe", {})
    if not isinstance(options, dict):
        raise ConfigError(f"{path}: [recipe] must be a table")
    train = check_train_table(data["train"] if "train" in data else {k: v for k, v in data.items() if k != "recipe"},
                              path)  # fmt: skip
    owned = sorted(set(train) & set(RECIPE_OWNED))
    if owned:
        raise ConfigError(f"{path}: {owned[0]!r} is set by the recipe itself")
    return train, options


# --------------------------------------------------------------------------- --set

def parse_sets(recipe: Recipe, sets: Iterable[str]) -> list[tuple[str, str]]:
    """``key=value`` items (``-`` in keys read as ``_``); a bare variant name means ``variant=NAME``."""
    pairs = []
    for item in sets:
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq:
            if key in recipe.variants:
                pairs.append(("variant", key))
                continue
            raise ConfigError(f"--set expects key=value, got {item!r}")
        if not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        pairs.append((key, value))
    return pairs


def resolve_config(
    name: str, sets: Iterable[str] = (), config: str | os.PathLike | None = None
) -> tuple[dict, dict, frozenset[str]]:
    """``(train settings, recipe options, keys the user set)``: shipped config < ``config`` < ``sets``.

    The user's keys are those of ``config`` and ``sets``: a recipe derives a setting (the
    ESC-50 lr without AudioSet pretraining, the csv statistics) only when the user did not."""
    from ..train.config import TrainConfig, resolve_train_config

    recipe = get_recipe(name)
    pairs = parse_sets(recipe, sets)
    variants = [value for key, value in pairs if key == "variant"]
    user_train, user_options = read_config(config) if config else ({}, {})
    variant = variants[-1] if variants else user_options.get("variant", "")
    train, options = read_config(config_path(name, variant))
    unknown = sorted(set(user_options) - set(options))
    if unknown:
        raise ConfigError(f"{config}: unknown option {unknown[0]!r} of the {name} recipe")
    train.update(user_train)
    options.update(user_options)
    hints = typing.get_type_hints(TrainConfig)
    for key, value in pairs:
        if key in RECIPE_OWNED:
            raise ConfigError(f"--set {key}: set by the {name} recipe itself (from the prepared data and --exp-dir)")
        if key in hints:
            train[key] = coerce(key, value, hints[key])
        elif key in options:
            options[key] = coerce(key, value, options[key])
        else:
            known = ", ".join(sorted(options)) or "none"
            raise ConfigError(
                f"--set {key}: unknown setting (training settings are TrainConfig's, as `ast-audio train` names them; "
                f"options of the {name} recipe: {known})"
            )
    probe = resolve_train_config(train, {"data_train": "-", "data_val": "-", "label_csv": "-"})
    probe.check()
    from ..model.config import SIZES

    if probe.model_size not in SIZES:
        raise ConfigError(f"unknown model_size {probe.model_size!r}; choose one of {', '.join(SIZES)}")
    return train, options, frozenset([key for key, _ in pairs] + list(user_train) + list(user_options))


def run_recipe(
    name: str,
    root: str | os.PathLike,
    exp_dir: str | os.PathLike,
    *,
    sets: Iterable[str] = (),
    config: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    force_prepare: bool = False,
    workers: int | None = None,
) -> dict:
    """Prepare (if needed), train with the recipe's settings and write its deliverable;
    returns the deliverable's path (``"deliverable"``) and numbers."""
    sets = list(sets)
    recipe = get_recipe(name)
    train, options, user_set = resolve_config(name, sets, config)
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError("dataset folder not found", root)
    exp = Path(exp_dir).expanduser().resolve()
    data = Path(data_dir).expanduser().resolve() if data_dir else exp / "data"
    ctx = RecipeContext(name, root, exp, data, train, options, user_set, workers, force_prepare)
    rank = int(os.environ.get("RANK", "0"))  # under torchrun rank 0 holds the lock for the run
    with folder_lock(exp, f"ast-audio recipe {name}", take=rank == 0):
        settings = exp / "recipe.json"
        before = settings.read_text(encoding="utf-8") if settings.is_file() else None
        write_text_atomic(settings, json.dumps({
            "recipe": name, "root": str(root), "data_dir": str(data), "config": str(config) if config else None,
            "set": sets, "options": options, "train": train,
        }, indent=2) + "\n")  # fmt: skip
        try:
            with replacing_data(REFUSALS):
                result = {"recipe": name, **recipe.run(ctx)}
        except REFUSALS:  # the folder stays as the run it holds left it
            if before is None:
                settings.unlink(missing_ok=True)
            else:
                write_text_atomic(settings, before)
            raise
        write_text_atomic(exp / "recipe_result.json", json.dumps(result, indent=2) + "\n")
    return result
