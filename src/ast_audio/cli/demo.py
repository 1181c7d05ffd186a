"""``ast-audio demo``: make data, train a tiny AST on the CPU, evaluate and tag files (offline)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..base.checks import number_arg

DEFAULT_SCENES = 4  # calibration recordings of the demo where the events extra is installed


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    from ..infer.scoring import missing_event_packages
    from ..recipes.demo import TEST_FOLD, run_demo

    if args.scenes is None:  # calibrate events where the events extra is installed; a plain install says so and goes on
        missing = missing_event_packages()
        args.scenes = 0 if missing else DEFAULT_SCENES
        if missing:
            print(f"ast-audio demo: event thresholds not calibrated ({' and '.join(missing)} missing: "
                  "pip install 'ast-audio[events]')", file=sys.stderr, flush=True)  # fmt: skip
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


def add_commands(sub) -> None:
    p = sub.add_parser("demo", help="make data, train a tiny AST on the CPU, evaluate and tag files (offline)")
    p.add_argument("--out", default="runs/demo", help="where the data, the run and the plots go")
    p.add_argument("--per-class", type=number_arg(low=5, high=100_000, integer=True), default=200, help="synthetic clips per class")
    p.add_argument("--epochs", type=number_arg(low=1, high=100_000, integer=True), default=None, help="default: recipes/demo.toml's (20)")
    p.add_argument("--seed", type=number_arg(low=0, high=2**32 - 1 - 5003, integer=True), default=0)
    p.add_argument("--scenes", type=number_arg(low=0, high=1000, integer=True), default=None,
                   help=f"recordings (30-60 s, seed + 5003) that calibrate the event thresholds ({DEFAULT_SCENES}; "
                   "0: none; default 0 where the events extra is not installed)")  # fmt: skip
    p.set_defaults(func=_cmd_demo)
