"""``ast-audio prepare DATASET ...`` and ``ast-audio recipe NAME ...``: datasets as distributed,
prepared and trained with the original hyper-parameters (see :mod:`ast_audio.recipes`)."""

from __future__ import annotations

import argparse
import json

from ..base.checks import number_arg


def _print_prepared(summary: dict, out: str) -> None:
    for key, value in summary.items():
        if key not in ("report", "label_csv"):
            print(f"{key}: {json.dumps(value)}")
    print(f"label CSV: {summary['label_csv']}")
    print(f"bad files: {summary['bad_files']} (listed in {summary['report']})")
    print(f"prepared in {out}")


def _cmd_prepare(args: argparse.Namespace) -> int:
    from ..recipes import get_recipe

    recipe = get_recipe(args.dataset)
    values = {key: getattr(args, key) for key in args.prepare_keys}
    summary = recipe.prepare(**values, out=args.out, workers=args.workers, force=True)
    _print_prepared(summary, args.out)
    return 0


def _result_lines(result: dict) -> list[str]:
    """The default report of a recipe's result: one ``key: value`` line per entry."""
    return [
        f"{key}: {value if isinstance(value, str) else json.dumps(value)}"
        for key, value in result.items()
        if key not in ("recipe", "deliverable")
    ]


def _cmd_recipe(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..recipes import get_recipe, run_recipe

    if args.root and args.dir and args.root != args.dir:
        raise ConfigError(f"two dataset folders given: {args.dir} and --root {args.root}")
    root = args.root or args.dir
    if not root:
        raise ConfigError(f"give the dataset folder: ast-audio recipe {args.name} DIR --exp-dir EXP")
    result = run_recipe(
        args.name, root, args.exp_dir, sets=args.set or (), config=args.config, data_dir=args.data_dir,
        force_prepare=args.force_prepare, workers=args.workers,
    )  # fmt: skip
    for line in (get_recipe(args.name).result_lines or _result_lines)(result):
        print(line)
    print(f"deliverable: {result['deliverable']}")
    return 0


_workers = number_arg(low=1, high=1024, integer=True)  # threads decoding clips


def _literal(text: str | None) -> str | None:
    """A recipe's own words as an argparse help text: argparse %-formats help (``%(default)s``),
    so a literal ``%`` ("the last 20%") is doubled."""
    return None if text is None else text.replace("%", "%%")


def add_commands(sub) -> None:
    from ..recipes import RECIPES

    p = sub.add_parser(
        "prepare", help="turn a dataset as distributed into datafiles + label CSV (bad clips reported)",
        description="Check every clip once and write datafiles, the label CSV, bad_files.txt (path: reason) "
        "and prepared.json into --out.",
    )  # fmt: skip
    datasets = p.add_subparsers(dest="dataset", required=True)
    for recipe in RECIPES.values():  # each recipe brings its own flags; they fill its prepare()'s keywords
        q = datasets.add_parser(recipe.name, help=_literal(recipe.prepare_help or recipe.description))
        q.add_argument("--out", required=True, help="folder for the prepared data")
        q.add_argument("-w", "--workers", type=_workers, default=None, help="threads decoding clips (default: up to 8)")
        keys = [q.add_argument(*f.names, **{**f.options, "help": _literal(f.options.get("help"))}).dest
                for f in recipe.prepare_flags]
        q.set_defaults(func=_cmd_prepare, prepare_keys=keys)

    p = sub.add_parser(
        "recipe", help="prepare (if needed), train with a recipe's original settings, write its deliverable",
        description="Recipes: " + "; ".join(f"{r.name}: {r.description}" for r in RECIPES.values()) + ". "
        "Settings: the shipped config < --config FILE < --set key=value. Run the same command again to resume.",
    )  # fmt: skip
    p.add_argument("name", choices=list(RECIPES))
    p.add_argument("dir", nargs="?", default=None, metavar="DIR", help="the dataset as distributed (or --root)")
    p.add_argument("--root", default=None, help="the dataset as distributed (or DIR)")
    p.add_argument("--exp-dir", required=True, help="experiment folder (runs, deliverable; data/ unless --data-dir)")
    p.add_argument("--data-dir", default=None, help="where prepared data goes (default: EXP_DIR/data)")
    p.add_argument("--config", default=None, help="a TOML with [train] / [recipe] tables over the shipped config")
    p.add_argument(
        "--set", nargs="+", action="extend", metavar="KEY=VALUE",
        help="override settings, e.g. --set preset=scratch n_epochs=3 (folder: from scratch, offline), "
        "--set model_size=tiny224 imagenet_pretrain=false audioset_pretrain=false n_epochs=3 (any recipe, offline), "
        "--set valid_dir=HELD_OUT (folder); audioset: --set full for the full set",
    )  # fmt: skip
    p.add_argument("--force-prepare", action="store_true", help="prepare again even if the stamp matches")
    p.add_argument("-w", "--workers", type=_workers, default=None, help="threads decoding clips during prepare")
    p.set_defaults(func=_cmd_recipe)
