"""bench/serve.py end to end with a tiny model (its code path; no timing checked)."""

from __future__ import annotations

from conftest import run_bench


def test_serve_bench_runs_end_to_end_and_writes_its_section(tmp_path):
    text = run_bench("serve.py", "--model-size", "tiny224", "--depth", "1", "--input-tdim", "100", "--clips", "3",
                     "--requests", "12", "--concurrency", "4", "--batch-size", "4", "--threads", "1",
                     output=tmp_path / "BENCHMARKS.md", timeout=300)  # fmt: skip
    assert "kept" in text and "<!-- bench:serve:start -->" in text and "<!-- bench:serve:end -->" in text
    assert "| offline, `AudioTagger.predict` (batched) |" in text and "| `ast-audio serve`, 4 clients |" in text
    assert "12 of 12 requests answered 200" in text
