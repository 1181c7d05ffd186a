"""The demo's own dataset: real files in ESC-50's layout, deterministic, classes that differ."""

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import run_main

from ast_audio.audio.synth import CLASSES, SAMPLE_RATE, make_clip, make_scene, write_dataset
from ast_audio.features import fbank


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
    out = run_main("synth", "--out", tmp_path / "d", "--per-class", "2", "--classes", "3", timeout=120)
    assert out.returncode == 0, out.stderr
    assert "6 clips" in out.stdout and len(list((tmp_path / "d" / "audio").glob("*.wav"))) == 6
    bad = run_main("synth", "--out", tmp_path / "e", "--classes", "11", timeout=120)
    assert bad.returncode == 2 and "classes must be between 1 and 10" in bad.stderr


def test_background_class_is_noise_alone(tmp_path):
    out = write_dataset(tmp_path / "d", per_class=5, classes=2, seconds=0.5, background=True)
    rows = list(csv.DictReader(open(out / "meta" / "esc50.csv")))
    assert [r["category"] for r in rows if r["target"] == "2"] == ["background"] * 5
    for i, r in enumerate(sorted((r for r in rows if r["target"] == "2"), key=lambda r: r["src_file"])):
        data, _ = sf.read(out / "audio" / r["filename"], dtype="float32")
        np.testing.assert_allclose(data, make_clip(len(CLASSES), np.random.default_rng([0, len(CLASSES), i]), 0.5),
                                   atol=1 / 32768)  # fmt: skip
    # the background alone: no tone above the noise floor (a pure class-0 clip has one)
    spectrum = np.abs(np.fft.rfft(make_clip(len(CLASSES), np.random.default_rng(5), 1.0)))[500:]
    tone = np.abs(np.fft.rfft(make_clip(0, np.random.default_rng(5), 1.0)))[500:]
    assert spectrum.max() < 10 * np.median(spectrum) and tone.max() > 50 * np.median(tone)


def test_scenes_hold_their_reference_events(tmp_path):
    out = run_main("synth", "--out", tmp_path / "s", "--scenes", "2", "--min-seconds", "30", "--max-seconds", "40",
                  "--seed", "3", timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = list(csv.reader(open(tmp_path / "s" / "reference.tsv"), delimiter="\t"))
    assert rows[0] == ["filename", "onset", "offset", "event_label"]
    durations = dict(csv.reader(open(tmp_path / "s" / "durations.tsv"), delimiter="\t"))
    names = {name for name, _ in CLASSES}
    for name in ("scene_000.wav", "scene_001.wav"):
        audio, rate = sf.read(tmp_path / "s" / "audio" / name)
        assert rate == SAMPLE_RATE and 30 <= len(audio) / rate <= 40
        assert float(durations[name]) == pytest.approx(len(audio) / rate, abs=1e-3)
        events = [(float(a), float(b), label) for n, a, b, label in rows[1:] if n == name]
        assert len(events) >= 5 and {label for *_, label in events} <= names
        assert all(0 <= a < b <= len(audio) / rate and b - a >= 0.05 for a, b, _ in events)
        # the events are where the sound is: louder inside than in the gaps between them
        inside = np.zeros(len(audio), dtype=bool)
        for a, b, _ in events:
            inside[int(a * rate) : int(b * rate)] = True
        assert np.sqrt(np.mean(audio[inside] ** 2)) > 2 * np.sqrt(np.mean(audio[~inside] ** 2))
    _, events = make_scene(np.random.default_rng(0), 120.0, overlap=0.5)
    assert any(b1 > a2 for (_, b1, _), (a2, _, _) in zip(events, events[1:], strict=False))  # events overlap
    assert all(x[2] != y[2] for x, y in zip(events, events[1:], strict=False))  # never twice the same in a row
