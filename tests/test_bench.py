"""The accelerator benchmark's code path, run on the CPU with a tiny model (no timing checked)."""

from __future__ import annotations

from pathlib import Path

from conftest import run_bench

ROOT = Path(__file__).resolve().parents[1]


def test_device_bench_runs_end_to_end_and_writes_its_section(tmp_path):
    text = run_bench("device.py", "--device", "cpu", "--model-size", "tiny224", "--depth", "1", "--clips", "12",
                     "--batch-size", "6", "--workers", "1", "--steps", "1", "--peak-tflops", "1",
                     output=tmp_path / "BENCHMARKS.md", timeout=300)  # fmt: skip
    assert "kept" in text and "<!-- bench:device:start -->" in text and "<!-- bench:device:end -->" in text
    for row in ("training step alone", "loader alone, first epoch", "second epoch (waveform cache)",
                "loader + training step, cached clips", "Model FLOP utilisation of the step: "):  # fmt: skip
        assert row in text
    assert "n/a" not in text  # --peak-tflops given: an MFU figure is computed


def test_bench_scripts_never_import_each_other_only_shared_modules():
    import ast

    # a script runs (it has a __main__ block); a module without one (common, realsets) is shared code
    paths = sorted((ROOT / "bench").glob("*.py"))
    scripts = {p.stem for p in paths if "__main__" in p.read_text()}
    assert {"real", "openset", "train", "model"} <= scripts and "common" not in scripts and "realsets" not in scripts
    for path in paths:
        tree = ast.parse(path.read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not imported & scripts, path.name


def test_shards_bench_runs_end_to_end_and_writes_its_section(tmp_path):
    text = run_bench("shards.py", "--clips", "4", "--workers", "2", "--repeats", "1", "--note", "shared CPU",
                     output=tmp_path / "BENCHMARKS.md", timeout=300)  # fmt: skip
    assert "kept" in text and "<!-- bench:shards:start -->" in text and "shared CPU" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "clips/s" not in line and "---" not in line]
    assert len(rows) == 7 and all(float(line.split("|")[4]) > 0 for line in rows)  # 3 + 4 sources, 2 workers


def test_openset_bench_runs_end_to_end_and_writes_its_section(tmp_path):
    text = run_bench("openset.py", "--known", "2", "--rotations", "1", "--train-clips", "3", "--valid-clips", "2",
                     "--test-clips", "2", "--epochs", "1", output=tmp_path / "BENCHMARKS.md", timeout=600)  # fmt: skip
    assert "<!-- bench:openset:start -->" in text and "<!-- bench:openset:end -->" in text
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| the known classes")]
    assert [row[1] for row in rows] == ["`energy`", "`max_prob`", "`energy`", "`max_prob`", "`none label alone`"]
    for row in rows:  # AUROC (none for the none label alone), kept, caught, accuracy
        assert row[2] == "-" if "none label" in row[1] else 0 <= float(row[2].split()[0]) <= 1
        assert all(cell.split()[0].endswith("%") for cell in row[3:])
