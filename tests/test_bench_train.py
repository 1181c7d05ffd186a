"""The training-speed benchmark's code path with a tiny model and a tiny budget (no timing checked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import cli_env

ROOT = Path(__file__).resolve().parents[1]


def test_train_bench_runs_end_to_end_and_writes_its_section(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\nkept\n")
    args = ["--model-size", "tiny224", "--depth", "1", "--frames", "128", "--repeats", "1", "--budget", "0.1",
            "--clips", "2", "--test-clips", "1", "--batch-size", "4", "--note", "shared CPU", "--output", str(out)]
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "train.py"), *args],
        capture_output=True, text=True, timeout=600, cwd=ROOT / "bench", env=cli_env(),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    text = out.read_text()
    assert "kept" in text and "<!-- bench:train:start -->" in text and "<!-- bench:train:end -->" in text
    assert "shared CPU" in text
    rows = [line.split("|") for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    steps = [r for r in rows if r[2].strip() in ("fp32", "bf16 autocast")]
    assert [r[1].strip() for r in steps[:2]] == ["Hugging Face", "ours"]
    assert sum("ours + patchout" in r[1] for r in steps) in (2, 4)  # two patchouts, fp32 (and bf16 where native)
    assert all(float(r[3]) > 0 for r in steps)
    assert (len(steps) == 8) != ("bf16: not timed" in text)
    ways = [r for r in rows if r[1].strip().startswith(("plain", "patchout", "bucket"))]
    assert len(ways) == 4 and all(0 <= float(r[4].strip().rstrip("%")) <= 100 for r in ways)
    assert all(float(r[2]) >= 1 for r in ways)  # at least one epoch each
