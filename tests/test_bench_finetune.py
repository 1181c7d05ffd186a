"""bench/memory.py and bench/finetune.py run end to end and write their sections (tiny settings;
no figure checked, the figures are the benchmarks')."""

from __future__ import annotations

from conftest import run_bench


def test_memory_bench_measures_both_settings_in_their_own_processes(tmp_path):
    text = run_bench("memory.py", "--model-size", "tiny224", "--frames", "128", "--steps", "1", "--device", "cpu",
                     output=tmp_path / "B.md")  # fmt: skip
    assert "kept" in text and "<!-- bench:memory:start -->" in text and "<!-- bench:memory:end -->" in text
    rows = [line for line in text.splitlines() if line.startswith(("| False", "| True"))]
    assert len(rows) == 2 and all(float(r.split("|")[2].replace(",", "")) > 0 for r in rows)


def test_finetune_bench_trains_every_way_and_writes_its_table(tmp_path):
    text = run_bench("finetune.py", "--pretrain-clips", "10", "--pretrain-epochs", "1", "--epochs", "1",
                     "--seeds", "1", "--shots", "2", "--valid-clips", "2", "--test-clips", "2",
                     output=tmp_path / "B.md")  # fmt: skip
    assert "kept" in text and "<!-- bench:finetune:end -->" in text
    for row in ("| from scratch", "| linear probe", "| full fine-tune", "| fine-tune, `--freeze 0 --llrd 0.75`"):
        assert row in text
