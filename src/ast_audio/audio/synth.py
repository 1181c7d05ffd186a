"""A small labelled sound dataset the project makes itself, for the demo and for tests.

Ten classes that differ in ways an audio model has to hear: spectral shape (tone vs
noise vs harmonics), direction of change (rising vs falling chirps), temporal structure
(click trains, bursts, crackle) and modulation (AM vs FM). Every clip draws its pitch,
timing, loudness and background noise at random, deterministically from the seed.

``background=True`` adds an eleventh class, ``background``: the background noise alone,
which gives a single-label model a "nothing" answer for event detection.

Written in ESC-50's layout, so the ESC-50 reader and recipe take it as they take the real
data: ``audio/{fold}-{clip}-{take}-{target}.wav`` and ``meta/esc50.csv`` with the columns
``filename,fold,target,category,esc10,src_file,take``. Clips are spread evenly over five
folds. Sample rate 16 kHz (ESC-50's own files are 44.1 kHz; readers resample either).

:func:`write_scenes` writes long recordings (30-120 s) of the same classes at known onsets
over background noise, some overlapping, with their reference events in the DCASE TSV
format (``filename<TAB>onset<TAB>offset<TAB>event_label``), for event detection.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

from ..base.fileio import atomic_write
from ..errors import ConfigError

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


BACKGROUND = "background"  # the extra class of write_dataset(background=True): noise alone


def _background(n: int, rng: np.random.Generator) -> np.ndarray:
    """Low background noise: a brownish rumble plus white noise at a random level."""
    rumble = np.cumsum(rng.standard_normal(n)) * 0.002
    return (rumble - rumble.mean()) + rng.standard_normal(n) * rng.uniform(0.002, 0.02)


def _long_background(n: int, rng: np.random.Generator) -> np.ndarray:
    """Background of any length with the level of a clip's: 2-s stretches of it cross-faded
    every second (a random walk over a whole scene would drift out of range)."""
    piece = 2 * SAMPLE_RATE
    fade = np.hanning(piece + 1)[:piece]  # overlapping by half, these sum to one
    out = np.zeros(n + 2 * piece)
    for start in range(0, n + piece, SAMPLE_RATE):
        out[start : start + piece] += _background(piece, rng) * fade
    return out[SAMPLE_RATE : SAMPLE_RATE + n]


def _sound(target: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of class ``target`` at a random peak level (0.1-0.8)."""
    t = np.arange(n) / SAMPLE_RATE
    sound = CLASSES[target][1](t, rng)
    return sound / (np.abs(sound).max() + 1e-9) * rng.uniform(0.1, 0.8)


def make_clip(target: int, rng: np.random.Generator, seconds: float = 2.0) -> np.ndarray:
    """One clip of class ``target``: the sound at a random level over low background noise
    (``target == len(CLASSES)``: the background alone)."""
    n = int(SAMPLE_RATE * seconds)
    sound = _sound(target, n, rng) if target < len(CLASSES) else np.zeros(n)
    return np.clip(sound + _background(n, rng), -1, 1).astype(np.float32)


def write_dataset(
    out: str | os.PathLike, *, per_class: int = 150, classes: int = 10, seconds: float = 1.0, seed: int = 0,
    background: bool = False,
) -> Path:
    """Write the dataset in ESC-50's layout under ``out`` (which is returned). Deterministic.
    ``background=True`` adds the class ``background`` (target ``classes``)."""
    if not 1 <= classes <= len(CLASSES):
        raise ConfigError(f"classes must be between 1 and {len(CLASSES)}, got {classes}")
    if per_class < 1 or seconds < 0.1:
        raise ConfigError(f"need at least one clip per class and 0.1 s clips, got {per_class} and {seconds}")
    out = Path(out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    (out / "meta").mkdir(parents=True, exist_ok=True)
    rows = []
    for target in range(classes + int(background)):
        name = CLASSES[target][0] if target < classes else BACKGROUND
        kind = target if target < classes else len(CLASSES)
        for i in range(per_class):
            rng = np.random.default_rng([seed, kind, i])
            fold = i % FOLDS + 1
            filename = f"{fold}-{target:03d}{i:04d}-A-{target}.wav"
            sf.write(out / "audio" / filename, make_clip(kind, rng, seconds), SAMPLE_RATE, subtype="PCM_16")
            rows.append([filename, fold, target, name, "False", f"synth{target}_{i}", "A"])
    rows.sort(key=lambda r: r[0])

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
            writer.writerows(rows)

    atomic_write(out / "meta" / "esc50.csv", write)
    return out


def make_scene(
    rng: np.random.Generator, seconds: float, classes: int = len(CLASSES), overlap: float = 0.15
) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """One recording of ``seconds`` and its events ``(onset, offset, label)``, by onset.

    Events of 1-3 s (the sound's own envelope inside that) follow each other with gaps of
    0.5-4 s of background; with probability ``overlap`` one starts halfway through the
    previous one instead. An event's onset and offset are its sound's first and last
    audible samples (above 1/1000 of its peak).
    """
    n = int(seconds * SAMPLE_RATE)
    mix = _long_background(n, rng)
    events = []
    t, previous = rng.uniform(0.5, 3.0), None
    while True:
        length = rng.uniform(1.0, 3.0)
        if previous is not None and rng.random() < overlap:
            t = (previous[0] + previous[1]) / 2
        a = int(t * SAMPLE_RATE)
        b = a + int(length * SAMPLE_RATE)
        if b > n - SAMPLE_RATE // 4:
            break
        target = int(rng.integers(classes - 1)) if previous is not None and classes > 1 else int(rng.integers(classes))
        if previous is not None and classes > 1 and target >= previous[2]:
            target += 1  # never the class just before: two of a kind in a row would be one event
        sound = _sound(target, b - a, rng)
        audible = np.flatnonzero(np.abs(sound) > 1e-3 * np.abs(sound).max())
        mix[a:b] += sound
        onset, offset = (a + audible[0]) / SAMPLE_RATE, (a + audible[-1] + 1) / SAMPLE_RATE
        events.append((onset, offset, CLASSES[target][0]))
        previous = (onset, offset, target)
        t = offset + rng.uniform(0.5, 4.0)
    events.sort()
    return np.clip(mix, -1, 1).astype(np.float32), events


def write_scenes(
    out: str | os.PathLike, *, count: int = 10, seconds: tuple[float, float] = (30.0, 120.0), seed: int = 0,
    classes: int = len(CLASSES), overlap: float = 0.15,
) -> Path:
    """``count`` scenes under ``out``: ``audio/scene_NNN.wav``, the reference events
    ``reference.tsv`` (DCASE: ``filename, onset, offset, event_label``, seconds to 3 decimals)
    and ``durations.tsv`` (``filename, duration``; what PSDS needs). Deterministic."""
    if count < 1 or not 1 <= classes <= len(CLASSES) or not 5 <= seconds[0] <= seconds[1]:
        raise ConfigError(f"need at least one scene, 1-{len(CLASSES)} classes and lengths of 5 s or more, "
                          f"got {count}, {classes} and {seconds}")  # fmt: skip
    out = Path(out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    refs, durations = [], []
    for k in range(count):
        rng = np.random.default_rng([seed, 7919, k])
        name = f"scene_{k:03d}.wav"
        length = float(rng.uniform(*seconds))
        audio, events = make_scene(rng, length, classes, overlap)
        atomic_write(out / "audio" / name, lambda tmp, audio=audio: sf.write(tmp, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV"))
        refs += [[name, f"{a:.3f}", f"{b:.3f}", label] for a, b, label in events]
        durations.append([name, f"{len(audio) / SAMPLE_RATE:.3f}"])

    def table(header, rows):
        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as fh:
                writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
                writer.writerow(header)
                writer.writerows(rows)

        return write

    atomic_write(out / "reference.tsv", table(["filename", "onset", "offset", "event_label"], refs))
    atomic_write(out / "durations.tsv", table(["filename", "duration"], durations))
    return out
