"""bench/distill.py runs end to end on the synthetic set and writes its tables (tiny settings;
no figure checked, the figures are the benchmark's)."""

from __future__ import annotations

import pytest
from conftest import run_bench


@pytest.mark.slow
def test_distill_bench_trains_every_row_and_times_them_on_both_kernels(tmp_path):
    text = run_bench("distill.py", "--quick", "--datasets", "synthetic", "--per-class", "6", "--presets", "tiny2",
                     "--student", "tiny2", output=tmp_path / "B.md")  # fmt: skip
    assert "kept" in text and "<!-- bench:distill:start -->" in text and "<!-- bench:distill:end -->" in text
    for row in ("| teacher |", "| student, distilled |", "| student, labels alone |",
                "| student, distilled + unlabelled |", "| Hugging Face AST fp32", "| `tiny2` student |"):  # fmt: skip
        assert row in text
    rows = [line.split("|") for line in text.splitlines() if line.startswith("| student, distilled |")]
    assert all(float(cell.strip().rstrip("%")) > 0 for cell in rows[0][6:10])  # clips/s and share of peak, both kernels
