"""A small labelled sound dataset the project makes itself, for the demo and for tests.

Ten classes that differ in ways an audio model has to hear: spectral shape (tone vs
noise vs harmonics), direction of change (rising vs falling chirps), temporal structure
(click trains, bursts, crackle) and modulation (AM vs FM). Every clip draws its pitch,
timing, loudness and background noise at random, deterministically from the seed.

Written in ESC-50's layout, so the ESC-50 reader and recipe take it as they take the real
data: ``audio/{fold}-{clip}-{take}-{target}.wav`` and ``meta/esc50.csv`` with the columns
``filename,fold,target,category,esc10,src_file,take``. Clips are spread evenly over five
folds. Sample rate 16 kHz (ESC-50's own files are 44.1 kHz; readers resample either).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

from .errors import ConfigError
from .fileio import atomic_write

SAMPLE_RATE = 16000
FOLDS = 5


def _envelope(n: int, rng: np.random.Generator, min_len: float = 0.4) -> np.ndarray:
    """A random on/off window (with 10 ms ramps) covering at least ``min_len`` of the clip."""
    length = int(n * rng.uniform(min_len, 0.95))
    start = int(rng.integers(0, n - length + 1))
    env = np.zeros(n)
    ramp = min(160, length // 4)
    shape = np.ones(length)
    shape[:ramp] = np.linspace(0, 1, ramp)
    shape[length - ramp :] = np.linspace(1, 0, ramp)
    env[start : start + length] = shape
    return env


def _tone(t, rng):
    """One steady tone."""
    return np.sin(2 * np.pi * rng.uniform(500, 2000) * t + rng.uniform(0, 2 * np.pi)) * _envelope(t.size, rng)


def _sweep(t, rng, up: bool):
    lo, hi = rng.uniform(200, 600), rng.uniform(2000, 5000)
    f0, f1 = (lo, hi) if up else (hi, lo)
    duration = t[-1]
    freq = f0 * (f1 / f0) ** (t / duration)  # exponential sweep over the clip
    return np.sin(2 * np.pi * np.cumsum(freq) / SAMPLE_RATE) * _envelope(t.size, rng, 0.7)


def _bursts(t, rng):
    out = np.zeros(t.size)
    for _ in range(int(rng.integers(2, 5))):
        length = int(SAMPLE_RATE * rng.uniform(0.05, 0.2))
        start = int(rng.integers(0, t.size - length))
        out[start : start + length] += rng.standard_normal(length) * np.hanning(length)
    return out


def _clicks(t, rng):
    """Sparse, regular broadband clicks (3-8 per second)."""
    out = np.zeros(t.size)
    period = int(SAMPLE_RATE / rng.uniform(3, 8))
    for start in range(int(rng.integers(0, period)), t.size - 40, period):
        out[start : start + 40] += np.exp(-np.arange(40) / 6.0) * rng.choice([-1, 1])
    return out


def _vowel(t, rng):
    f0 = rng.uniform(90, 280)
    formants = rng.choice([(700, 1200), (300, 2300), (500, 900), (400, 2000)])
    out = np.zeros(t.size)
    for k in range(1, int(4000 // f0)):
        weight = sum(np.exp(-(((k * f0) - f) ** 2) / (2 * 120.0**2)) for f in formants) + 0.05
        out += weight * np.sin(2 * np.pi * k * f0 * t)
    return out / np.abs(out).max() * _envelope(t.size, rng)


def _am(t, rng):
    """A tone switched fully on and off 2-4 times a second (10 ms ramps)."""
    carrier = np.sin(2 * np.pi * rng.uniform(500, 2000) * t)
    gate = (np.sin(2 * np.pi * rng.uniform(2, 4) * t + rng.uniform(0, 2 * np.pi)) > 0).astype(float)
    return carrier * np.convolve(gate, np.ones(160) / 160, mode="same")


def _fm(t, rng):
    """A tone whose pitch swings by a third or more, 2-5 times a second."""
    fc, rate = rng.uniform(700, 1800), rng.uniform(2, 5)
    depth = fc * rng.uniform(0.3, 0.5)
    phase = 2 * np.pi * fc * t - depth / rate * np.cos(2 * np.pi * rate * t)
    return np.sin(phase) * _envelope(t.size, rng, 0.6)


def _dual(t, rng):
    """Two steady tones far apart: one low, one high."""
    low, high = rng.uniform(150, 350), rng.uniform(2800, 4500)
    return (np.sin(2 * np.pi * low * t) + np.sin(2 * np.pi * high * t)) * _envelope(t.size, rng)


def _crackle(t, rng):
    """Dense, irregular, bright crackling (high-passed random impulses)."""
    out = np.zeros(t.size)
    hits = rng.random(t.size) < rng.uniform(0.01, 0.03)
    out[hits] = rng.standard_normal(hits.sum()) * 3
    return np.diff(out, prepend=0.0)


CLASSES: list[tuple[str, Callable]] = [
    ("steady tone", _tone),
    ("rising chirp", lambda t, rng: _sweep(t, rng, up=True)),
    ("falling chirp", lambda t, rng: _sweep(t, rng, up=False)),
    ("noise bursts", _bursts),
    ("click train", _clicks),
    ("harmonic vowel", _vowel),
    ("tremolo tone", _am),
    ("vibrato tone", _fm),
    ("dual tone", _dual),
    ("crackle", _crackle),
]


def make_clip(target: int, rng: np.random.Generator, seconds: float = 2.0) -> np.ndarray:
    """One clip of class ``target``: the sound at a random level over low background noise."""
    t = np.arange(int(SAMPLE_RATE * seconds)) / SAMPLE_RATE
    sound = CLASSES[target][1](t, rng)
    sound = sound / (np.abs(sound).max() + 1e-9) * rng.uniform(0.1, 0.8)
    background = np.cumsum(rng.standard_normal(t.size)) * 0.002  # brownish rumble
    background = (background - background.mean()) + rng.standard_normal(t.size) * rng.uniform(0.002, 0.02)
    return np.clip(sound + background, -1, 1).astype(np.float32)


def write_dataset(
    out: str | os.PathLike, *, per_class: int = 150, classes: int = 10, seconds: float = 1.0, seed: int = 0
) -> Path:
    """Write the dataset in ESC-50's layout under ``out`` (which is returned). Deterministic."""
    if not 1 <= classes <= len(CLASSES):
        raise ConfigError(f"classes must be between 1 and {len(CLASSES)}, got {classes}")
    if per_class < 1 or seconds < 0.1:
        raise ConfigError(f"need at least one clip per class and 0.1 s clips, got {per_class} and {seconds}")
    out = Path(out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    (out / "meta").mkdir(parents=True, exist_ok=True)
    rows = []
    for target in range(classes):
        name = CLASSES[target][0]
        for i in range(per_class):
            rng = np.random.default_rng([seed, target, i])
            fold = i % FOLDS + 1
            filename = f"{fold}-{target:03d}{i:04d}-A-{target}.wav"
            sf.write(out / "audio" / filename, make_clip(target, rng, seconds), SAMPLE_RATE, subtype="PCM_16")
            rows.append([filename, fold, target, name, "False", f"synth{target}_{i}", "A"])
    rows.sort(key=lambda r: r[0])

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
            writer.writerows(rows)

    atomic_write(out / "meta" / "esc50.csv", write)
    return out
