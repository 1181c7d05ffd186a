"""`ast-audio demo` (what `make demo` runs): the whole job on data the project makes itself."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from conftest import run_main


def run_demo(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_main("demo", "--out", out, *extra, timeout=900)


def test_small_demo_writes_everything_and_reruns_without_training(tmp_path):
    out = tmp_path / "demo"
    first = run_demo(out, "--per-class", "10", "--epochs", "2", "--scenes", "1")
    assert first.returncode == 0, first.stderr[-2000:]
    calibrated = re.search(r"event thresholds calibrated on 1 scenes: event F1 there ([\d.]+) at 0.5, ([\d.]+) calibrated", first.stdout)
    assert calibrated, first.stdout
    from ast_audio.checkpoints import load_model

    thresholds = load_model(out / "exp" / "models" / "best_audio_model.safetensors").info.thresholds
    assert thresholds is not None and len(thresholds) == 11 and all(0 < t < 1 for t in thresholds)
    accuracy = re.search(r"held-out accuracy: ([\d.]+)% on 22 clips of fold 5", first.stdout)
    assert accuracy, first.stdout
    assert len(re.findall(r"^  5-\S+\.wav +\S", first.stdout, flags=re.M)) == 11  # one tagged clip per class (background too)
    exp = out / "exp"
    for name in ("result.csv", "eval_result.csv", "curves.png", "confusion.png", "models/best_audio_model.safetensors"):
        assert (exp / name).stat().st_size > 0, name
    result, events = exp / "result.csv", exp / "event_thresholds.json"
    stamp, event_stamp = result.stat().st_mtime_ns, events.stat().st_mtime_ns
    again = run_demo(out, "--per-class", "10", "--epochs", "2", "--scenes", "1")
    assert again.returncode == 0 and result.stat().st_mtime_ns == stamp  # nothing retrained
    assert events.stat().st_mtime_ns == event_stamp and calibrated.group(0) in again.stdout  # nor recalibrated
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
