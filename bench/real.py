"""Real recordings: the from-scratch preset against a classic baseline on held-out groups.

One command (``.venv/bin/python bench/real.py [--cache DIR] [--quick]``, also run by ``make
bench``). The datasets are recordings Debian ships as packages (:mod:`realsets`: drum
kits' one-shot samples, held out by **kit**; voice prompts in five languages, held out by
**prompt**), fetched with ``apt-get download`` and unpacked with ``dpkg -x`` into
``--cache`` (no root needed; where apt-get or dpkg are missing the bench says so and
exits with status 2). Each dataset is laid out as ``CACHE/sets/<name>-s<seed>/{train,test}/<class>/``
and, on the same split, three ways are measured:

1. **default**: ``recipe folder`` as a user runs it (:func:`ast_audio.recipes.run_recipe`:
   the set's ``train`` folder in, ``--set test_dir=`` its ``test`` folder, ``preset=scratch``,
   so ``src/ast_audio/recipes/scratch.toml`` as shipped): statistics and input length (the
   90th percentile of the training clips' durations) from the training files, a fifth of the
   training groups held out for validation (whole groups: each side's ``groups.csv``), the
   best validation epoch with its clip-statistics branch fitted and mixed, scored on the
   test folder;
2. **best**: the same with the setting that did best on *validation* in the search that
   chose the preset (:data:`BEST`; the test split never chose anything);
3. **baseline**: per clip, the mean and standard deviation of each of the 128 log-mel bands
   (the same Kaldi filterbanks, :func:`ast_audio.features.kaldi.fbank`) and of their
   frame-to-frame differences, standardised, then scikit-learn's logistic regression with C
   chosen by grouped cross-validation on the training files only.

``--seeds`` repeats everything on other splits (other held-out groups); the table gives the
mean test accuracy and its spread over splits, and wall-clock seconds (the machine may be
shared: the seconds are as measured). ``--variant "name: key=value ..."`` adds rows of
other settings (the search); ``--only`` picks rows. Each result is also appended to
``CACHE/results.jsonl``; ``--from-results`` writes the table from the latest recorded result
of each dataset, split and row (for runs made side by side with ``--no-write``). Writes its table between the ``bench:real`` markers of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
import time
import typing
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import realsets
from common import BENCHMARKS, ROOT, machine, publish
from realsets import baseline

from ast_audio.checkpoints.load import load_model
from ast_audio.recipes import run_recipe
from ast_audio.train.config import TrainConfig, coerce, load_config_file

START, END = "<!-- bench:real:start -->", "<!-- bench:real:end -->"
SCRATCH = ROOT / "src" / "ast_audio" / "recipes" / "scratch.toml"
# Per dataset, the setting that did best on validation (split 0) among those tried with the
# trainer around the shipped preset (docs/benchmarks-real.md gives the search): its name and
# its overrides of the preset; none where the preset itself did best.
BEST: dict[str, dict[str, dict]] = {
    "drums": {"noise=true (best validation on split 0, not on the mean of splits)": {"noise": True}},
    "speech": {"the preset itself": {}},
    "voices": {"the preset itself": {}},  # not searched: a set that checks the choice
}




def scratch_settings() -> dict:
    return dict(load_config_file(SCRATCH))


def set_value(value) -> str:
    """A setting as ``--set key=value`` takes it (typed by the setting it names)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def ours(split_dir: Path, exp: Path, seed: int, overrides: dict, cache_dir: Path) -> dict:
    """``recipe folder`` on one split, as a user runs it: ``split_dir/train`` in, ``--set
    test_dir=split_dir/test``, the from-scratch preset (+ ``overrides``); test accuracy of its
    deliverable. Validation: the honest figure the run chose on (the clip-statistics choice's
    where the model has one: its regression is refitted on validation afterwards)."""
    shutil.rmtree(exp, ignore_errors=True)  # a fresh run: the recipe would resume a folder's earlier one
    begin = time.perf_counter()
    sets = [f"test_dir={split_dir / 'test'}", "preset=scratch", f"split_seed={seed}", f"seed={seed}",
            f"cache_dir={cache_dir}", "progress=false", "open_set=0",
            *[f"{key}={set_value(value)}" for key, value in overrides.items()]]  # fmt: skip
    result = run_recipe("folder", split_dir / "train", exp, sets=sets)
    model = load_model(result["deliverable"])
    choice = model.info.extra.get("clip_stats")
    valid = choice["valid"]["acc"] if choice else result["valid_acc"]
    return {"valid": valid, "test": result["test_acc"], "seconds": time.perf_counter() - begin,
            "best_epoch": result["best_epoch"], "audio_length": result["audio_length"],
            **({"clip_stats": choice} if choice else {})}  # fmt: skip


# --------------------------------------------------------------------------- the run


def parse_variant(text: str) -> tuple[str, dict]:
    """``"name: key=value key=value"`` -> ``(name, {key: value})``, values typed as TrainConfig's fields."""
    name, _, rest = text.partition(":")
    kinds = typing.get_type_hints(TrainConfig)
    values = {}
    for pair in rest.split():
        key, _, value = pair.partition("=")
        if key not in kinds:
            raise SystemExit(f"--variant {text!r}: unknown training setting {key!r}")
        values[key] = coerce(key, value, kinds[key])
    return name.strip(), values


def rows_for(name: str, args) -> list[tuple[str, dict | None]]:
    """The ways to measure on dataset ``name``: (label, overrides; None for the baseline)."""
    rows: list[tuple[str, dict | None]] = [("default", {})]
    if not args.quick:
        label, overrides = next(iter(BEST[name].items()))
        if overrides:
            rows.append((f"best: {label}", overrides))
    rows += [(label, values) for label, values in args.variant]
    rows.append(("baseline", None))
    return [r for r in rows if not args.only or r[0].split(":")[0] in args.only]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=realsets.DEFAULT_CACHE, help="where packages and sets are kept")
    parser.add_argument("--quick", action="store_true", help="one split, the default and the baseline")
    parser.add_argument("--datasets", default="drums,speech,voices", help="comma-separated: " + ", ".join(realsets.SETS))
    parser.add_argument("--seeds", default="0,1,2", help="splits (held-out groups) to average over")
    parser.add_argument("--variant", action="append", default=[], type=parse_variant,
                        help='another setting to measure: "name: key=value ..." (repeatable)')
    parser.add_argument("--only", default="", help="comma-separated row names to run (default, best, baseline, ...)")
    parser.add_argument("--from-results", action="store_true",
                        help="write the table from CACHE/results.jsonl (the latest result of each dataset, split "
                             "and row) instead of running: what runs side by side with --no-write measured")
    parser.add_argument("--note", default="", help="a line under the table, e.g. about the machine's load")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--output", type=Path, default=BENCHMARKS)
    args = parser.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    logging.basicConfig(level=logging.WARNING)
    cache = args.cache.expanduser()
    results: dict[tuple[str, str], list[dict]] = {}
    shapes: dict[str, list[str]] = {}
    if args.from_results:
        return publish(table(*recorded(cache, args, seeds), seeds, args), args, START, END)
    for name in [s.strip() for s in args.datasets.split(",") if s.strip()]:
        spec = realsets.SETS[name]
        for seed in seeds:
            try:
                sides = realsets.build(spec, cache, seed)
            except realsets.FetchError as err:
                print(f"bench/real.py: {err}", file=sys.stderr)
                return 2
            train_clips, test_clips = sides["train"], sides["test"]
            run_dir = cache / "runs" / f"{name}-s{seed}"
            shape = (f"split {seed}: {len({c.label for c in train_clips})} classes, {len(train_clips)} training clips "
                            f"({len({c.group for c in train_clips})} {spec.group_kind}s), {len(test_clips)} test clips "
                            f"({len({c.group for c in test_clips})} {spec.group_kind}s)")  # fmt: skip
            shapes.setdefault(name, []).append(shape)
            for label, overrides in rows_for(name, args):
                if overrides is None:
                    result = baseline(train_clips, test_clips)
                else:
                    exp = run_dir / safe(label)
                    result = ours(cache / "sets" / f"{name}-s{seed}", exp, seed, overrides, cache / "waves")
                result.update(dataset=name, seed=seed, row=label, overrides=overrides, shape=shape,
                              when=datetime.now(UTC).isoformat(timespec="seconds"))  # fmt: skip
                print(json.dumps(result), flush=True)
                with open(cache / "results.jsonl", "a") as fh:
                    fh.write(json.dumps(result) + "\n")
                results.setdefault((name, label), []).append(result)
    return publish(table(results, shapes, seeds, args), args, START, END)


def recorded(cache: Path, args, seeds: list[int]) -> tuple[dict, dict]:
    """The latest recorded result of each (dataset, split, row) asked for, as :func:`table` takes them."""
    latest: dict[tuple[str, int, str], dict] = {}
    names = [s.strip() for s in args.datasets.split(",") if s.strip()]
    with open(cache / "results.jsonl") as fh:
        for line in fh:
            r = json.loads(line)
            label, best = next(iter(BEST.get(r["dataset"], {"": {}}).items()))
            if best and r["overrides"] == best:  # the best setting, measured as a --variant
                r["row"] = f"best: {label}"
            if r["dataset"] in names and r["seed"] in seeds and (not args.only or r["row"].split(":")[0] in args.only):
                latest[(r["dataset"], r["seed"], r["row"])] = r
    results: dict[tuple[str, str], list[dict]] = {}
    shapes: dict[str, list[str]] = {}
    for (name, _, row), r in sorted(latest.items(), key=lambda kv: (names.index(kv[0][0]), kv[0][2] == "baseline")):
        results.setdefault((name, row), []).append(r)
        if row == "baseline":  # records before the recipe sized its own input ended with the bench's estimate
            shapes.setdefault(name, []).append(re.sub(r", \d+ frames$", "", r.get("shape", "")))
    return results, shapes


def safe(label: str) -> str:
    return realsets.safe_name(label)[:60]


def table(results: dict, shapes: dict, seeds: list[int], args) -> list[str]:
    preset = SCRATCH.read_text().split("[train]", 1)[1].strip().splitlines()
    lines = [
        START,
        "## Real recordings: the from-scratch preset against log-mel statistics + logistic regression",
        "",
        f"`python bench/real.py{' --quick' if args.quick else ''}` on {datetime.now(UTC):%Y-%m-%d}; {machine()}.",
        f"Splits (held-out groups): seeds {', '.join(map(str, seeds))}. Test accuracy of the model chosen on "
        "validation, mean ± spread (std) over the splits; seconds of wall-clock time per run, as measured "
        "(statistics, training, scoring; the baseline: features, search and fit). Valid accuracy: ours on the fifth "
        "of the training groups held out to choose the epoch and the mix (before the regression is refitted with "
        "them); the baseline's, of its grouped cross-validation.",
        "",
    ]
    for name, shape in shapes.items():
        lengths = [f"split {r['seed']}: {r['audio_length']}" for r in results.get((name, "default"), [])
                   if "audio_length" in r]  # fmt: skip
        sized = f"; the recipe's input, frames: {', '.join(lengths)}" if lengths else ""
        lines.append(f"- **{name}**: {'; '.join(s for s in shape if s)}{sized}")
    lines += ["", "| dataset | way | test accuracy | valid accuracy | seconds |", "|---|---|---|---|---|"]
    for (name, label), runs in results.items():
        test = np.array([r["test"] for r in runs])
        valid = np.array([r["valid"] for r in runs])
        secs = np.mean([r["seconds"] for r in runs])
        lines.append(f"| {name} | {label} | **{test.mean():.3f}** ± {test.std():.3f} | {valid.mean():.3f} | "
                     f"{secs:.0f} |")  # fmt: skip
    lines += ["", "The preset (`recipes/scratch.toml`):", "", "```toml", *[p for p in preset if p.strip()], "```"]
    if args.note:
        lines += ["", args.note]
    lines.append(END)
    return lines


if __name__ == "__main__":
    sys.exit(main())
