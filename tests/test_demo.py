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
def test_default_demo_reaches_85_percent_held_out(tmp_path):
    # The demo measured 88.2% on its 440 held-out clips (11 classes since the background
    # class joined the ten sounds; 92% on the ten alone). The standard error of an accuracy
    # near 0.88 on 440 clips is sqrt(0.88 * 0.12 / 440) = 1.5 points, and another CPU's float
    # rounding changes the training run's path: the bound sits two of them below the
    # measurement, while a broken pipeline (chance is 9%) or a broken class still fails it.
    out = run_demo(tmp_path / "demo")
    assert out.returncode == 0, out.stderr[-2000:]
    accuracy = float(re.search(r"held-out accuracy: ([\d.]+)% on 440 clips", out.stdout).group(1))
    assert accuracy >= 85.0, out.stdout
