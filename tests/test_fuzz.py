"""Fuzzing the entry points that read untrusted bytes: audio decoding, checkpoint loading (every
layout) and datafiles / label CSVs.

Valid files are mutated (truncation, bit flips, overwritten and inserted bytes, header fields
set to extreme values) and their JSON parts given values of every type (Hypothesis). Every
outcome must be a result or an :class:`~ast_audio.errors.AstAudioError`: never another
exception, a hang (each case has a time limit) or a NaN in what comes back.

Seeded (``derandomize``: the same cases on every run) and bounded: ``make test`` runs the
counts below in a few seconds each; ``AST_AUDIO_FUZZ=K`` multiplies every count by ``K``
(``AST_AUDIO_FUZZ=20 pytest tests/test_fuzz.py --hypothesis-show-statistics``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from factories import deit_state, labelled, noise, tiny_ast, write_audio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ast_audio import load_audio, load_model
from ast_audio.checkpoints import export_hf, export_original, save_checkpoint
from ast_audio.data import check_datafile, read_datafile
from ast_audio.data.labels import read_label_csv
from ast_audio.errors import AstAudioError

SCALE = max(1, int(os.environ.get("AST_AUDIO_FUZZ", "1")))
CASES = {"audio": 60, "checkpoint": 30, "json": 25, "datafile": 80, "label_csv": 80}  # per test, times SCALE
CASE_SECONDS = 20  # a case that takes longer is a hang


class Seeds(dict):
    """Seed files by name; a short repr, so that a failing case's report stays readable."""

    def __repr__(self) -> str:
        return f"<seed files: {', '.join(self)}>"


def fuzz(kind: str):
    return settings(
        max_examples=CASES[kind] * SCALE, derandomize=True, deadline=None, database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )  # fmt: skip


@contextlib.contextmanager
def time_limit(seconds: int = CASE_SECONDS):
    def hang(signum, frame):
        raise TimeoutError(f"a fuzz case ran over {seconds} s (a hang)")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def outcome(call):
    """``call()``'s result, or ``None`` when it raised an AstAudioError; anything else fails."""
    with time_limit():
        try:
            return call()
        except AstAudioError as err:
            assert str(err) and "\n" not in str(err).strip(), repr(err)  # one line
            return None


# --------------------------------------------------------------------------- mutations

position = st.one_of(st.integers(0, 300), st.floats(0, 1, allow_nan=False))  # header bytes often, anywhere
extreme = st.sampled_from([0, 1, 2, 3, 8, 44, 255, 65535, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF])
mutation = st.one_of(
    st.tuples(st.just("truncate"), position),
    st.tuples(st.just("flip"), position, st.integers(0, 7)),
    st.tuples(st.just("overwrite"), position, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=32)),
    st.tuples(st.just("field"), position, extreme, st.sampled_from([2, 4])),
)
mutations = st.lists(mutation, min_size=1, max_size=4)


def _at(pos, size: int) -> int:
    index = int(pos * size) if isinstance(pos, float) else pos
    return min(max(index, 0), max(size - 1, 0))


def mutate(data: bytes, steps) -> bytes:
    out = bytearray(data)
    for step in steps:
        kind, where = step[0], _at(step[1], len(out))
        if kind == "truncate":
            del out[where:]
        elif not out:
            continue
        elif kind == "flip":
            out[where] ^= 1 << step[2]
        elif kind == "overwrite":
            out[where : where + len(step[2])] = step[2]
        elif kind == "insert":
            out[where:where] = step[2]
        else:  # a little-endian header field set to an extreme value
            out[where : where + step[3]] = (step[2] & ((1 << (8 * step[3])) - 1)).to_bytes(step[3], "little")
    return bytes(out)


json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def with_value(doc, path: list, value):
    """A copy of the JSON ``doc`` with the item at ``path`` (keys/indices, as far as they
    reach) replaced by ``value``."""
    doc = json.loads(json.dumps(doc))
    node, parent, key = doc, None, None
    for step in path:
        if isinstance(node, dict) and node:
            key = sorted(node)[step % len(node)]
        elif isinstance(node, list) and node:
            key = step % len(node)
        else:
            break
        parent, node = node, node[key]
    if parent is None:
        return value
    parent[key] = value
    return doc


# --------------------------------------------------------------------------- audio decoding


@pytest.fixture(scope="module")
def audio_seeds(tmp_path_factory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("fuzz-audio")
    x = noise(0.25, level=0.3)
    return Seeds({
        name: write_audio(root / f"seed.{ext}", x, 16000, **kw).read_bytes()
        for name, ext, kw in [
            ("wav16", "wav", {"subtype": "PCM_16"}), ("wavf", "wav", {"subtype": "FLOAT"}), ("flac", "flac", {}),
            ("ogg", "ogg", {}), ("mp3", "mp3", {"format": "MP3"}), ("aiff", "aiff", {"subtype": "PCM_24"}),
        ]
    })  # fmt: skip


EXTENSION = {"wav16": "wav", "wavf": "wav", "flac": "flac", "ogg": "ogg", "mp3": "mp3", "aiff": "aiff"}


@fuzz("audio")
@given(kind=st.sampled_from(["wav16", "wavf", "flac", "ogg", "mp3", "aiff"]), steps=mutations,
       rate=st.sampled_from([16000, None]), strict=st.booleans())  # fmt: skip
def test_audio_decoding_gives_a_finite_waveform_or_an_audio_error(audio_seeds, tmp_path_factory, kind, steps, rate,
                                                                  strict):  # fmt: skip
    path = tmp_path_factory.getbasetemp() / f"fuzz.{EXTENSION[kind]}"
    path.write_bytes(mutate(audio_seeds[kind], steps))
    waveform = outcome(lambda: load_audio(path, sample_rate=rate, strict=strict))
    if waveform is not None:
        assert waveform.dtype == torch.float32 and waveform.numel() > 0
        assert torch.isfinite(waveform).all()


# --------------------------------------------------------------------------- checkpoints, every layout


@pytest.fixture(scope="module")
def checkpoint_seeds(tmp_path_factory) -> dict[str, dict[str, bytes]]:
    """Each layout's files (name -> bytes), from a 1-block tiny model."""
    root = tmp_path_factory.mktemp("fuzz-ck")
    model = labelled(tiny_ast(label_dim=3, depth=1, input_tdim=64), ["a", "b", "c"], True)
    seeds = Seeds({
        "ours": {"m.safetensors": save_checkpoint(model, root / "m.safetensors").read_bytes()},
        "ours-pt": {"m.pt": save_checkpoint(model, root / "m.pt").read_bytes()},
        "original": {"m.pth": export_original(model, root / "m.pth").read_bytes()},
        "hf": {p.name: p.read_bytes() for p in export_hf(model, root / "hf").iterdir()},
    })
    torch.save({"model": deit_state(depth=1)}, root / "deit.pth")
    seeds["deit"] = {"deit.pth": (root / "deit.pth").read_bytes()}
    return seeds


def _load_checks(path: Path):
    model = load_model(path)
    for name, tensor in model.state_dict().items():
        assert torch.isfinite(tensor).all(), name
    return model


@fuzz("checkpoint")
@given(layout=st.sampled_from(["ours", "ours-pt", "original", "hf", "deit"]), which=st.integers(0, 2), steps=mutations)
def test_mutated_checkpoints_load_or_give_a_checkpoint_error(checkpoint_seeds, tmp_path_factory, layout, which, steps):
    files = checkpoint_seeds[layout]
    folder = tmp_path_factory.getbasetemp() / "fuzz-ck-case"
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    names = sorted(files)
    target = names[which % len(names)]
    for name, data in files.items():
        (folder / name).write_bytes(mutate(data, steps) if name == target else data)
    outcome(lambda: _load_checks(folder if layout == "hf" else folder / target))


@fuzz("json")
@given(where=st.sampled_from(["config.json", "preprocessor_config.json", "ours"]),
       path=st.lists(st.integers(0, 50), min_size=0, max_size=3), value=json_value)  # fmt: skip
def test_checkpoint_configs_with_values_of_any_type_load_or_give_an_error(checkpoint_seeds, tmp_path_factory, where,
                                                                          path, value):  # fmt: skip
    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.getbasetemp() / "fuzz-json-case"
    folder.mkdir(exist_ok=True)
    if where == "ours":
        (folder / "seed.safetensors").write_bytes(checkpoint_seeds["ours"]["m.safetensors"])
        from safetensors import safe_open

        with safe_open(str(folder / "seed.safetensors"), framework="pt") as fh:
            meta = fh.metadata()
        doc = with_value(json.loads(meta["ast-audio"]), path, value)
        target = folder / "m.safetensors"
        save_file(load_file(folder / "seed.safetensors"), str(target),
                  metadata={**meta, "ast-audio": json.dumps(doc)})  # fmt: skip
    else:
        for name, data in checkpoint_seeds["hf"].items():
            if name == where:
                data = json.dumps(with_value(json.loads(data), path, value)).encode()
            (folder / name).write_bytes(data)
        target = folder
    outcome(lambda: _load_checks(target))


# --------------------------------------------------------------------------- datafiles and label CSVs


@pytest.fixture(scope="module")
def data_seeds(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz-data")
    write_audio(root / "good.wav", noise(0.2), 16000, subtype="PCM_16")
    (root / "text.wav").write_text("not audio\n")
    (root / "empty.wav").write_bytes(b"")
    (root / "labels.csv").write_text('index,mid,display_name\n0,/m/a,"A, the first"\n1,/m/b,B\n')
    return root


wav_names = st.sampled_from(["good.wav", "text.wav", "empty.wav", "missing.wav", "", " ", "good.wav\0x", ".", "/",
                             "~/good.wav", "../good.wav"]) | st.text(max_size=10)  # fmt: skip
label_field = st.sampled_from(["/m/a", "/m/b", "/m/a,/m/b", "/m/zzz", "", ",", " /m/a , "]) | st.text(max_size=8)
entry = st.fixed_dictionaries({"wav": wav_names, "labels": label_field}) | json_value
datafile_doc = st.one_of(st.fixed_dictionaries({"data": st.lists(entry, max_size=6)}), json_value)


@fuzz("datafile")
@given(doc=datafile_doc, steps=st.none() | mutations, skip_bad=st.booleans())
def test_datafiles_read_or_give_a_data_error(data_seeds, doc, steps, skip_bad):
    text = json.dumps(doc).encode()
    path = data_seeds / "fuzz.json"
    path.write_bytes(mutate(text, steps) if steps else text)
    df = outcome(lambda: read_datafile(path, data_seeds / "labels.csv", skip_bad=skip_bad))
    if df is not None:
        assert len(df.entries) > 0 and df.targets().shape == (len(df.entries), 2)
        assert all(e.wav.is_file() for e in df.entries)
    result = outcome(lambda: check_datafile(path, data_seeds / "labels.csv" if skip_bad else None, workers=1,
                                            progress=False))  # fmt: skip
    if result is not None:
        total, problems = result
        assert all(isinstance(line, str) for line in problems) and len(problems) <= total + 6


csv_rows = st.lists(st.lists(st.text(max_size=6) | st.integers(-2, 4).map(str), max_size=4), max_size=5)


@fuzz("label_csv")
@given(header=st.sampled_from(["index,mid,display_name", "\ufeffindex,mid,display_name", "mid,index,display_name",
                               "index,mid", ""]) | st.text(max_size=20),
       rows=csv_rows, steps=st.none() | mutations)  # fmt: skip
def test_label_csvs_read_or_give_an_error(data_seeds, header, rows, steps):
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    data = (header + "\n" + buffer.getvalue()).encode("utf-8", "surrogatepass")
    path = data_seeds / "fuzz_labels.csv"
    path.write_bytes(mutate(data, steps) if steps else data)
    table = outcome(lambda: read_label_csv(path))
    if table is not None:
        assert len(table) == len(table.names) == len(set(table.mids)) > 0
        assert all(isinstance(n, str) for n in table.names)

