"""One ONNX file from waveform to calibrated scores: features, model and activation in the graph.

``export_waveform_onnx`` writes a graph with one input and one output:

- ``waveform``: float32 ``[batch, samples]``, mono at the contract's sample rate, both axes
  dynamic. Any length: the graph removes each row's mean, computes Kaldi filterbanks
  (:class:`~ast_audio.features.graph.WaveformFrontEnd`: framing with snip edges, dither off,
  DC removal, pre-emphasis, Hann window, power spectrum as a DFT matmul, mel banks, log
  floor), pads or cuts them to the model's frames and normalises them, as
  :func:`~ast_audio.features.contract.waveform_to_input` does. A longer recording is cut to
  its first model window: run it window by window, as ``AudioTagger.predict`` does (the
  torch-free runner :mod:`ast_audio_onnx` does exactly that). Rows of one batch share a
  length, so a clip padded into a batch is not the clip: batch clips of equal length.
- ``probabilities``: float32 ``[batch, labels]``, the model's activation (sigmoid for a
  multi-label checkpoint, softmax for a single-label one), as ``predict`` reports them.

The metadata (key ``ast_audio``, JSON) says what a runtime needs around the graph: the
label names in output order, the calibrated per-class thresholds (or null), the input
contract, ``"input": "waveform"``, the sample rate, the model's frames and samples, and
the ast-audio version. Only standard ops (Gather, MatMul, elementwise, reductions)
are used, so onnxruntime and onnxruntime-web's WASM backend run it.

The export is checked (``verify=True``): onnxruntime's probabilities against PyTorch's
(:func:`waveform_to_input`, the model in float32, the activation) on synthetic sound
clips shorter than, as long as and longer than the model's input, in batches of one and
three, within :data:`~ast_audio.checkpoints.export.TOLERANCE`; the file is checked as a
temporary and put in place only when it passes. ``int8=True`` quantises the model's
linear layers with onnxruntime's dynamic quantisation (the front end's matmuls stay
float32); its agreement with PyTorch float32 is measured and logged, not bounded.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..audio.io import resample
from ..audio.synth import SAMPLE_RATE as SYNTH_RATE
from ..audio.synth import make_clip
from ..base.fileio import atomic_write
from ..errors import ExportError
from ..features.contract import waveform_to_input
from ..features.graph import WaveformFrontEnd
from ..model.ast import ASTModel
from ..model.info import ModelInfo
from .export import MAX_BATCH, TOLERANCE, _cpu_copy, onnx_file

__all__ = [
    "INPUT_NAME", "OUTPUT_NAME", "Agreement", "export_waveform_onnx", "verify_waveform_export", "write_waveform_onnx",
]  # fmt: skip

log = logging.getLogger(__name__)

INPUT_NAME, OUTPUT_NAME = "waveform", "probabilities"
MAX_SAMPLES = 2**31 - 1  # upper bound declared to torch.export for the symbolic length
FRONT_END_MATMULS = 3  # the DFT's cos and sin rows, the mel rows: float32 in an int8 graph


class WaveformModel(nn.Module):
    """Waveform ``[batch, samples]`` -> probabilities ``[batch, labels]``: the front end of the
    model's input contract, the model, its activation."""

    def __init__(self, model: ASTModel):
        super().__init__()
        self.front_end = WaveformFrontEnd(model.input_contract)
        self.model = model
        self.softmax = model.input_contract.activation == "softmax"

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        logits = self.model(self.front_end(waveform))  # (B, C), with any clip-statistics branch
        return torch.softmax(logits, -1) if self.softmax else torch.sigmoid(logits)


def _version() -> str:
    try:
        return importlib_metadata.version("ast-audio")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def waveform_metadata(model: ASTModel, int8: bool = False) -> dict:
    """The ``ast_audio`` metadata of a waveform-in graph of ``model``."""
    info, contract = model.info, model.input_contract
    labels = info.labels or info.label_ids or [f"class {i}" for i in range(model.config.label_dim)]
    return {
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "labels": list(labels),
        "label_ids": info.label_ids,
        "thresholds": info.thresholds,  # calibrated per-class thresholds, or None
        "activation": contract.activation,
        "sample_rate": contract.sample_rate,
        "target_frames": contract.target_length,
        "window_samples": contract.samples,  # one model input; longer audio is cut to it
        "input_contract": contract.to_dict(),
        "config": model.config.to_dict(),
        "int8": int8,
        "ast_audio_version": _version(),
    }


@dataclass(frozen=True)
class Agreement:
    """How an exported graph's probabilities compare with PyTorch's on the check's clips."""

    max_abs_diff: float
    top1: float  # fraction of clips whose top label is the same
    clips: int


def check_clips(sample_rate: int, window_samples: int) -> list[np.ndarray]:
    """Batches ``[n, samples]`` of synthetic sounds (:mod:`ast_audio.audio.synth`: tones, sweeps,
    clicks, noise over background) at ``sample_rate``: shorter than, as long as and longer
    than one model input, one clip and three clips per batch."""
    rng = np.random.default_rng(0)
    out = []
    for length, batch in ((window_samples // 3, 1), (window_samples, 3), (window_samples * 3 // 2, 3)):
        seconds = max(1.0, 1.1 * length / sample_rate)  # a second at least: every sound class fits
        wave = np.stack([make_clip(int(rng.integers(10)), rng, seconds) for _ in range(batch)])  # (n, S')
        if sample_rate != SYNTH_RATE:
            wave = resample(wave, SYNTH_RATE, sample_rate).numpy()
        out.append(np.ascontiguousarray(wave[:, :length], dtype=np.float32))
    return out


def reference_probabilities(model: ASTModel, waveform: np.ndarray) -> np.ndarray:
    """PyTorch's probabilities of ``[n, samples]`` clips: ``waveform_to_input``, the model in
    float32, its activation (what the tagger gives for a clip of at most one model input)."""
    contract = model.input_contract
    with torch.inference_mode():
        logits = model(waveform_to_input(torch.from_numpy(waveform), contract))  # (n, C)
        probs = torch.softmax(logits, -1) if contract.activation == "softmax" else torch.sigmoid(logits)
    return probs.numpy()


def verify_waveform_export(
    model: ASTModel, path: str | os.PathLike, *, atol: float | None = TOLERANCE
) -> Agreement:
    """onnxruntime's probabilities of the file at ``path`` against PyTorch's on :func:`check_clips`;
    ``ExportError`` where they differ by more than ``atol`` (``None``: measure only, as for int8)."""
    return _check(_cpu_copy(model), Path(path), atol, Path(path))


def _check(model: ASTModel, file: Path, atol: float | None, shown: Path) -> Agreement:
    """:func:`verify_waveform_export` of ``file`` (a float32 CPU model); errors name ``shown``."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("checking an ONNX file needs onnxruntime (pip install 'ast-audio[export]')") from None
    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    worst, same, count = 0.0, 0, 0
    for wave in check_clips(model.input_contract.sample_rate, model.input_contract.samples):
        expected = reference_probabilities(model, wave)
        try:
            got = session.run([OUTPUT_NAME], {INPUT_NAME: wave})[0]
        except Exception as err:  # onnxruntime's own error types; name the shape tried
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ExportError(f"running the export on a waveform {list(wave.shape)} failed: {first}", shown) from err
        diff = float(np.abs(got - expected).max())
        if atol is not None and not diff <= atol:
            raise ExportError(
                f"probabilities differ from PyTorch by {diff:.3g} (> {atol:g}) on a waveform {list(wave.shape)}",
                shown,
            )
        worst = max(worst, diff)
        same += int((got.argmax(-1) == expected.argmax(-1)).sum())
        count += len(wave)
    return Agreement(worst, same / count, count)


def front_end_matmuls(proto) -> list[str]:
    """Names of the graph's MatMul nodes that compute the features: those upstream of the patch
    embedding (the model's first op, its one Conv), i.e. the DFT and the mel matmuls."""
    producer = {out: node for node in proto.graph.node for out in node.output}
    convs = [node for node in proto.graph.node if node.op_type == "Conv"]
    pending, seen = [name for node in convs for name in node.input], set()
    while pending:
        node = producer.get(pending.pop())
        if node is not None and node.name not in seen:
            seen.add(node.name)
            pending.extend(node.input)
    return [node.name for node in proto.graph.node if node.op_type == "MatMul" and node.name in seen]


def quantize_int8(source: Path, target: Path, *, shown: Path | None = None) -> None:
    """``source`` with its linear layers' matmuls dynamically quantised to int8 (weights int8,
    activations per batch), written to ``target``; the front end's matmuls stay float32.
    Errors name ``shown`` (the file being made), else ``source``."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    proto = onnx.load(str(source))
    keep = front_end_matmuls(proto)
    # an exporter that fused or moved them: refuse rather than quantise the features
    if len(keep) != FRONT_END_MATMULS:
        raise ExportError(f"int8: found {len(keep)} of the front end's {FRONT_END_MATMULS} matmuls", shown or source)
    meta = {p.key: p.value for p in proto.metadata_props}
    level = logging.root.manager.disable
    logging.disable(logging.WARNING)  # the quantiser writes its notes and advice to the root logger
    try:
        quantize_dynamic(
            str(source), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
            nodes_to_exclude=keep, extra_options={"MatMulConstBOnly": True},
        )  # fmt: skip
    finally:
        logging.disable(level)
    out = onnx.load(str(target))
    del out.metadata_props[:]
    for key, value in meta.items():
        entry = out.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(out, str(target))


def export_waveform_onnx(
    model: ASTModel,
    path: str | os.PathLike,
    *,
    info: ModelInfo | None = None,
    int8: bool = False,
    verify: bool = True,
    dynamo: bool = True,
) -> Path:
    """Write ``model`` as one ONNX graph from waveform to probabilities (see the module notes).

    ``info`` replaces the model's labels and input contract (calibrated thresholds, say).
    ``int8`` quantises the linear layers (onnxruntime dynamic quantisation). ``verify``
    checks the file against PyTorch before it is put in place: float32 within 1e-4
    (``ExportError`` otherwise, and no file is left); int8's agreement is logged.
    ``dynamo=False`` selects torch's TorchScript-based exporter.
    """
    if info is not None:
        model = copy.copy(model)  # a shallow copy with its own info; write_waveform_onnx copies the weights
        model.info = info
    agreement = write_waveform_onnx(model, path, int8=int8, verify=verify, dynamo=dynamo)
    kind, rate = "int8" if int8 else "float32", model.input_contract.sample_rate
    if agreement is None:
        log.info("wrote %s (ONNX %s, waveform [batch, samples] at %d Hz -> probabilities)", path, kind, rate)
    else:
        log.info(
            "wrote %s (ONNX %s, waveform [batch, samples] at %d Hz -> probabilities): against PyTorch float32 on "
            "%d clips, max |diff| %.2e, top-1 agreement %.0f%%", path, kind, rate, agreement.clips,
            agreement.max_abs_diff, 100 * agreement.top1,
        )  # fmt: skip
    return Path(path)


def write_waveform_onnx(
    model: ASTModel, path: str | os.PathLike, *, int8: bool = False, verify: bool = True, dynamo: bool = True
) -> Agreement | None:
    """What :func:`export_waveform_onnx` writes, with the model's own info; the file is
    checked as a temporary and renamed onto ``path`` only when the check passed. Returns
    the check's :class:`Agreement` (``None`` without ``verify``)."""
    path = Path(path)
    if path.is_dir():
        raise ExportError("is a folder; give the file to write", path)
    contract = model.input_contract
    if not contract.resample:
        raise ExportError(
            "this model computes features at each file's own sample rate (resample=false); a waveform graph "
            "takes one rate: retrain with resample=true", path,
        )  # fmt: skip
    model = _cpu_copy(model)
    module = WaveformModel(model).eval()
    example = torch.from_numpy(check_clips(contract.sample_rate, contract.samples)[1][:2])  # (2, samples)
    graph = {
        "names": (INPUT_NAME, OUTPUT_NAME),
        "axes": {0: ("batch", 1, MAX_BATCH), 1: ("samples", 2, MAX_SAMPLES)},
        "metadata": waveform_metadata(model, int8),
        "dynamo": dynamo,
        "shown": path,
    }
    checked: list[Agreement] = []

    def write(tmp: Path) -> None:
        if int8:
            with tempfile.TemporaryDirectory(prefix="ast-audio-onnx-") as folder:
                fp32 = Path(folder) / "fp32.onnx"
                onnx_file(module, example, fp32, **graph)
                quantize_int8(fp32, tmp, shown=path)
        else:
            onnx_file(module, example, tmp, **graph)
        if verify:
            checked.append(_check(model, tmp, None if int8 else TOLERANCE, path))

    atomic_write(path, write)
    return checked[0] if checked else None
