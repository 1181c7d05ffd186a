"""bench/export.py --quick end to end with a tiny model (its code path; no timing checked)."""

from __future__ import annotations

import json

import pytest
from conftest import run_bench


@pytest.mark.slow  # about a minute: two exports, Hugging Face's model and five timed paths
def test_export_bench_quick_writes_its_section(tmp_path):
    timing = tmp_path / "browser.json"  # the page's in-browser timing fills its row
    timing.write_text(json.dumps({"clips_per_s": 1.5, "max_abs_diff": 2e-4, "top1": 1.0}))
    text = run_bench("export.py", "--quick", "--browser-timing", timing, output=tmp_path / "BENCHMARKS.md", timeout=600)
    assert "kept" in text and "<!-- bench:export:start -->" in text and "<!-- bench:export:end -->" in text
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in text.splitlines() if line.startswith("| ")}
    for name in ("Hugging Face extractor + model, fp32", "ours, AudioTagger, fp32 (PyTorch)",
                 "ONNX fp32, onnxruntime (ast_audio_onnx, no torch)", "ONNX int8, onnxruntime (ast_audio_onnx, no torch)"):  # fmt: skip
        clips_per_s, _, agreement, diff = rows[name][:4]
        assert float(clips_per_s) > 0 and agreement.endswith("%"), name
        if name.startswith("ONNX fp32"):
            assert float(diff.strip(" |")) <= 1e-4 and agreement == "100%"  # the export's promise, on the bench's files
    browser = next(line for line in text.splitlines() if line.startswith("| in-browser (onnxruntime-web"))
    assert "| 1.500 |" in browser and "| 100% | 2.0e-04 |" in browser
    runner, torch = rows["`ast_audio_onnx` runner"], rows["PyTorch path"]
    assert float(runner[1]) > 0 and float(torch[1]) > float(runner[1])  # MiB alone: torch is the larger install
