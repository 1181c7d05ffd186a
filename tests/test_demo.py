"""`ast-audio demo` (what `make demo` runs): the whole job on data the project makes itself."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from conftest import run_cli


def run_demo(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli("demo", "--out", out, *extra, timeout=900)


def test_small_demo_writes_everything_and_reruns_without_training(tmp_path):
    out = tmp_path / "demo"
    first = run_demo(out, "--per-class", "10", "--epochs", "2")
    assert first.returncode == 0, first.stderr[-2000:]
    accuracy = re.search(r"held-out accuracy: ([\d.]+)% on 22 clips of fold 5", first.stdout)
    assert accuracy, first.stdout
    assert len(re.findall(r"^  5-\S+\.wav +\S", first.stdout, flags=re.M)) == 11  # one tagged clip per class (background too)
    exp = out / "exp"
    for name in ("result.csv", "eval_result.csv", "curves.png", "confusion.png", "models/best_audio_model.safetensors"):
        assert (exp / name).stat().st_size > 0, name
    result = exp / "result.csv"
    stamp = result.stat().st_mtime_ns
    again = run_demo(out, "--per-class", "10", "--epochs", "2")
    assert again.returncode == 0 and result.stat().st_mtime_ns == stamp  # nothing retrained
    assert accuracy.group(0) in again.stdout


@pytest.mark.slow
def test_default_demo_reaches_90_percent_held_out(tmp_path):
    out = run_demo(tmp_path / "demo")
    assert out.returncode == 0, out.stderr[-2000:]
    accuracy = float(re.search(r"held-out accuracy: ([\d.]+)% on 440 clips", out.stdout).group(1))
    assert accuracy >= 90.0, out.stdout
