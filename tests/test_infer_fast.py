"""Fast inference paths of AudioTagger: bf16 and int8 precision, torch.compile, and their CLI flags.

Every fast path is compared with the fp32 eager path on real files.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import cli_in_process, run_cli, run_main
from factories import single_label_model
from precision import BATCH_MATES, FROM_FP32

from ast_audio import ConfigError
from ast_audio.base import runtime
from ast_audio.base.runtime import auto_precision
from ast_audio.infer import AudioTagger

pytestmark = pytest.mark.usefixtures("one_thread")

QuantLinear = torch.ao.nn.quantized.dynamic.Linear


def clips(files) -> list:
    return [files[k] for k in ("wav", "flac", "mp3", "short", "long")]


@pytest.fixture(scope="module")
def fp32(files, checkpoints):
    """The reference: fp32 eager probabilities, pooled embeddings and attention grid."""
    tagger = AudioTagger(checkpoints["single"], device="cpu", precision="fp32", batch_size=4)
    probs = np.stack([p.scores for p in tagger.predict(clips(files))])
    embeddings = np.stack([e.embedding for e in tagger.embed(clips(files))])
    return probs, embeddings, tagger.attention(files["wav"]).grid


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_precision_keeps_the_fp32_top1_and_probabilities(files, checkpoints, fp32, precision):
    probs, embeddings, grid = fp32
    assert len(set(probs.argmax(1))) > 1  # the clips do not all share one top label
    tagger = AudioTagger(checkpoints["single"], device="cpu", batch_size=4, precision=precision)
    assert tagger.precision == precision and tagger.autocast == (precision == "bf16")
    linears = [m for m in tagger.members[0].model.modules() if isinstance(m, QuantLinear)]
    assert len(linears) == (2 * 4 + 1 if precision == "int8" else 0)  # qkv, proj, fc1, fc2 per block; head
    got = np.stack([p.scores for p in tagger.predict(clips(files))])
    np.testing.assert_array_equal(got.argmax(1), probs.argmax(1))
    diff = np.abs(got - probs).max()
    assert 0 < diff < FROM_FP32[precision]  # close, yet really another computation
    tl = tagger.timeline(files["long"], window=5.0, hop=5.0, method="windows")
    assert tl.scores.shape == (2, 3) and np.all(np.isfinite(tl.scores))
    emb = np.stack([e.embedding for e in tagger.embed(clips(files))])
    cos = (emb * embeddings).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(embeddings, axis=1)
    assert emb.dtype == np.float32 and cos.min() > 0.99
    att = tagger.attention(files["wav"])
    assert att.map.dtype == att.grid.dtype == np.float32 and att.map.shape == (300, 128)
    np.testing.assert_allclose(att.grid, grid, atol=1e-3)


def test_int8_leaves_the_callers_model_alone(files):
    model = single_label_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tagger = AudioTagger(model, device="cpu", precision="int8")
    tagger.predict(files["short"])
    assert tagger.members[0].model is not model
    assert not any(isinstance(m, QuantLinear) for m in model.modules())
    assert all(type(m) is torch.nn.Linear and m.weight.dtype == torch.float32
               for m in model.modules() if isinstance(m, torch.nn.Linear))  # fmt: skip
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


def test_int8_scores_do_not_depend_on_batch_mates(files, checkpoints):
    # dynamic int8 scales a layer's input by the whole tensor's range: batched naively, a file's
    # scores would change with the files beside it (and between torchrun ranks). One window at a time.
    tagger = AudioTagger(checkpoints["single"], device="cpu", batch_size=8, precision="int8")
    together = tagger.predict(clips(files))
    for path, got in zip(clips(files), together, strict=True):
        alone = tagger.predict(path)
        np.testing.assert_array_equal(got.scores, alone.scores)
    embedded = tagger.embed(clips(files))[0].embedding
    np.testing.assert_array_equal(embedded, tagger.embed(clips(files)[0]).embedding)


def test_precision_errors_and_the_autocast_synonym(recwarn):
    model = single_label_model()
    with pytest.raises(ConfigError, match="unknown precision 'fp16'; choose one of auto, fp32, bf16, int8"):
        AudioTagger(model, device="cpu", precision="fp16")
    with pytest.raises(ConfigError, match="autocast=True means precision 'bf16'"):
        AudioTagger(model, device="cpu", precision="int8", autocast=True)
    with pytest.raises(ConfigError, match="CPU only, not on 'meta'") as err:
        AudioTagger(model, device="meta", precision="int8")
    assert "\n" not in str(err.value)
    assert AudioTagger(model, device="cpu", autocast=True).precision == "bf16"
    assert AudioTagger(model, device="cpu", precision="bf16", autocast=True).precision == "bf16"
    assert AudioTagger(model, device="cpu").precision == auto_precision(torch.device("cpu"))[0]  # auto, resolved
    assert AudioTagger(model, precision="int8").device == torch.device("cpu")  # device=None: the CPU
    assert not [w for w in recwarn if "quantiz" in str(w.message)]  # torch's deprecation notes silenced


@pytest.mark.parametrize(("flags", "expected"), [({"avx2", "fma"}, "int8"), ({"avx2", "amx_bf16"}, "bf16")])
def test_auto_is_the_cpus_fast_path_and_computes_as_it(files, checkpoints, fp32, monkeypatch, flags, expected):
    """``precision`` left out is ``"auto"``: int8 on a CPU without bf16 units (same top-1 as fp32,
    probabilities within int8's bound), bf16 on one with them; identical to asking for that path."""
    monkeypatch.setattr(runtime, "_this_cpu_flags", lambda: frozenset(flags))
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)  # the flags faked are all there is
    monkeypatch.delenv("AST_AUDIO_PRECISION", raising=False)  # and nothing pins auto
    monkeypatch.setattr(runtime, "_told", set())
    tagger = AudioTagger(checkpoints["single"], device="cpu", batch_size=4)
    assert tagger.precision == expected and tagger.autocast == (expected == "bf16")
    got = np.stack([p.scores for p in tagger.predict(clips(files))])
    explicit = AudioTagger(checkpoints["single"], device="cpu", batch_size=4, precision=expected)
    np.testing.assert_array_equal(got, np.stack([p.scores for p in explicit.predict(clips(files))]))
    np.testing.assert_array_equal(got.argmax(1), fp32[0].argmax(1))
    assert np.abs(got - fp32[0]).max() < FROM_FP32[expected]


def test_bf16_asked_for_on_a_cpu_that_emulates_it_warns_once(monkeypatch):
    monkeypatch.setattr(runtime, "_this_cpu_flags", lambda: frozenset({"avx2", "fma"}))
    monkeypatch.setattr(runtime, "_told", set())
    model = single_label_model()
    with pytest.warns(RuntimeWarning, match="emulated") as seen:
        assert AudioTagger(model, device="cpu", precision="bf16").precision == "bf16"  # asked for: kept
        AudioTagger(model, device="cpu", autocast=True)
    assert len(seen) == 1 and seen[0].filename == __file__  # once, pointing at the caller


@pytest.mark.precision
def test_cli_precision_auto_end_to_end(folder, checkpoints):
    """``--precision auto`` (the default) in a real process: what ``ast-audio info`` says auto picks
    here, and the labels of that path in process (the CLI batches the files, the API takes each
    alone: within the batch-mates bound of that precision)."""
    _, good, _ = folder
    info = run_cli("info", "--device", "cpu")
    assert info.returncode == 0, info.stderr
    chosen = json.loads(info.stdout)["runtime"]
    assert (chosen["precision_auto"], chosen["cpu_bf16_units"]) == (
        auto_precision(torch.device("cpu"))[0], runtime.cpu_bf16_units()
    )
    out = run_cli("-v", "predict", *good, "--checkpoint", checkpoints["single"], "--precision", "auto",
                  "--device", "cpu", "--format", "json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"precision auto: {chosen['precision_auto']} on cpu" in out.stderr  # the choice, logged
    got = {r["path"]: r["labels"] for r in json.loads(out.stdout)}
    for p in AudioTagger(checkpoints["single"], device="cpu", precision=chosen["precision_auto"]).predict(good):
        assert got[p.path][0]["label"] == p.labels[0][0]
        assert got[p.path][0]["score"] == pytest.approx(p.labels[0][1], abs=BATCH_MATES[chosen["precision_auto"]] + 1e-5)


@pytest.mark.slow  # 10-20 s of inductor compilation (cold cache)
def test_compile_equals_eager_on_a_ragged_batch_and_compiles_once(files, checkpoints, fp32):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    graphs = counters["stats"]["unique_graphs"]
    tagger = AudioTagger(checkpoints["single"], device="cpu", precision="fp32", batch_size=4, compile=True)
    preds = tagger.predict(clips(files))  # 1 + 1 + 1 + 1 + 6 windows: batches of 4, 4 and 2
    assert [len(p.spans) for p in preds] == [1, 1, 1, 1, 6]
    np.testing.assert_allclose(np.stack([p.scores for p in preds]), fp32[0], atol=1e-5)
    assert counters["stats"]["unique_graphs"] - graphs == 1  # the last batch of 2 was padded, not recompiled
    tagger.predict(files["short"])  # one window alone: still the same graph
    assert counters["stats"]["unique_graphs"] - graphs == 1
    embeddings = np.stack([e.embedding for e in tagger.embed(clips(files))])
    np.testing.assert_allclose(embeddings, fp32[1], atol=1e-5)
    assert counters["stats"]["unique_graphs"] - graphs == 2  # forward_tokens: compiled once, on first use
    assert set(tagger.members[0].compiled) == {"forward", "tokens"}


# --------------------------------------------------------------------------- CLI


def test_cli_predict_int8(folder, checkpoints):
    _, good, _ = folder
    out = run_cli("predict", *good, "--checkpoint", checkpoints["single"], "--precision", "int8", "--format", "json")
    assert out.returncode == 0 and out.stderr == "", out.stderr  # no deprecation warnings either
    got = {r["path"]: r["labels"] for r in json.loads(out.stdout)}
    for p in AudioTagger(checkpoints["single"], device="cpu", precision="fp32").predict(good):
        labels = got[p.path]
        assert labels[0]["label"] == p.labels[0][0]
        assert labels[0]["score"] == pytest.approx(p.labels[0][1], abs=FROM_FP32["int8"])
        assert labels[0]["score"] != pytest.approx(p.labels[0][1], abs=1e-6)  # int8 really ran


def test_cli_embed_bf16(folder, checkpoints, tmp_path):
    _, good, _ = folder
    out = run_main(
        "embed", *good, "--checkpoint", checkpoints["single"], "--precision", "bf16", "--out", tmp_path / "e.npz"
    )
    assert out.returncode == 0, out.stderr
    data = np.load(tmp_path / "e.npz")
    assert data["embeddings"].shape == (3, 192) and data["embeddings"].dtype == np.float32
    reference = AudioTagger(checkpoints["single"], device="cpu", precision="fp32")
    expected = np.stack([e.embedding for e in reference.embed(good)])
    got = data["embeddings"]
    cos = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cos.min() > 0.99 and not np.allclose(got, expected, atol=1e-6)


def test_cli_flags_reach_the_tagger(folder, checkpoints, tmp_path, monkeypatch):
    _, good, _ = folder
    seen = []

    class Spy(AudioTagger):
        def __init__(self, *args, **kwargs):
            seen.append((kwargs["precision"], kwargs["compile"]))
            super().__init__(*args, **{**kwargs, "compile": False})  # the plumbing, not a slow compile

    monkeypatch.setattr("ast_audio.infer.engine.AudioTagger", Spy)  # where the commands import it from
    assert cli_in_process("predict", good[0], "--checkpoint", checkpoints["single"]) == 0
    assert cli_in_process("predict", good[0], "--checkpoint", checkpoints["single"], "--precision", "bf16", "--compile") == 0
    assert cli_in_process("embed", good[0], "--checkpoint", checkpoints["single"], "--out", tmp_path / "e.npz",
                "--precision", "int8") == 0  # fmt: skip
    assert seen == [("auto", False), ("bf16", True), ("int8", False)]  # auto: the default
    with pytest.raises(SystemExit) as exit_:
        cli_in_process("predict", good[0], "--checkpoint", checkpoints["single"], "--precision", "fp16")
    assert exit_.value.code == 2
