"""The real-recordings benchmark's datasets (bench/realsets.py) on tiny fake package trees:
instrument names to classes, whole kits and whole prompts on one side of every split."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import realsets  # noqa: E402


def _wav(path: Path, seconds: float = 0.2) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(int(16000 * seconds), dtype=np.float32), 16000)
    return path


def _kit(root: Path, name: str, instruments: dict[str, list[str]]) -> Path:
    kit = root / "usr/share/hydrogen/data/drumkits" / name
    parts = []
    for instrument, files in instruments.items():
        layers = "".join(f"<layer><filename>{f}</filename></layer>" for f in files)
        parts.append(f"<instrument><id>0</id><name>{instrument}</name>{layers}</instrument>")
        for f in files:
            if not f.startswith("missing"):  # named in the XML, absent on disk
                _wav(kit / f)
    kit.mkdir(parents=True, exist_ok=True)
    (kit / "drumkit.xml").write_text(
        '<?xml version="1.0"?><drumkit_info xmlns="http://www.hydrogen-music.org/drumkit">'
        f"<name>{name}</name><instrumentList>{''.join(parts)}</instrumentList></drumkit_info>"
    )
    return kit


@pytest.mark.parametrize(
    ("name", "label"),
    [("Kick Low 1", "kick"), ("c3 - bass drum 1", "kick"), ("BassDrum", "kick"), ("Snare Rimshot", "snare"),
     ("Closed HH", "hihat"), ("Sabian Hat Semi-Open", "hihat"), ("Hi-Hat Pedal (Paiste)", "hihat"),
     ("Ride (Custom, Zagrebin 22\")", "cymbal"), ("China (Paiste Alpha 18\")", "cymbal"), ("Pearl Tom Floor", "tom"),
     ("tomhi2", "tom"), ("Hand Clap", "clap"), ("Cowbell", "percussion"), ("Djembe1 Bass", "percussion"),
     ("Stick", None), ("Zap 1", None), ("23", None), ("", None)],
)  # fmt: skip
def test_instrument_names_map_to_classes_by_the_documented_rules(name, label):
    assert realsets.drum_class(name) == label


def test_kit_layers_become_clips_and_whole_kits_are_held_out(tmp_path):
    root = tmp_path / "x" / "hydrogen-drumkits"
    for k in range(8):
        _kit(root, f"Kit {k}", {"Kick": [f"k{k}a.wav", f"k{k}b.wav"], "Snare": [f"s{k}.wav"],
                                "Stick": [f"st{k}.wav"], "Crash": [f"c{k}.wav", "missing.wav"]})  # fmt: skip
    clips = realsets.drum_clips([root])
    assert len(clips) == 8 * 4  # two kicks, a snare, a crash a kit; the stick and the missing file left out
    assert {c.label for c in clips} == {"kick", "snare", "cymbal"}
    assert {c.group for c in clips} == {f"Kit {k}" for k in range(8)}
    for seed in range(5):
        train, test = realsets.split(clips, 0.25, seed)
        assert train and test and len(train) + len(test) == len(clips)
        assert not {c.group for c in train} & {c.group for c in test}  # no kit straddles
        assert len(test) >= 0.25 * len(clips)
    assert realsets.split_groups(clips, 0.25, 0) == realsets.split_groups(clips, 0.25, 0)  # seeded
    assert len({frozenset(realsets.split_groups(clips, 0.25, s)) for s in range(5)}) > 1  # seeds differ


def test_prompts_are_held_out_across_languages_and_laid_out_as_class_folders(tmp_path):
    roots = {}
    for lang, voice in (("en", "en_US_f_A"), ("fr", "fr_CA_f_J"), ("ru", "ru_RU_f_I")):
        root = tmp_path / "x" / f"asterisk-core-sounds-{lang}-wav"
        for prompt in ("hello", "goodbye", "digits/1", "digits/2", "letters/a", "letters/b"):
            _wav(root / "usr/share/asterisk/sounds" / voice / f"{prompt}.wav")
        roots[lang] = root
    clips = realsets.speech_clips(roots)
    assert len(clips) == 18 and {c.label for c in clips} == {"en", "fr", "ru"}
    assert {c.group for c in clips} == {"hello", "goodbye", "digits/1", "digits/2", "letters/a", "letters/b"}
    train, test = realsets.split(clips, 0.3, 1)
    assert not {c.group for c in train} & {c.group for c in test}  # a prompt never straddles
    for group in {c.group for c in test}:  # ... in any language
        assert {c.label for c in test if c.group == group} == {"en", "fr", "ru"}
    assert all(n <= 2 for n in _counts(realsets.subsample(train, 2, 0)).values())
    sides = realsets.materialise(tmp_path / "sets" / "speech-s1", {"train": train, "test": test})
    for side, mine in sides.items():
        for clip in mine:
            assert clip.path.parent == tmp_path / "sets" / "speech-s1" / side / clip.label
            assert clip.path.is_symlink() and clip.path.resolve().is_file()
    names = [c.path.name for c in sides["test"]]
    assert len(set(names)) * 3 == len(names)  # one prompt's file name in each language's folder
    from ast_audio.data.folders import read_groups, scan

    root = tmp_path / "sets" / "speech-s1" / "train"
    _, scanned, _ = scan(root, read_groups(root / "groups.csv"))  # what recipe folder splits validation by
    assert {c.group for c in scanned} == {f"groups.csv:{c.group}" for c in train}


def test_fetching_without_apt_get_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(realsets.shutil, "which", lambda name: None)
    with pytest.raises(realsets.FetchError, match="needs `apt-get`"):
        realsets.fetch(("hydrogen-drumkits",), tmp_path)
    (tmp_path / "x" / "hydrogen-drumkits" / "usr").mkdir(parents=True)  # already unpacked: reused, no tool needed
    assert realsets.fetch(("hydrogen-drumkits",), tmp_path) == {"hydrogen-drumkits": tmp_path / "x" / "hydrogen-drumkits"}


def _counts(clips):
    out: dict[str, int] = {}
    for c in clips:
        out[c.label] = out.get(c.label, 0) + 1
    return out


def test_voice_packs_are_classes_and_a_line_is_held_out_in_every_voice(tmp_path):
    root = tmp_path / "hedgewars-data"
    voices = root / "usr/share/games/hedgewars/Data/Sounds/voices"
    for pack in ("Pirate", "Robot", "Default_pl"):
        for line in ("Amazing", "Ow1", "Ow2", "Hello", "Boring"):
            _wav(voices / pack / f"{line}.ogg")
    (voices / "Robot" / "notes.txt").write_text("not a clip")
    clips = realsets.voice_clips(root)
    assert len(clips) == 15 and {c.label for c in clips} == {"Pirate", "Robot", "Default_pl"}
    assert {c.group for c in clips} == {"amazing", "ow", "hello", "boring"}  # Ow1 and Ow2: takes of one line
    train, test = realsets.split(clips, 0.3, 0)
    for group in {c.group for c in test}:
        assert {c.label for c in test if c.group == group} == {"Pirate", "Robot", "Default_pl"}
    assert not {c.group for c in train} & {c.group for c in test}
