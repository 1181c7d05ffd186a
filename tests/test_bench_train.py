"""The training-speed benchmark's code path with a tiny model and a tiny budget (no timing checked)."""

from __future__ import annotations

import re

from conftest import run_bench


def test_train_bench_runs_end_to_end_and_writes_its_section(tmp_path):
    text = run_bench("train.py", "--model-size", "tiny224", "--depth", "1", "--frames", "128", "--repeats", "1",
                     "--budget", "0.1,0.2", "--jobs", "2", "--clips", "2", "--test-clips", "1", "--batch-size", "4",
                     "--note", "shared CPU", output=tmp_path / "BENCHMARKS.md")  # fmt: skip
    assert "kept" in text and "<!-- bench:train:start -->" in text and "<!-- bench:train:end -->" in text
    assert "shared CPU" in text
    rows = [line.split("|") for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    steps = [r for r in rows if r[2].strip() in ("fp32", "bf16 autocast")]
    assert [r[1].strip() for r in steps[:2]] == ["Hugging Face", "ours"]
    assert sum("ours + patchout" in r[1] for r in steps) in (2, 4)  # two patchouts, fp32 (and bf16 where native)
    assert all(float(r[3]) > 0 for r in steps)
    assert (len(steps) == 8) != ("bf16: not timed" in text)
    ways = [r for r in rows if r[1].strip().startswith(("plain", "patchout", "bucket"))]
    assert len(ways) == 4 + 2  # varied clips: four ways; long clips (one length): plain and patchout
    assert "**varied** clips" in text and "**long** clips" in text and "(12x29 = 348 patches)" in text
    for way in ways:  # "E ep, S s, **A%**" after each of the two marks, epochs and seconds growing
        cells = [re.fullmatch(r"([\d.]+) ep, (\d+) s, \*\*([\d.]+)%\*\*", c.strip()) for c in way[2:4]]
        assert all(cells), way
        epochs, seconds, accuracy = ([float(c[i]) for c in cells] for i in (1, 2, 3))
        assert 1 <= epochs[0] <= epochs[1] and seconds[0] <= seconds[1]
        assert all(0 <= a <= 100 for a in accuracy)
    assert "2 run(s) side by side" in text and "after 0.1 then 0.2 s of training" in text
