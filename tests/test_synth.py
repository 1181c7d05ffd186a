"""The demo's own dataset: real files in ESC-50's layout, deterministic, classes that differ."""

import csv
from pathlib import Path

import numpy as np
import soundfile as sf
from conftest import run_cli

from ast_audio.features import fbank
from ast_audio.synth import CLASSES, SAMPLE_RATE, make_clip, write_dataset


def test_layout_and_determinism(tmp_path):
    a = write_dataset(tmp_path / "a", per_class=5, classes=4, seconds=0.5, seed=7)
    b = write_dataset(tmp_path / "b", per_class=5, classes=4, seconds=0.5, seed=7)
    rows = list(csv.DictReader(open(a / "meta" / "esc50.csv")))
    assert list(rows[0]) == ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
    assert len(rows) == 20 and {r["category"] for r in rows} == {name for name, _ in CLASSES[:4]}
    for row in rows:
        fold, _, take, target = Path(row["filename"]).stem.split("-")
        assert (fold, target, take) == (row["fold"], row["target"], row["take"])
        data, rate = sf.read(a / "audio" / row["filename"])
        assert rate == SAMPLE_RATE and len(data) == 8000 and np.abs(data).max() <= 1.0
        assert (a / "audio" / row["filename"]).read_bytes() == (b / "audio" / row["filename"]).read_bytes()
    folds = [int(r["fold"]) for r in rows]
    assert sorted(set(folds)) == [1, 2, 3, 4, 5] and all(folds.count(k) == 4 for k in range(1, 6))


def test_classes_differ_in_what_a_model_hears():
    """The class means of the log-mel spectra are further apart than clips within a class."""
    import torch

    spectra = []
    for target in range(len(CLASSES)):
        clips = [make_clip(target, np.random.default_rng([1, target, i])) for i in range(6)]
        spectra.append(torch.stack([fbank(torch.from_numpy(c), SAMPLE_RATE).mean(0) for c in clips]))
    means = torch.stack([s.mean(0) for s in spectra])
    within = np.mean([float((s - s.mean(0)).norm(dim=1).mean()) for s in spectra])
    between = float(torch.cdist(means, means)[~torch.eye(len(CLASSES), dtype=torch.bool)].min())
    assert between > 0.3 * within  # even the closest pair of classes is not a copy of another
    assert len({name for name, _ in CLASSES}) == 10


def test_synth_command(tmp_path):
    out = run_cli("synth", "--out", tmp_path / "d", "--per-class", "2", "--classes", "3", timeout=120)
    assert out.returncode == 0, out.stderr
    assert "6 clips" in out.stdout and len(list((tmp_path / "d" / "audio").glob("*.wav"))) == 6
    bad = run_cli("synth", "--out", tmp_path / "e", "--classes", "11", timeout=120)
    assert bad.returncode == 2 and "classes must be between 1 and 10" in bad.stderr
