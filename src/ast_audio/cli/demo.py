"""``ast-audio demo``: make data, train a tiny AST on the CPU, evaluate and tag files (offline)."""

from __future__ import annotations

import argparse
from pathlib import Path


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


def add_commands(sub) -> None:
    p = sub.add_parser("demo", help="make data, train a tiny AST on the CPU, evaluate and tag files (offline)")
    p.add_argument("--out", default="runs/demo", help="where the data, the run and the plots go")
    p.add_argument("--per-class", type=int, default=200, help="synthetic clips per class")
    p.add_argument("--epochs", type=int, default=None, help="default: recipes/demo.toml's (20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scenes", type=int, default=4,
                   help="recordings (30-60 s, seed + 5003) that calibrate the event thresholds (4; 0: none)")  # fmt: skip
    p.set_defaults(func=_cmd_demo)
