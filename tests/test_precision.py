"""``AST_AUDIO_PRECISION`` pins what ``precision="auto"`` means, everywhere ``auto`` is decided;
fp32 scores do not depend on a clip's batch-mates; ``auto`` keeps its promises.

The tests marked ``precision`` are what ``make test`` runs again under ``AST_AUDIO_PRECISION=fp32``,
``bf16`` and ``int8`` (the Makefile's ``PRECISION_TESTS``), so that a change that breaks one precision
fails on any machine; their tolerances come from ``precision.py``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_main
from factories import SR, as_flags, chirp, noise, toy_train_settings, write_audio, write_toy_dataset
from fastapi.testclient import TestClient
from precision import BATCH_MATES, FROM_FP32, PRECISIONS, auto_here

from ast_audio import ConfigError
from ast_audio.base import runtime
from ast_audio.base.runtime import PRECISION_ENV, auto_amp, auto_precision, pinned_precision, training_amp
from ast_audio.infer import AudioTagger
from ast_audio.serve import create_app

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    """Five clips of three lengths: one model window of the 3 s checkpoint, three, and a part of one."""
    root = tmp_path_factory.mktemp("precision-clips")
    waves = [noise(1.0, 0.1, seed=1) + chirp(1.0) * 0.3, noise(5.0, 0.2, seed=2), chirp(2.0),
             noise(0.6, 0.3, seed=3), noise(3.0, 0.05, seed=4) + chirp(3.0) * 0.1]  # fmt: skip
    return [write_audio(root / f"clip{i}.wav", w, SR, subtype="PCM_16") for i, w in enumerate(waves)]


def scores(predictions) -> np.ndarray:
    return np.stack([p.scores for p in predictions])


# --------------------------------------------------------------------------- the pin itself


def test_the_variable_names_a_precision_or_is_a_one_line_error():
    assert [pinned_precision({PRECISION_ENV: v}) for v in ("fp32", "bf16", "int8")] == ["fp32", "bf16", "int8"]
    assert pinned_precision({PRECISION_ENV: " BF16 "}) == "bf16"  # any case, spaces ignored
    assert pinned_precision({}) is None and pinned_precision({PRECISION_ENV: ""}) is None
    assert pinned_precision({PRECISION_ENV: "auto"}) is None  # the machine's fast path, as unset
    for bad in ("fp16", "bfloat16", "8"):
        with pytest.raises(ConfigError, match=f"{PRECISION_ENV}='{bad}' in the environment is not a precision; "
                                              "set it to fp32, bf16 or int8") as err:  # fmt: skip
            pinned_precision({PRECISION_ENV: bad})
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("pin", PRECISIONS)
def test_the_pin_is_what_auto_means_on_every_device_and_for_training(monkeypatch, pin):
    monkeypatch.setenv(PRECISION_ENV, pin)
    why = f"pinned by {PRECISION_ENV}={pin}"
    assert auto_precision(CPU) == (pin, f"{why} in the environment")
    assert runtime.concrete_precision("auto", CPU) == pin
    assert runtime.concrete_precision("fp32", CPU) == "fp32"  # an explicit precision wins
    monkeypatch.setattr(runtime, "bf16_native", lambda device: True)  # a GPU with bf16 would take bf16
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a GPU")
    gpu = torch.device("cuda", 0)
    if pin == "int8":  # int8 runs on the CPU only: pinned, device=None means the CPU
        assert runtime.device_for("auto") == CPU
        with pytest.raises(ConfigError, match=f"{PRECISION_ENV}=int8 pins precision auto to int8, which runs on "
                                              "the CPU only, not on 'cuda:0'"):  # fmt: skip
            auto_precision(gpu)
    else:
        assert auto_precision(gpu)[0] == pin
    amp = {"fp32": "off", "bf16": "bf16", "int8": "off"}[pin]  # int8 does not train: fp32
    assert auto_amp(CPU)[0] == auto_amp(gpu)[0] == amp and auto_amp(CPU)[1].startswith(why)
    assert training_amp("auto", gpu) == ((torch.bfloat16, False) if pin == "bf16" else (None, False))
    assert training_amp("fp16", gpu) == (torch.float16, True)  # asked for: kept


@pytest.mark.parametrize("pin", PRECISIONS)
def test_the_pin_is_honoured_by_the_api_cli_listen_service_and_training(monkeypatch, tmp_path, checkpoints, pin):
    monkeypatch.setenv(PRECISION_ENV, pin)
    why = f"pinned by {PRECISION_ENV}={pin} in the environment"
    clip = write_audio(tmp_path / "clip.wav", noise(2.0, 0.2, seed=5), SR)

    tagger = AudioTagger(checkpoints["single"], device="cpu")  # the API
    assert (tagger.precision, tagger.precision_reason) == (pin, why)
    explicit = AudioTagger(checkpoints["single"], device="cpu", precision="fp32")
    assert (explicit.precision, explicit.precision_reason) == ("fp32", "asked for")

    info = json.loads(run_main("info", "--device", "cpu", AST_AUDIO_PRECISION=pin).stdout)["runtime"]
    assert (info["precision_pinned"], info["precision_auto"], info["precision_auto_reason"]) == (pin, pin, why)
    assert info["training_amp_auto"] == ("bf16" if pin == "bf16" else "off")

    logged = f"precision auto: {pin} on cpu ({why})"
    monkeypatch.setattr(runtime, "_told", set())  # each choice is logged once per process: log it again
    out = run_main("-v", "predict", clip, "--checkpoint", checkpoints["single"], "--device", "cpu", "--format", "json",
                   AST_AUDIO_PRECISION=pin)  # fmt: skip
    assert out.returncode == 0 and logged in out.stderr, out.stderr
    monkeypatch.setattr(runtime, "_told", set())
    out = run_main("-v", "predict", clip, "--checkpoint", checkpoints["single"], "--precision", "fp32",
                   AST_AUDIO_PRECISION=pin)  # fmt: skip
    assert out.returncode == 0 and "precision auto" not in out.stderr, out.stderr  # --precision wins

    monkeypatch.setattr(runtime, "_told", set())
    out = run_main("-v", "listen", "--checkpoint", checkpoints["single"], "--input", clip, "--device", "cpu",
                   "--as-fast-as-possible", AST_AUDIO_PRECISION=pin)  # fmt: skip
    assert out.returncode == 0 and logged in out.stderr, out.stderr

    with TestClient(create_app(tagger)) as client:  # the service says what it computes in, and why
        assert client.get("/healthz").json() == {"status": "ok", "precision": pin, "precision_reason": why}
        assert client.get("/api/info").json()["precision_reason"] == why

    toy = write_toy_dataset(tmp_path / "toy", per_class_train=2, per_class_val=1)
    settings = toy_train_settings(toy, tmp_path / "exp", n_epochs=1, amp="auto", audio_length=50, depth=1)
    monkeypatch.setattr(runtime, "_told", set())
    out = run_main("-v", "train", *as_flags(settings), "--device", "cpu", AST_AUDIO_PRECISION=pin)
    amp = "bf16" if pin == "bf16" else "off"
    assert out.returncode == 0 and f"amp auto: {amp} on cpu (pinned by {PRECISION_ENV}={pin}" in out.stderr, out.stderr


def test_a_bad_pin_is_one_line_from_every_command(monkeypatch, tmp_path, checkpoints):
    clip = write_audio(tmp_path / "clip.wav", noise(1.0, seed=6), SR)
    line = f"ast-audio: error: {PRECISION_ENV}='fp61' in the environment is not a precision; set it to fp32, bf16 or int8"
    for args in (["info"], ["predict", clip, "--checkpoint", checkpoints["single"], "--device", "cpu"],
                 ["serve", "--checkpoint", checkpoints["single"], "--device", "cpu", "--port", "9"]):  # fmt: skip
        out = run_main(*args, AST_AUDIO_PRECISION="fp61")
        assert out.returncode == 2 and out.stderr.startswith(line) and len(out.stderr.splitlines()) == 1, out.stderr
    monkeypatch.setenv(PRECISION_ENV, "fp61")
    with pytest.raises(ConfigError, match="fp61"):
        AudioTagger(checkpoints["single"], device="cpu")
    with pytest.raises(ConfigError, match="fp61"):
        training_amp("auto", CPU)
    assert AudioTagger(checkpoints["single"], device="cpu", precision="int8").precision == "int8"  # not consulted


# --------------------------------------------------------------------------- batch invariance


def test_fp32_scores_do_not_depend_on_batch_mates(clips, checkpoints):
    """A clip's fp32 scores are the same alone, in a batch of any size, and among any clips: only the
    summation order of the matmuls can differ (``precision.BATCH_MATES``)."""
    bound = BATCH_MATES["fp32"]
    for members in ([checkpoints["single"]], [checkpoints["multi"]], [checkpoints["single"], checkpoints["multi"]]):
        tagger = AudioTagger(members, device="cpu", precision="fp32", batch_size=8)
        together = scores(tagger.predict(clips))
        alone = np.stack([tagger.predict(c).scores for c in clips])
        np.testing.assert_allclose(together, alone, rtol=0, atol=bound)
        small = AudioTagger(members, device="cpu", precision="fp32", batch_size=2)
        np.testing.assert_allclose(scores(small.predict(clips[::-1]))[::-1], alone, rtol=0, atol=bound)
    tagger = AudioTagger(checkpoints["single"], device="cpu", precision="fp32", batch_size=8)
    together = np.stack([e.embedding for e in tagger.embed(clips)])
    np.testing.assert_allclose(together, np.stack([tagger.embed(c).embedding for c in clips]), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- what auto promises (make test: each pin)


@pytest.mark.precision
def test_auto_is_one_precision_and_computes_as_it_within_its_bounds(clips, checkpoints):
    """``auto`` (no precision given) is fp32, bf16 or int8 (the pin, else this CPU's fast path); it
    computes exactly as that precision asked for by name, keeps fp32's top label, and stays within
    that precision's bounds of fp32 and of its batch-mates."""
    here = auto_here()
    assert here in PRECISIONS
    tagger = AudioTagger(checkpoints["single"], device="cpu", batch_size=8)
    assert tagger.precision == here and tagger.autocast == (here == "bf16")
    got = scores(tagger.predict(clips))
    named = AudioTagger(checkpoints["single"], device="cpu", batch_size=8, precision=here)
    np.testing.assert_array_equal(got, scores(named.predict(clips)))
    fp32 = scores(AudioTagger(checkpoints["single"], device="cpu", batch_size=8, precision="fp32").predict(clips))
    assert len(set(fp32.argmax(1))) > 1  # the clips do not all share one top label
    lead = np.diff(np.sort(fp32, axis=1)[:, -2:], axis=1).min()
    assert lead > 2 * max(FROM_FP32.values())  # within its bound, no precision can change a top label here
    np.testing.assert_array_equal(got.argmax(1), fp32.argmax(1))
    np.testing.assert_allclose(got, fp32, rtol=0, atol=FROM_FP32[here])
    alone = np.stack([tagger.predict(c).scores for c in clips])
    np.testing.assert_allclose(got, alone, rtol=0, atol=BATCH_MATES[here])


@pytest.mark.precision
def test_cli_auto_tags_a_batch_as_the_api_tags_each_clip(clips, checkpoints):
    """The CLI (three clips in one batch, both members) and the API (one clip at a time), both at
    ``auto``: the same labels, scores within the batch-mates bound of the precision auto took."""
    members = ("--checkpoint", checkpoints["single"], "--checkpoint", checkpoints["multi"])
    out = run_main("predict", *clips[:3], *members, "--device", "cpu", "--format", "json")
    assert out.returncode == 0, out.stderr
    got = {r["path"]: {x["label"]: x["score"] for x in r["labels"]} for r in json.loads(out.stdout)}
    tagger = AudioTagger([checkpoints["single"], checkpoints["multi"]], device="cpu")
    for clip in clips[:3]:
        expected = tagger.predict(clip)
        assert list(got[str(clip)]) == [name for name, _ in expected.labels]
        printed = 5e-7  # JSON scores have 6 digits
        assert got[str(clip)] == pytest.approx(dict(expected.labels), rel=0, abs=BATCH_MATES[auto_here()] + printed)


def test_the_makefile_runs_every_precision_test_under_each_pin():
    """``make test`` runs the tests marked ``precision`` under each pin, from the files it names:
    every file that marks one must be named there."""
    makefile = (ROOT / "Makefile").read_text()
    named = set(re.search(r"^PRECISION_TESTS := (.+)$", makefile, re.M).group(1).split())
    marking = {f"tests/{p.name}" for p in (ROOT / "tests").glob("test_*.py") if "mark.precision" in p.read_text()}
    assert marking and named == marking
    loop = r"for pin in fp32 bf16 int8; do .*\n\s*AST_AUDIO_PRECISION=\$\$pin \$\(BIN\)/pytest -q -m precision \$\(PRECISION_TESTS\)"
    assert re.search(loop, makefile)
