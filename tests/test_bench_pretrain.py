"""bench/pretrain.py runs end to end (``--quick``, a tiny task and unlabelled folder made of real
files here) and writes its section with every way measured."""

from __future__ import annotations

import numpy as np
from conftest import run_bench
from factories import noise, toy_clip, write_audio


def test_pretrain_bench_measures_every_way_on_one_split(tmp_path):
    rng = np.random.default_rng(0)
    task = tmp_path / "task"
    for side, groups in (("train", ("kitA", "kitB", "kitC", "kitD", "kitE")), ("test", ("kitF",))):
        for kind, label in enumerate(("low", "high")):
            folder = task / side / label
            folder.mkdir(parents=True)
            for group in groups:
                write_audio(folder / f"{group}__{label}.wav", toy_clip(kind, rng))
    unlabelled = tmp_path / "recordings"
    unlabelled.mkdir()
    write_audio(unlabelled / "ambience.wav", noise(6.0, seed=3))
    text = run_bench("pretrain.py", "--quick", "--task", task, "--unlabelled", unlabelled, "--cache", tmp_path / "cache",
                     output=tmp_path / "B.md")  # fmt: skip
    assert "kept" in text and "<!-- bench:pretrain:start -->" in text and "<!-- bench:pretrain:end -->" in text
    for way in ("from scratch", "pretrained + fine-tuned", "pretrained + linear probe", "untrained + linear probe",
                "baseline (log-mel statistics + logistic regression)"):  # fmt: skip
        row = next(line for line in text.splitlines() if line.startswith(f"| {way} |"))
        accuracy = float(row.split("|")[2].strip(" *"))
        assert 0 <= accuracy <= 1
    assert "Masked-patch accuracy" in text and "1 files of" in text
