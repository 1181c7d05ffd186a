"""Miniature datasets in the exact layouts their authors distribute (real audio, right
names, CSV and list formats), with a few bad files planted (the writers of
``factories.py``); the recipe tests run ``ast-audio prepare`` / ``recipe`` on them with
``conftest.run_cli``."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from factories import (
    tone,
    write_audio,
    write_empty,
    write_text_as_audio,
    write_truncated_mp3,
    write_truncated_wav,
)

from ast_audio.data.labels import read_label_csv

# A tiny model, one epoch: what every recipe test runs with (plus its own batch size / length).
TINY = [
    "model_size=tiny224", "depth=2", "imagenet_pretrain=false", "audioset_pretrain=false", "n_epochs=1",
    "fstride=16", "tstride=16", "audio_length=100", "progress=false", "num_workers=0", "device=cpu",
    "amp=off",  # fp32: amp auto follows the CPU (and AST_AUDIO_PRECISION), and bf16 is slow where emulated
]  # fmt: skip


def report(out: Path) -> dict[str, str]:
    """``{path: reason}`` of ``bad_files.txt``."""
    lines = (out / "bad_files.txt").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines)


# --------------------------------------------------------------------------- ESC-50


def write_esc50(root: Path, targets=range(0, 50, 5), seconds: float = 1.0, seed: int = 0) -> dict:
    """``ESC-50-master``: ``meta/esc50.csv`` + ``audio/{fold}-{clip}-{take}-{target}.wav``
    (44.1 kHz mono; shorter than the real 5 s), one clip per fold for each target, plus a
    0-byte clip, a text file named ``.wav`` and a listed clip that is absent."""
    rng = np.random.default_rng(seed)
    names = read_label_csv("esc50").names
    audio = root / "audio"
    audio.mkdir(parents=True)
    (root / "meta").mkdir()
    rows, bad = [], {}
    clip_id = 100032
    for target in targets:
        for fold in range(1, 6):
            clip_id += 7
            name = f"{fold}-{clip_id}-A-{target}.wav"
            write_audio(audio / name, tone(200 + 150 * target, 44100, seconds, rng=rng), 44100, subtype="PCM_16")
            rows.append((name, fold, target))
    for fold, take, kind in ((2, "B", "empty"), (3, "A", "text"), (4, "C", "absent")):
        target = targets[0]
        name = f"{fold}-{clip_id + fold}-{take}-{target}.wav"
        if kind == "empty":
            write_empty(audio / name)
        elif kind == "text":
            write_text_as_audio(audio / name)
        bad[str((audio / name).resolve())] = kind
        rows.append((name, fold, target))
    with open(root / "meta" / "esc50.csv", "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        for name, fold, target in rows:
            _, src, take, _ = name[:-4].split("-")
            writer.writerow([name, fold, target, names[target], str(target in (0, 1, 10, 11)), src, take])
    (root / "README.md").write_text("# ESC-50 (miniature)\n")
    return {"rows": rows, "bad": bad}


# --------------------------------------------------------------------------- Speech Commands


def write_speechcommands(root: Path, per_word: int = 3, seed: int = 0) -> dict:
    """``speech_commands_v0.02``: 35 word folders of 1 s 16 kHz wavs, ``_background_noise_``,
    ``validation_list.txt``, ``testing_list.txt``, LICENSE/README; per word one clip in each
    list and the rest training; plus a 0-byte training clip and a truncated validation clip."""
    rng = np.random.default_rng(seed)
    words = read_label_csv("speechcommands").names
    splits: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    for w, word in enumerate(words):
        (root / word).mkdir(parents=True)
        for i in range(per_word):
            rel = f"{word}/{rng.integers(16**8):08x}_nohash_{i}.wav"
            write_audio(root / rel, tone(150 + 60 * w, 16000, rng=rng), 16000, subtype="PCM_16")
            splits["test" if i == 0 else "valid" if i == 1 else "train"].append(rel)
    noise = root / "_background_noise_"
    noise.mkdir()
    write_audio(noise / "white_noise.wav", (0.1 * rng.standard_normal(48000)).astype("float32"), 16000)
    (noise / "README.md").write_text("background noise, not a class\n")
    empty = f"{words[3]}/0badc0de_nohash_0.wav"
    write_empty(root / empty)
    splits["train"].append(empty)
    truncated = f"{words[5]}/0badc0de_nohash_1.wav"
    write_truncated_wav(root / truncated, tone(440, 16000, rng=rng), 16000)
    splits["valid"].append(truncated)
    (root / "validation_list.txt").write_text("".join(rel + "\n" for rel in splits["valid"]))
    (root / "testing_list.txt").write_text("".join(rel + "\n" for rel in splits["test"]))
    (root / "LICENSE").write_text("CC BY 4.0\n")
    (root / "README.md").write_text("Speech Commands (miniature)\n")
    bad = {str((root / rel).resolve()): kind for rel, kind in ((empty, "empty"), (truncated, "truncated"))}
    return {"splits": splits, "bad": bad}


# --------------------------------------------------------------------------- AudioSet

AUDIOSET_MIDS = ["/m/09x0r", "/m/04rlf", "/m/0jbk", "/m/07yv9"]  # Speech, Music, Animal, Vehicle


def ytid(rng) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return "".join(rng.choice(list(alphabet), 11))


def write_audioset(root: Path, seed: int = 0) -> dict:
    """Segment CSVs as Google distributes them (3 comment lines, then
    ``YTID, start, end, "mid,mid"``), ``class_labels_indices.csv`` and downloaded clips
    under ``audio/`` named in the usual ways (``ID.wav``, ``YID.wav``, ``ID_30.000.flac``,
    ``YID_30.000_40.000.wav`` in a subfolder), some segments without a clip, one 0-byte clip."""
    import shutil

    from ast_audio.data.labels import builtin_label_path

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(builtin_label_path("audioset"), root / "class_labels_indices.csv")
    audio = root / "audio"
    (audio / "part2").mkdir(parents=True)
    styles = [
        lambda y: (audio / f"{y}.wav", 16000),
        lambda y: (audio / f"Y{y}.wav", 44100),
        lambda y: (audio / f"{y}_30.000.flac", 48000),
        lambda y: (audio / "part2" / f"Y{y}_30.000_40.000.wav", 22050),
    ]
    sizes = {"balanced_train": (10, 2), "unbalanced_train": (6, 1), "eval": (6, 1)}  # (segments, missing)
    segments: dict[str, list[tuple[str, list[str]]]] = {}
    present: dict[str, dict[str, Path]] = {}
    missing: dict[str, list[str]] = {}
    bad = {}
    n = 0
    for name, (count, absent) in sizes.items():
        rows = []
        present[name], missing[name] = {}, []
        for i in range(count):
            y = ytid(rng)
            k = n % len(AUDIOSET_MIDS)
            mids = [AUDIOSET_MIDS[k]] + ([AUDIOSET_MIDS[(k + 1) % 4]] if i % 3 == 0 else [])
            rows.append((y, mids))
            n += 1
            if i < absent:
                missing[name].append(y)
                continue
            path, rate = styles[n % len(styles)](y)
            if name == "unbalanced_train" and i == count - 1:
                write_empty(path)
                bad[str(path.resolve())] = "empty"
                continue
            write_audio(path, tone(300 * (k + 1), rate, rng=rng), rate)
            present[name][y] = path.resolve()
        segments[name] = rows
        lines = [
            "# Segments csv created Sun Mar  5 10:54:25 2017",
            f"# num_ytids={count}, num_segs={count}, num_unique_labels=4, num_positive_labels={count}",
            "# YTID, start_seconds, end_seconds, positive_labels",
        ] + [f'{y}, 30.000, 40.000, "{",".join(mids)}"' for y, mids in rows]
        (root / f"{name}_segments.csv").write_text("\n".join(lines) + "\n")
    write_audio(audio / "unrelated_clip.wav", tone(500, 16000, rng=rng), 16000)  # names no listed id
    (audio / "notes.txt").write_text("download log\n")
    return {"segments": segments, "present": present, "missing": missing, "bad": bad}


# --------------------------------------------------------------------------- CSV ("hack")

EMOTIONS = ["angry", "happy", "sad"]


def write_table(path: Path, header: list[str], rows) -> Path:
    """A CSV with ``\n`` line ends, as the datasets' own tables are."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_csv_dataset(root: Path, per_class: int = 6, seed: int = 0) -> dict:
    """``train.csv`` (``filename,emotion``) + ``TrainAudioFiles/`` (wav and mp3 mixed, with a
    0-byte file, a truncated mp3 and a text file named ``.wav``), ``test.csv`` (``filename``)
    + ``TestAudioFiles/`` (one unreadable file)."""
    rng = np.random.default_rng(seed)
    train_dir, test_dir = root / "TrainAudioFiles", root / "TestAudioFiles"
    train_dir.mkdir(parents=True)
    test_dir.mkdir()
    rows, bad = [], {}
    n = 0
    for c, emotion in enumerate(EMOTIONS):
        for _ in range(per_class):
            n += 1
            x = tone(300 * 3**c, 16000, rng=rng)
            if n % 2:
                name = f"clip_{n:03d}.mp3"
                write_audio(train_dir / name, x, 16000, format="MP3")
            else:
                name = f"clip_{n:03d}.wav"
                write_audio(train_dir / name, x, 16000, subtype="PCM_16")
            rows.append((name, emotion))
    write_empty(train_dir / "clip_900.wav")
    write_truncated_mp3(train_dir / "clip_901.mp3", tone(700, 16000, 2.0, rng=rng), 16000)
    write_text_as_audio(train_dir / "clip_902.wav")
    for name, emotion, kind in (("clip_900.wav", "happy", "empty"), ("clip_901.mp3", "sad", "truncated"),
                                ("clip_902.wav", "angry", "text")):  # fmt: skip
        rows.insert(len(rows) // 2, (name, emotion))
        bad[str((train_dir / name).resolve())] = kind
    write_table(root / "train.csv", ["filename", "emotion"], rows)
    tests = []
    for i, c in enumerate([2, 0, 1, 0]):
        name = f"test_{i:03d}.{'mp3' if i % 2 else 'wav'}"
        x = tone(300 * 3**c, 16000, rng=rng)
        write_audio(test_dir / name, x, 16000, **({"format": "MP3"} if i % 2 else {"subtype": "PCM_16"}))
        tests.append(name)
    write_text_as_audio(test_dir / "test_broken.wav")
    tests.insert(2, "test_broken.wav")
    bad[str((test_dir / "test_broken.wav").resolve())] = "text"
    (root / "test.csv").write_text("filename\n" + "".join(t + "\n" for t in tests))
    return {"rows": rows, "tests": tests, "bad": bad}


# --------------------------------------------------------------------------- a folder of class folders

# Each class's files: (relative path, the group it belongs to, sample rate, channels, seconds).
# Takes of one sound (``dog_01``/``dog_02``/``dog-take3``, ``bark (1)``/``bark (2)``) share a group;
# a subfolder of a class folder is one group (a recording session), however deep its files.
CLASS_FOLDERS = {
    "dog": [("dog_01.wav", "dog", 16000, 1, 1.0), ("dog_02.wav", "dog", 22050, 1, 1.2),
            ("dog-take3.flac", "dog", 16000, 1, 1.0), ("bark (1).wav", "bark", 48000, 2, 0.8),
            ("bark (2).ogg", "bark", 16000, 1, 1.0), ("growl.wav", "growl", 8000, 1, 1.5),
            ("session1/a.wav", "dog-s1", 16000, 1, 1.0), ("session1/b.flac", "dog-s1", 16000, 1, 1.0),
            ("session2/deep/c.wav", "dog-s2", 44100, 2, 1.0)],
    "cat": [("meow_1.wav", "meow", 16000, 1, 1.0), ("meow_2.wav", "meow", 16000, 1, 1.0),
            ("Meow_3.flac", "meow", 32000, 1, 1.1), ("purr take 1.wav", "purr", 16000, 1, 1.0),
            ("purr take 2.wav", "purr", 16000, 2, 1.0), ("hiss.wav", "hiss", 16000, 1, 0.9),
            ("s1/x.wav", "cat-s1", 44100, 2, 1.0), ("s1/y.wav", "cat-s1", 16000, 1, 1.0),
            ("s2/z.wav", "cat-s2", 8000, 1, 1.0)],
    "_background": [("noise_01.wav", "noise", 16000, 1, 1.0), ("noise_02.wav", "noise", 16000, 1, 1.0),
                    ("room.wav", "room", 16000, 1, 1.0), ("street.flac", "street", 16000, 1, 1.3)],
}  # fmt: skip
CLASS_FREQS = {"dog": 300.0, "cat": 2400.0}


def write_class_folders(root: Path, seed: int = 0, classes: dict | None = None) -> dict:
    """A folder of one's own sounds: one subfolder per class (:data:`CLASS_FOLDERS`: wav, flac,
    ogg at 8-48 kHz, some stereo, nested session folders), tones per class and noise for the
    background, plus a text file named ``.wav`` and a 0-byte file in class folders, a loose
    audio file in ``root``, and files that are not audio. Returns ``{"label": {path: class},
    "group": {path: group}, "bad": {path: kind}, "stray": [path]}`` (resolved paths as str)."""
    rng = np.random.default_rng(seed)
    label, group, bad = {}, {}, {}
    for name, files in (classes or CLASS_FOLDERS).items():
        for rel, grp, rate, channels, seconds in files:
            path = root / name / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if name in CLASS_FREQS:
                x = tone(CLASS_FREQS[name], rate, seconds, rng=rng)
            else:
                x = (0.1 * rng.standard_normal(int(rate * seconds))).astype("float32")
            if channels == 2:
                x = np.stack([x, 0.5 * x], axis=1)
            write_audio(path, x, rate)
            label[str(path.resolve())] = name
            group[str(path.resolve())] = f"{name}:{grp}"
    if classes is None:
        write_text_as_audio(root / "cat" / "broken.wav")
        write_empty(root / "dog" / "session1" / "empty.wav")
        bad = {str((root / "cat" / "broken.wav").resolve()): "text",
               str((root / "dog" / "session1" / "empty.wav").resolve()): "empty"}  # fmt: skip
        write_audio(root / "loose.wav", tone(500, 16000, 1.0), 16000)
        (root / "notes.txt").write_text("my recordings\n")
        (root / "dog" / "README.txt").write_text("dogs\n")
        (root / ".hidden").mkdir()
        write_audio(root / ".hidden" / "x.wav", tone(500, 16000, 1.0), 16000)
    return {"label": label, "group": group, "bad": bad, "stray": [str((root / "loose.wav").resolve())]}
