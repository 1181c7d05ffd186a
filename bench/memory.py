"""Peak memory of a base384 training step, with and without gradient checkpointing.

One command (``.venv/bin/python bench/memory.py``, also run by ``make bench``). Each
setting runs in a fresh subprocess (peak RSS is a per-process high-water mark): a random
base384 model (strides 10/10, 1024 frames, 527 classes), the library's training step
(:func:`ast_audio.train.loop.train_step`: forward, BCE, backward, fused Adam) ``--steps`` times
on ``--batch`` clips, fp32, with ``set_grad_checkpointing`` off or on. Reported: the
process's peak RSS, its RSS just before the first step (model, optimiser, imports), the
difference (what the step added, activations and gradients and Adam's state), and on
CUDA ``torch.cuda.max_memory_allocated``. The machine is shared, so only the memory
figures mean something; the seconds are shown for the recomputation's cost in kind.

Writes its table between the ``bench:memory`` markers of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from common import BENCHMARKS, machine, publish, train_step_fn

START, END = "<!-- bench:memory:start -->", "<!-- bench:memory:end -->"


def rss_mib() -> float:
    """This process's current resident set, MiB (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(checkpointing: bool, batch: int, steps: int, device: str, size: str, frames: int) -> dict:
    from ast_audio.model import ASTModel

    torch.manual_seed(0)
    model = ASTModel(label_dim=527, input_tdim=frames, imagenet_pretrain=False, model_size=size, verbose=False)
    model.to(device).set_grad_checkpointing(checkpointing)
    step = train_step_fn(model, model)
    x = torch.randn(batch, frames, 128, device=device)
    target = torch.zeros(batch, 527, device=device)
    before = rss_mib()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_before = torch.cuda.memory_allocated()
    begin = time.perf_counter()
    for _ in range(steps):
        step(x, target)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - begin) / steps
    result = {"before": before, "peak": peak_rss_mib(), "seconds": seconds,
              "parameters": sum(p.numel() for p in model.parameters())}  # fmt: skip
    if device == "cuda":
        result["cuda_peak"] = torch.cuda.max_memory_allocated() / 2**20
        result["cuda_before"] = cuda_before / 2**20
    return result


def measure(checkpointing: bool, args) -> dict:
    cmd = [sys.executable, __file__, "--child", "on" if checkpointing else "off", "--batch", str(args.batch),
           "--steps", str(args.steps), "--device", args.device, "--model-size", args.model_size,
           "--frames", str(args.frames)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=Path(__file__).parent)
    if out.returncode:
        raise SystemExit(f"bench/memory.py: the measuring process failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2, help="clips per training step")
    parser.add_argument("--steps", type=int, default=2, help="training steps per setting")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model-size", default="base384", help="(a smaller one only to test the script)")
    parser.add_argument("--frames", type=int, default=1024)
    parser.add_argument("--child", choices=["off", "on"], help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--output", type=Path, default=BENCHMARKS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child == "on", args.batch, args.steps, args.device, args.model_size, args.frames)))
        return 0

    runs = {flag: measure(flag, args) for flag in (False, True)}
    cuda = args.device == "cuda"
    lines = [
        START,
        "## Memory: gradient checkpointing (`bench/memory.py`)",
        "",
        f"A {args.model_size} training step (strides 10/10, {args.frames} frames, 527 classes, fp32, fused Adam), "
        f"{args.batch} clips, "
        f"{args.steps} steps per setting, each setting in its own process, on {args.device}. "
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}.",
        "",
        "| `--grad-checkpointing` | peak RSS (MiB) | RSS before the step (MiB) | added by the step (MiB) "
        + ("| CUDA max allocated (MiB) " if cuda else "") + "| s/step |",
        "| --- | ---: | ---: | ---: | " + ("---: | " if cuda else "") + "---: |",
    ]
    for flag, r in runs.items():
        cells = [str(flag), f"{r['peak']:,.0f}", f"{r['before']:,.0f}", f"{r['peak'] - r['before']:,.0f}"]
        if cuda:
            cells.append(f"{r['cuda_peak']:,.0f}")
        lines.append("| " + " | ".join(cells + [f"{r['seconds']:.2f}"]) + " |")
    off, on = runs[False], runs[True]
    saved = (off["peak"] - off["before"]) - (on["peak"] - on["before"])
    ratio = (on["peak"] - on["before"]) / max(off["peak"] - off["before"], 1e-9)
    fixed = 3 * 4 * off["parameters"] / 2**20  # fp32 gradients and Adam's two moments
    lines += ["", f"Checkpointing the blocks saves {saved:,.0f} MiB of what the step adds "
              f"({ratio:.2f}x of it remains). Of what the step adds, {fixed:,.0f} MiB are the gradients and Adam's "
              f"two moments (3 x 4 bytes x {off['parameters'] / 1e6:.1f}M parameters), the same either way; the rest, "
              f"activations and workspace, is {off['peak'] - off['before'] - fixed:,.0f} MiB without checkpointing "
              f"and {on['peak'] - on['before'] - fixed:,.0f} MiB with it. The seconds are on a shared machine and only "
              "indicative."]  # fmt: skip
    if cuda:
        lines.append(f"CUDA max allocated: {on['cuda_peak'] / off['cuda_peak']:.2f}x with checkpointing.")
    else:
        lines.append("No GPU in this run: CUDA max allocated is measured where one is available.")
    lines.append(END)
    return publish(lines, args, START, END)


if __name__ == "__main__":
    sys.exit(main())
