"""The waveform-in ONNX export: features in the graph, parity with the PyTorch path on real
files, metadata, int8, the command, and the torch-free runner (``ast_audio_onnx``)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import cli_env, run_main
from factories import SR, labelled, noise, perturb, tiny_ast, tone, write_audio

import ast_audio_onnx
from ast_audio.audio.io import load_audio
from ast_audio.checkpoints import onnx_waveform
from ast_audio.checkpoints.export import export_onnx
from ast_audio.checkpoints.load import load_model
from ast_audio.checkpoints.onnx_waveform import (
    ExportError,
    export_waveform_onnx,
    front_end_matmuls,
    reference_probabilities,
    verify_waveform_export,
)
from ast_audio.features import kaldi
from ast_audio.features.contract import InputContract, waveform_to_input
from ast_audio.features.graph import WaveformFrontEnd
from ast_audio.infer import AudioTagger
from ast_audio.model.info import ModelInfo

pytestmark = pytest.mark.usefixtures("one_thread")

PARITY = 1e-4  # the bound on probabilities, float32
OPERATORS = {
    "Gather", "MatMul", "Gemm", "Conv", "LayerNormalization", "Gelu", "Softmax", "Sigmoid", "Log", "Clip", "ReduceMean",
    "Add", "Sub", "Mul", "Div", "Reshape", "Slice", "Concat", "Transpose", "Squeeze", "Unsqueeze", "Shape", "Expand",
    "ConstantOfShape", "Constant", "Cast", "Identity", "Sqrt", "Mod", "Equal", "Where", "Split",
}  # fmt: skip
INT8_OPERATORS = {"DynamicQuantizeLinear", "MatMulInteger"}


@pytest.fixture(scope="module")
def exported(checkpoints, tmp_path_factory) -> dict[str, object]:
    """The tiny checkpoints exported once: ``multi`` (sigmoid, 128 frames), ``single`` (softmax,
    300 frames) and ``int8`` (multi, quantised), each with its model."""
    root = tmp_path_factory.mktemp("onnx")
    multi, single = load_model(checkpoints["multi"]), load_model(checkpoints["single"])
    return {
        "multi": (multi, export_waveform_onnx(multi, root / "multi.onnx")),
        "single": (single, export_waveform_onnx(single, root / "single.onnx", dynamo=False)),
        "int8": (multi, export_waveform_onnx(multi, root / "int8.onnx", int8=True)),
    }


def metadata_of(path) -> dict:
    return json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["ast_audio"])


# --------------------------------------------------------------------------- the front end


def test_dft_basis_is_the_rfft_power_spectrum():
    size, _, fft_size = kaldi.frame_sizes(16000)
    frames = torch.randn(7, size, dtype=torch.float64)
    cos, sin = kaldi.dft_basis(size, fft_size, 3, 250)
    power = (frames @ cos) ** 2 + (frames @ sin) ** 2  # (7, 247)
    expected = kaldi.power_spectrum(frames, fft_size)[:, 3:250]
    assert torch.allclose(power, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("samples", [100, 400, 4000, 12_960, 30_000])  # under a frame .. past the model's input
@pytest.mark.parametrize("rate", [16000, 22050])
def test_front_end_is_waveform_to_input(samples, rate):
    contract = InputContract(sample_rate=rate, target_length=128, mean=-4.2, std=4.6)
    gen = torch.Generator().manual_seed(samples)
    wave = torch.randn(3, samples, generator=gen, dtype=torch.float64) * 0.2 + 0.01  # an offset the mean removes
    exact = WaveformFrontEnd(contract, dtype=torch.float64)(wave)
    # the same arithmetic in float64: framing, padding, the frames past the audio, normalisation
    assert torch.allclose(exact, waveform_to_input(wave, contract), rtol=0, atol=1e-9)
    # float32: the DFT's matmul rounds otherwise than the FFT, in the weakest bins of a frame
    got = WaveformFrontEnd(contract)(wave.float())
    assert got.dtype == torch.float32 and got.shape == (3, 128, 128)
    assert (got - waveform_to_input(wave.float(), contract)).abs().max() < 2e-4  # measured <= 5e-5


# --------------------------------------------------------------------------- the graph


def test_graph_interface_and_metadata(exported):
    model, path = exported["multi"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "waveform" and inp.type == "tensor(float)" and len(inp.shape) == 2
    assert all(isinstance(d, str) for d in inp.shape)  # batch and samples are both dynamic
    assert out.name == "probabilities" and out.shape[1] == 3
    meta = metadata_of(path)
    assert meta["input"] == "waveform" and meta["output"] == "probabilities"
    assert meta["labels"] == ["tone", "noise", "chirp"] and meta["thresholds"] is None
    assert meta["activation"] == "sigmoid" and meta["sample_rate"] == 16000 and meta["target_frames"] == 128
    assert InputContract.from_dict(meta["input_contract"]) == model.input_contract
    assert meta["window_samples"] == model.input_contract.samples and meta["int8"] is False
    assert meta["ast_audio_version"]
    assert metadata_of(exported["single"][1])["activation"] == "softmax"
    # operators every ONNX runtime has (the list docs/deploy-onnx.md gives); no FFT, no custom domain
    for name in ("multi", "single", "int8"):
        proto = onnx.load(str(exported[name][1]))
        assert {(o.domain, o.version) for o in proto.opset_import} == {("", 20)}
        assert {n.op_type for n in proto.graph.node} <= OPERATORS | (INT8_OPERATORS if name == "int8" else set())


@pytest.mark.parametrize("name", ["multi", "single"])
def test_probabilities_equal_the_tagger_on_real_files(exported, files, name):
    """The graph on whole clips (batched, shorter and longer than the model input) and the
    runner on files (decoded, resampled, windowed) against ``AudioTagger.predict`` in fp32."""
    model, path = exported[name]
    tagger = AudioTagger(model, device="cpu", precision="fp32")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    window = model.input_contract.samples
    waves = {k: load_audio(f, 16000).numpy() for k, f in files.items()}
    for length in (window // 3, window, 7_000):  # batches of three clips of a file, shorter than or as long as the input
        batch = np.stack([waves["long"][start : start + length] for start in (0, 50_000, 100_000)])  # (3, length)
        got = session.run(["probabilities"], {"waveform": batch})[0]
        expected = np.stack([p.scores for p in tagger.predict(list(batch), sample_rate=16000)])
        assert np.abs(got - expected).max() < PARITY, length
    # longer than the model's input: the graph cuts, as waveform_to_input does
    long = waves["long"][None, : 2 * window + 123]
    got = session.run(["probabilities"], {"waveform": long})[0]
    assert np.abs(got - reference_probabilities(model, long)).max() < PARITY
    # the runner: every kind of file (44.1 kHz flac, mp3, a 10 s file windowed), as predict scores it
    runner = ast_audio_onnx.load(path)
    for key, file in files.items():
        assert np.abs(runner.scores(file) - tagger.predict(file).scores).max() < PARITY, key
    mean = tagger.predict(files["long"], aggregate="mean").scores
    assert np.abs(runner.scores(files["long"], aggregate="mean") - mean).max() < PARITY


def test_the_export_check_catches_a_different_model_and_leaves_no_file(exported, tmp_path, monkeypatch):
    model, path = exported["multi"]
    assert verify_waveform_export(model, path).max_abs_diff < PARITY
    other = perturb(copy.deepcopy(model), scale=0.2, seed=3)
    with pytest.raises(ExportError, match="probabilities differ from PyTorch"):
        verify_waveform_export(other, path)
    # a graph that fails its check at export is never put in place
    shifted = onnx_waveform.reference_probabilities
    monkeypatch.setattr(onnx_waveform, "reference_probabilities", lambda m, w: shifted(m, w) + 1e-3)
    with pytest.raises(ExportError, match=r"bad\.onnx: probabilities differ from PyTorch by 0\.001"):
        export_waveform_onnx(model, tmp_path / "bad.onnx", dynamo=False)
    assert list(tmp_path.iterdir()) == []


def test_thresholds_and_contract_come_from_info(tmp_path):
    model = labelled(tiny_ast(label_dim=3, input_tdim=128, seed=4), ["a", "b", "c"], True, -5.0, 4.0)
    contract = model.info.contract.replace(thresholds=(0.2, 0.5, 0.9))
    info = ModelInfo(labels=["a", "b", "c"], contract=contract, statistics=True)
    path = export_waveform_onnx(model, tmp_path / "cal.onnx", info=info, dynamo=False)
    meta = metadata_of(path)
    assert meta["thresholds"] == [0.2, 0.5, 0.9] and meta["input_contract"]["mean"] == -5.0
    runner = ast_audio_onnx.load(path)
    assert runner.thresholds == [0.2, 0.5, 0.9] and runner.sample_rate == 16000
    scores = runner.predict(tone(1.0), sample_rate=SR)
    assert list(scores) == ["a", "b", "c"]
    assert runner.present(scores) == [k for k, t in zip("abc", (0.2, 0.5, 0.9), strict=True) if scores[k] >= t]


def test_int8_quantises_the_model_not_the_features(exported, files):
    model, path = exported["int8"]
    proto = onnx.load(str(path))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("MatMulInteger") == 2 * 4 + 1  # 2 blocks x (qkv, proj, fc1, fc2) + the head
    assert len(front_end_matmuls(proto)) == 3  # the DFT's cos and sin, the mel rows: still float32
    assert metadata_of(path)["int8"] is True
    assert path.stat().st_size < 0.6 * exported["multi"][1].stat().st_size
    agreement = verify_waveform_export(model, path, atol=None)
    assert agreement.max_abs_diff < 0.05 and agreement.top1 >= 0.8  # measured (~0.01, 100 %); reported, not 1e-4
    runner = ast_audio_onnx.load(path)
    assert runner.batch == 1  # int8 scales by the batch's range: one window per call
    fp32 = AudioTagger(model, device="cpu", precision="fp32").predict(files["long"]).scores
    assert np.abs(runner.scores(files["long"]) - fp32).max() < 0.05


# --------------------------------------------------------------------------- the command


@pytest.mark.slow  # two exports through the command, each checked
def test_export_command_waveform(checkpoints, tmp_path):
    out = run_main("export", "--checkpoint", checkpoints["multi"], "--format", "onnx", "--input", "waveform",
                   "--out", tmp_path / "m.onnx")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "input waveform [batch, samples] mono float32 at 16000 Hz" in out.stdout
    assert "verified: onnxruntime probabilities match PyTorch within 0.0001" in out.stdout
    assert metadata_of(tmp_path / "m.onnx")["input"] == "waveform"
    out = run_main("export", "--checkpoint", checkpoints["single"], "--format", "onnx", "--input", "waveform",
                   "--int8", "--legacy-exporter", "--out", tmp_path / "s8.onnx")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "int8 against PyTorch float32 on 7 clips: max |diff|" in out.stdout and "top-1 agreement" in out.stdout
    (tmp_path / "folder").mkdir()
    for args, message in [
        (["--input", "waveform", "--out", tmp_path / "folder"], "folder: is a folder"),
        (["--int8", "--out", tmp_path / "x.onnx"], "--int8 needs --input waveform"),
        (["--input", "waveform", "--format", "torchscript", "--out", tmp_path / "x.pt"], "needs --format onnx"),
        (["--input", "waveform", "--dynamic-time", "--out", tmp_path / "x.onnx"], "takes any length already"),
    ]:
        out = run_main("export", "--checkpoint", checkpoints["multi"], *args)
        assert out.returncode == 2 and out.stderr.startswith("ast-audio: error: ") and message in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "x.pt").exists()


# --------------------------------------------------------------------------- the torch-free runner

NO_TORCH = "import sys; sys.modules['torch'] = None; sys.modules['ast_audio'] = None\n"  # importing them fails


def run_without_torch(code: str, *args) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-c", NO_TORCH + code, *map(str, args)], capture_output=True, text=True,
                         env=cli_env(), timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out


def test_runner_runs_without_torch_and_equals_the_torch_path(exported, files):
    model, path = exported["single"]
    code = """
import json, ast_audio_onnx
assert 'torch' not in {m.split('.')[0] for m, v in sys.modules.items() if v is not None}
model = ast_audio_onnx.load(sys.argv[1])
print(json.dumps({f: model.predict(f) for f in sys.argv[2:]}))
"""
    out = run_without_torch(code, path, files["flac"], files["long"], files["short"])
    scores = json.loads(out.stdout)
    tagger = AudioTagger(model, device="cpu", precision="fp32")
    for file in (files["flac"], files["long"], files["short"]):
        expected = dict(tagger.predict(file, top_k=3).labels)
        assert scores[str(file)] == pytest.approx(expected, abs=PARITY)
    # the command: top labels of each file
    main = "import runpy; sys.argv[0] = 'ast_audio_onnx'; runpy.run_module('ast_audio_onnx', run_name='__main__')"
    out = run_without_torch(main, path, files["wav"], "-k", "2")
    lines = out.stdout.splitlines()
    assert lines[0] == str(files["wav"]) and len(lines) == 3
    top = tagger.predict(files["wav"], top_k=2).labels
    for line, (label, score) in zip(lines[1:], top, strict=True):
        got_score, got_label = line.split(maxsplit=1)
        assert got_label == label and float(got_score) == pytest.approx(score, abs=PARITY)


def test_runner_errors_are_one_line(exported, tmp_path, checkpoints):
    fbank_graph = export_onnx(load_model(checkpoints["multi"]), tmp_path / "fbank.onnx", dynamo=False)
    with pytest.raises(ast_audio_onnx.RunnerError, match="not a waveform-in ast-audio model"):
        ast_audio_onnx.load(fbank_graph)
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    empty = write_audio(tmp_path / "empty.wav", noise(0.0), SR)
    runner = ast_audio_onnx.load(exported["multi"][1])
    with pytest.raises(ast_audio_onnx.RunnerError, match=r"bad\.wav: cannot decode"):
        runner.predict(bad)
    with pytest.raises(ast_audio_onnx.RunnerError, match=r"empty\.wav: no audio samples"):
        runner.predict(empty)
    with pytest.raises(ast_audio_onnx.RunnerError, match="NaN or Inf"):
        runner.predict(np.full(1000, np.nan, np.float32))
    code = "import runpy; runpy.run_module('ast_audio_onnx', run_name='__main__')"
    out = subprocess.run([sys.executable, "-c", NO_TORCH + code, exported["multi"][1], bad, tmp_path / "missing.wav"],
                         capture_output=True, text=True, env=cli_env(), timeout=300)  # fmt: skip
    assert out.returncode == 1 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("ast_audio_onnx: error: ") for line in lines), out.stderr


def test_mean_pooling_and_the_clip_statistics_branch_are_in_the_graph(files, tmp_path):
    """The from-scratch preset's model (mean pooling, clip statistics over the audio frames
    only): its waveform graph equals the tagger, on a clip shorter than the input (padding)."""
    from ast_audio.model.ast import ASTModel

    torch.manual_seed(5)
    model = ASTModel(3, 16, 16, 128, 128, imagenet_pretrain=False, model_size="tiny224", verbose=False, depth=1,
                     pool="mean", clip_stats=True)  # fmt: skip
    with torch.no_grad():
        model.stats_head.linear.weight.normal_(0, 0.1)
        model.stats_head.mean.normal_(0, 0.5)
    model = labelled(model.eval(), ["a", "b", "c"], False)
    path = export_waveform_onnx(model, tmp_path / "scratch.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tagger = AudioTagger(model, device="cpu", precision="fp32")
    wave = load_audio(files["long"], 16000).numpy()
    for length in (4_000, model.input_contract.samples):
        batch = wave[None, 10_000 : 10_000 + length]
        got = session.run(["probabilities"], {"waveform": batch})[0]
        assert np.abs(got - tagger.predict(list(batch), sample_rate=16000)[0].scores).max() < PARITY, length
