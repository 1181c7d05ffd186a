"""Real recordings for ``bench/real.py`` and ``bench/pretrain.py``: Debian packages that ship plain recordings, fetched
into a cache and laid out as one folder per class, with held-out groups.

Layout of the cache (``--cache``, default ``~/.cache/ast-audio/real``)::

    CACHE/debs/<package>_<version>_all.deb     apt-get download
    CACHE/x/<package>/usr/...                  dpkg -x (no root needed)
    CACHE/sets/<set>/{train,test}/<class>/<group>__<file>   symlinks to the unpacked files

A package already unpacked under ``CACHE/x`` is used as it is; a ``.deb`` already in
``CACHE/debs`` is unpacked without downloading it again.

The sets (each file's *group* is what never straddles train and test, nor train and validation):

- **drums** (``hydrogen-drumkits``, ``hydrogen-drumkits-effects``): the one-shot samples of
  Hydrogen's drum kits. Each kit's ``drumkit.xml`` names its instruments and the files of
  their layers; an instrument's class comes from its name by the keyword rules of
  :data:`DRUM_RULES` (the first rule that matches wins; an instrument no rule matches, such as
  "Stick", "Zap" or an unnamed slot, is left out). Group: the kit, so whole kits are held out.
- **speech** (``asterisk-core-sounds-{en,es,fr,it,ru}-wav``): Asterisk's studio voice prompts in
  five languages; class: the language. Group: the prompt (its path under the voice's folder,
  such as ``digits/1``), so one prompt's recordings in every language go to the same side.
  Subsampled (seeded) to ``per_class`` training and ``test_per_class`` test clips a language.
- **voices** (``hedgewars-data``): the game's fifteen voice packs (characters and languages:
  "Pirate", "Robot", "Default_pl"...), each the same few dozen exclamations acted by one voice,
  with the game's effects on some; class: the voice pack. Group: the line without its take
  number (``Ow2`` -> ``ow``), so a line is held out in every voice at once and the model must
  know a voice from lines it never heard.
"""

from __future__ import annotations

import csv
import math
import os
import re
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ast_audio.audio.io import audio_info, load_audio
from ast_audio.features.kaldi import fbank

DEFAULT_CACHE = Path.home() / ".cache" / "ast-audio" / "real"
DRUM_PACKAGES = ("hydrogen-drumkits", "hydrogen-drumkits-effects")
LANGUAGES = ("en", "es", "fr", "it", "ru")
SPEECH_PACKAGES = tuple(f"asterisk-core-sounds-{lang}-wav" for lang in LANGUAGES)
VOICE_PACKAGES = ("hedgewars-data",)
AUDIO_SUFFIXES = (".wav", ".flac", ".aif", ".aiff", ".ogg", ".mp3")

# Instrument name -> class: the first rule with a keyword at the start of a word of the
# (lower-cased) name. Hand percussion comes first ("Cowbell" is no cymbal's bell, "Djembe
# Bass" no kick), cymbals before toms ("Ride (Custom ...)" is a ride).
DRUM_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("percussion", ("cowbell", "tambourine", "conga", "bongo", "djembe", "cajon", "clave", "woodblock", "agogo",
                    "maraca", "shaker", "sangban", "dununba", "kenkeni", "waterglass", "triangle", "guiro")),
    ("hihat", ("hi-hat", "hihat", "hi hat", "hat", "hh", "ohh")),
    ("kick", ("kick", "bass drum", "bassdrum")),
    ("snare", ("snare",)),
    ("cymbal", ("crash", "ride", "china", "splash", "cymbal", "bell")),
    ("tom", ("tom", "floor")),
    ("clap", ("clap", "snap")),
)  # fmt: skip
_DRUM_PATTERNS = [(name, re.compile("|".join(r"\b" + re.escape(k) for k in keys))) for name, keys in DRUM_RULES]


class FetchError(RuntimeError):
    """A package that could not be fetched or unpacked; the message says why and what to do."""


@dataclass(frozen=True)
class Clip:
    path: Path  # the recording
    label: str  # its class
    group: str  # what is held out together (a kit, a prompt)


# --------------------------------------------------------------------------- fetching


def fetch(packages: tuple[str, ...], cache: Path) -> dict[str, Path]:
    """``{package: CACHE/x/package}``, each unpacked with ``dpkg -x`` from a ``.deb`` that
    ``apt-get download`` put in ``CACHE/debs`` (what is already there is reused)."""
    out = {}
    for package in packages:
        root = cache / "x" / package
        if not (root.is_dir() and any(root.iterdir())):
            _unpack(_deb(package, cache / "debs"), root)
        out[package] = root
    return out


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FetchError(f"{package}: fetching it needs `{name}` (Debian or Ubuntu); without it, unpack the package "
                         f"yourself into CACHE/x/{package} (dpkg -x {package}_*.deb CACHE/x/{package})")  # fmt: skip
    return path


def _deb(package: str, debs: Path) -> Path:
    found = sorted(debs.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    apt = _tool("apt-get", package)
    debs.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([apt, "download", package], cwd=debs, capture_output=True, text=True)
    if done.returncode != 0:  # an empty or stale package list: refresh it once (root, else the message says so)
        update = subprocess.run([apt, "update"], capture_output=True, text=True)
        done = subprocess.run([apt, "download", package], cwd=debs, capture_output=True, text=True)
        if done.returncode != 0:
            hint = "" if update.returncode == 0 else "; `apt-get update` failed too (run it as root: sudo apt-get update)"
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise FetchError(f"{package}: apt-get download failed: {last}{hint}")
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        raise FetchError(f"{package}: apt-get download left no {package}_*.deb in {debs}")
    return found[-1]


def _unpack(deb: Path, root: Path) -> None:
    dpkg = _tool("dpkg", deb.name.split("_")[0])
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    done = subprocess.run([dpkg, "-x", str(deb), str(tmp)], capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FetchError(f"{deb}: dpkg -x failed: {done.stderr.strip() or done.returncode}")
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)  # whole or not at all: a half-unpacked package is never taken for done


# --------------------------------------------------------------------------- drums


def drum_class(instrument: str) -> str | None:
    """The class of a drum kit instrument from its name (:data:`DRUM_RULES`), or ``None``."""
    low = instrument.lower()
    return next((name for name, pattern in _DRUM_PATTERNS if pattern.search(low)), None)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def kit_clips(kit: Path) -> list[Clip]:
    """The classified layer files of one kit folder (its ``drumkit.xml``), each file once
    (the first instrument that names it decides its class); group: the kit's folder name."""
    try:
        tree = ET.parse(kit / "drumkit.xml")
    except (OSError, ET.ParseError):
        return []
    clips, seen = [], set()
    for instrument in (e for e in tree.iter() if _local(e.tag) == "instrument"):
        name = next((c.text or "" for c in instrument if _local(c.tag) == "name"), "")
        label = drum_class(name)
        if label is None:
            continue
        for element in (e for e in instrument.iter() if _local(e.tag) == "filename"):
            path = kit / (element.text or "").strip()
            if path.suffix.lower() in AUDIO_SUFFIXES and path.is_file() and path.name not in seen:
                seen.add(path.name)
                clips.append(Clip(path, label, kit.name))
    return clips


def drum_clips(roots: list[Path]) -> list[Clip]:
    """Every kit's clips under the unpacked packages ``roots`` (``usr/share/hydrogen/data/drumkits/*``)."""
    kits = sorted(p.parent for root in roots for p in root.glob("usr/share/hydrogen/data/drumkits/*/drumkit.xml"))
    return [clip for kit in kits for clip in kit_clips(kit)]


# --------------------------------------------------------------------------- speech


def speech_clips(roots: dict[str, Path]) -> list[Clip]:
    """The voice prompts of each language's unpacked package (``{language: root}``); group:
    the prompt's path under its voice folder, without the suffix (``digits/1``)."""
    clips = []
    for language, root in sorted(roots.items()):
        for voice in sorted(p for p in root.glob("usr/share/asterisk/sounds/*") if p.is_dir()):
            for path in sorted(voice.rglob("*.wav")):
                clips.append(Clip(path, language, path.relative_to(voice).with_suffix("").as_posix()))
    return clips


def voice_clips(root: Path) -> list[Clip]:
    """The voice packs of the unpacked ``hedgewars-data`` (``.../Sounds/voices/<pack>/<Line>.ogg``);
    group: the line's name without a trailing take number, lower-cased."""
    packs = sorted(p for p in root.glob("usr/share/games/hedgewars/Data/Sounds/voices/*") if p.is_dir())
    return [Clip(path, pack.name, re.sub(r"\d+$", "", path.stem).lower() or path.stem)
            for pack in packs for path in sorted(pack.glob("*.ogg"))]  # fmt: skip


# --------------------------------------------------------------------------- splits


def split_groups(clips: list[Clip], share: float, seed: int) -> set[str]:
    """Groups drawn (seeded) until they hold at least ``share`` of the clips: the held-out side."""
    sizes: dict[str, int] = {}
    for clip in clips:
        sizes[clip.group] = sizes.get(clip.group, 0) + 1
    order = sorted(sizes)
    rng = np.random.default_rng(seed)
    held, count = set(), 0
    for i in rng.permutation(len(order)):
        if count >= share * len(clips):
            break
        held.add(order[i])
        count += sizes[order[i]]
    return held


def split(clips: list[Clip], share: float, seed: int) -> tuple[list[Clip], list[Clip]]:
    """``(kept, held_out)`` by whole groups (:func:`split_groups`)."""
    held = split_groups(clips, share, seed)
    return [c for c in clips if c.group not in held], [c for c in clips if c.group in held]


def subsample(clips: list[Clip], per_class: int | None, seed: int) -> list[Clip]:
    """At most ``per_class`` clips of each class, drawn (seeded); all with ``None``."""
    if per_class is None:
        return clips
    rng = np.random.default_rng(seed)
    out = []
    for label in sorted({c.label for c in clips}):
        mine = [c for c in clips if c.label == label]
        keep = sorted(rng.permutation(len(mine))[:per_class])
        out += [mine[i] for i in keep]
    return out


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def materialise(folder: Path, sides: dict[str, list[Clip]]) -> dict[str, list[Clip]]:
    """``folder/<side>/<class>/<group>__<file>`` symlinks for each side's clips and each side's
    ``groups.csv`` (so ``recipe folder`` splits validation by kit or prompt, as the test side
    is held out); the folder is made afresh. Returns the sides with the links as paths
    (class and group kept)."""
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    out: dict[str, list[Clip]] = {}
    for side, clips in sides.items():
        out[side] = []
        rows = []
        for clip in clips:
            link = tmp / side / safe_name(clip.label) / f"{safe_name(clip.group)}__{safe_name(clip.path.name)}"
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(clip.path.resolve(), link)
            out[side].append(Clip(folder / link.relative_to(tmp), clip.label, clip.group))
            rows.append((link.relative_to(tmp / side).as_posix(), clip.group))
        if rows:
            with open(tmp / side / "groups.csv", "w", newline="", encoding="utf-8") as fh:
                csv.writer(fh).writerows([("filename", "group"), *rows])
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return out


@dataclass(frozen=True)
class RealSet:
    name: str  # drums, speech
    packages: tuple[str, ...]
    group_kind: str  # what a group is, for the report
    test_share: float
    per_class: int | None  # training clips a class at most (None: all)
    test_per_class: int | None


SETS = {
    "drums": RealSet("drums", DRUM_PACKAGES, "kit", 0.25, None, None),
    "speech": RealSet("speech", SPEECH_PACKAGES, "prompt", 0.3, 60, 40),
    "voices": RealSet("voices", VOICE_PACKAGES, "line", 0.3, None, None),
}


def build(spec: RealSet, cache: Path, seed: int) -> dict[str, list[Clip]]:
    """Fetch ``spec``'s packages, split its clips by group (seeded), subsample, and lay them out
    under ``CACHE/sets/<name>-s<seed>``; ``{"train": [...], "test": [...]}``."""
    roots = fetch(spec.packages, cache)
    if spec.name == "drums":
        clips = drum_clips(list(roots.values()))
    elif spec.name == "voices":
        clips = voice_clips(roots["hedgewars-data"])
    else:
        clips = speech_clips({p.split("-")[3]: r for p, r in roots.items()})
    train, test = split(clips, spec.test_share, seed)
    sides = {"train": subsample(train, spec.per_class, seed), "test": subsample(test, spec.test_per_class, seed)}
    return materialise(cache / "sets" / f"{spec.name}-s{seed}", sides)


def read_set(folder: Path) -> dict[str, list[Clip]]:
    """The sides of a set :func:`materialise` laid out before (``folder/<side>/<class>/<group>__<file>``)."""
    sides: dict[str, list[Clip]] = {}
    for side in ("train", "test"):
        sides[side] = [Clip(link, link.parent.name, link.name.split("__", 1)[0])
                       for link in sorted((folder / side).glob("*/*"))]  # fmt: skip
    return sides


# --------------------------------------------------------------------------- measuring on a set


def frames_for(paths: list[Path]) -> int:
    """Input length for clips: frames covering the 90th percentile of their durations
    (100 frames a second), rounded up to a multiple of 16, within 96..1024."""
    infos = [audio_info(p) for p in paths]
    seconds = [info.frames / info.sample_rate for info in infos]
    frames = math.ceil(float(np.percentile(seconds, 90)) * 100 / 16) * 16
    return int(min(max(frames, 96), 1024))


_FEATURES: dict[Path, np.ndarray] = {}


def clip_statistics(path: Path) -> np.ndarray:
    """Mean and std of each log-mel band and of its frame-to-frame difference (4 x 128 values)."""
    if path not in _FEATURES:
        wave = load_audio(path, 16000)
        x = fbank(wave - wave.mean(), 16000, 128).double().numpy()  # (T, 128)
        if len(x) < 2:
            x = np.vstack([x, x, np.zeros((2, 128))])[:2]
        d = np.diff(x, axis=0)
        _FEATURES[path] = np.concatenate([x.mean(0), x.std(0), d.mean(0), d.std(0)])
    return _FEATURES[path]


def baseline(train_clips, test_clips) -> dict:
    """Log-mel statistics + logistic regression, C by grouped cross-validation on train."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    begin = time.perf_counter()
    known = {c.label for c in train_clips}
    test_clips = [c for c in test_clips if c.label in known]
    x = np.stack([clip_statistics(c.path) for c in train_clips])
    y = [c.label for c in train_clips]
    groups = [c.group for c in train_clips]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    folds = GroupKFold(n_splits=min(5, len(set(groups))))
    search = GridSearchCV(model, {"logisticregression__C": [0.01, 0.1, 1.0, 10.0]}, cv=folds)
    search.fit(x, y, groups=groups)
    test = float(search.score(np.stack([clip_statistics(c.path) for c in test_clips]), [c.label for c in test_clips]))
    return {"valid": float(search.best_score_), "test": test, "seconds": time.perf_counter() - begin,
            "C": search.best_params_["logisticregression__C"]}  # fmt: skip
