"""bench/serve.py end to end with a tiny model (its code path; no timing checked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import cli_env

ROOT = Path(__file__).resolve().parents[1]


def test_serve_bench_runs_end_to_end_and_writes_its_section(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\nkept\n")
    args = ["--model-size", "tiny224", "--depth", "1", "--input-tdim", "100", "--clips", "3", "--requests", "12",
            "--concurrency", "4", "--batch-size", "4", "--threads", "1", "--output", str(out)]  # fmt: skip
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "serve.py"), *args], capture_output=True, text=True,
                         timeout=300, cwd=ROOT / "bench", env=cli_env())  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    text = out.read_text()
    assert "kept" in text and "<!-- bench:serve:start -->" in text and "<!-- bench:serve:end -->" in text
    assert "| offline, `AudioTagger.predict` (batched) |" in text and "| `ast-audio serve`, 4 clients |" in text
    assert "12 of 12 requests answered 200" in text
