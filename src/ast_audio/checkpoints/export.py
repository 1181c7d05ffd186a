"""The model as an ONNX or TorchScript file, with a parity check against PyTorch.

What is exported is the model alone: normalised filterbanks ``[batch, time, mel]`` in,
logits ``[batch, label_dim]`` out (no sigmoid/softmax). **Features stay outside the
graph**: compute them with :func:`~ast_audio.features.waveform_to_input` (or any Kaldi
fbank with AST's settings), pad or cut to the model's ``input_tdim`` and normalise with
the checkpoint's statistics. (:mod:`ast_audio.checkpoints.onnx_waveform` exports the graph
with the features inside: waveform in, probabilities out.) The ONNX file's metadata
(``ast_audio`` key, JSON) and the TorchScript file's extra file ``ast_audio.json`` hold
what that needs: label names, ``input_tdim``/``input_fdim``, sample rate, dataset mean/std
and whether the scores are sigmoid (multi-label) or softmax.

Axes:

- The **batch axis is dynamic** in both formats.
- The **time axis** is fixed to ``input_tdim`` by default. ONNX with
  ``dynamic_time=True`` accepts any length from 16 frames up to ``input_tdim``: the
  position embedding is then cut in the graph by AST's rule (the centred ``t_dim``
  columns), so a length ``T`` gives the logits of ``load_model(..., input_tdim=T)``.
  Longer inputs are refused by onnxruntime (a broadcast error in the position add): to
  go longer, export a model loaded with a larger ``input_tdim`` (its positions are then
  interpolated by the same rule). TorchScript is traced and keeps the time axis fixed.

The ONNX file is written by ``torch.onnx.export`` with the torch.export-based exporter
(``dynamo=True``, torch's default since 2.9); ``dynamo=False`` selects the older
TorchScript-based one, which gives the same graph here. Weights are stored inside the
file (no external ``.data`` file; fine below ONNX's 2 GB limit, i.e. every AST size).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..base.fileio import atomic_write
from ..errors import ConfigError, ExportError
from ..model.ast import ASTModel

__all__ = ["ExportError", "export_onnx", "export_torchscript", "verify_export"]

log = logging.getLogger(__name__)

TOLERANCE = 1e-4
INPUT_NAME, OUTPUT_NAME = "input", "logits"
METADATA_KEY = "ast_audio"
MAX_BATCH = 4096  # upper bound declared to torch.export for the symbolic batch size


def _metadata(model: ASTModel, dynamic_time: bool) -> dict:
    cfg, info, contract = model.config, model.info, model.input_contract
    return {  # the contract's flat keys too, for readers of the metadata that predate input_contract
        "config": cfg.to_dict(),
        "labels": info.labels,
        "label_ids": info.label_ids,
        "dataset_mean": contract.mean if info.statistics else None,
        "dataset_std": contract.std if info.statistics else None,
        "multilabel": contract.activation == "sigmoid",
        "sample_rate": contract.sample_rate,
        "input_contract": contract.to_dict(),  # what turns audio into the input below
        "input": f"{INPUT_NAME}: float32 [batch, time, {cfg.input_fdim}] normalised Kaldi fbank",
        "time_axis": f"16..{cfg.input_tdim}" if dynamic_time else str(cfg.input_tdim),
        "output": f"{OUTPUT_NAME}: float32 [batch, {cfg.label_dim}] (no sigmoid/softmax)",
    }


class _Exported(nn.Module):
    """The model as exported: one input, the logits. With ``dynamic_time``, on 16..``input_tdim``
    frames: :meth:`ASTModel.forward_features` with ``any_length=True`` cuts the position grid to
    the input's ``t_dim`` in the graph by AST's rule, so a length ``T`` gives the logits of
    ``load_model(..., input_tdim=T)``. (The model's own ``forward`` has keyword-only training
    options, which the legacy ONNX exporter would fill in as positional inputs.)"""

    def __init__(self, model: ASTModel, dynamic_time: bool):
        super().__init__()
        self.model = model
        self.dynamic_time = dynamic_time

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, any_length=self.dynamic_time)


def _cpu_copy(model: ASTModel) -> ASTModel:
    return copy.deepcopy(model).cpu().float().eval()


@contextlib.contextmanager
def _quiet_exporter():
    """The exporters' expected chatter (deprecations, tracer notes, registry notes) kept out of the log."""
    loggers = [
        logging.getLogger(name)
        for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir")
    ]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            for category in (DeprecationWarning, FutureWarning, torch.jit.TracerWarning):
                warnings.simplefilter("ignore", category)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_onnx(
    model: ASTModel, path: str | os.PathLike, *, dynamic_time: bool = False, dynamo: bool = True
) -> Path:
    """Write ``model`` as ONNX: ``input`` ``[batch, time, mel]`` -> ``logits`` ``[batch, label_dim]``.

    Dynamic batch axis; the time axis is ``input_tdim`` or, with ``dynamic_time``,
    16..``input_tdim`` frames (see the module notes). The model's labels and feature
    settings go into the file's metadata under ``"ast_audio"``.
    """
    path = Path(path)
    if path.is_dir():
        raise ExportError("is a folder; give the file to write", path)
    if dynamic_time and model.config.input_tdim <= 16:
        raise ConfigError(
            f"a dynamic time axis needs input_tdim above 16 (16..input_tdim frames); this model takes "
            f"{model.config.input_tdim}: export it without dynamic time, or with a larger input_tdim"
        )
    model = _cpu_copy(model)
    cfg = model.config
    axes = {0: ("batch", 1, MAX_BATCH)}
    if dynamic_time:
        axes[1] = ("time", 16, cfg.input_tdim)
    write_onnx(
        _Exported(model, dynamic_time).eval(), torch.randn(2, cfg.input_tdim, cfg.input_fdim), path,
        names=(INPUT_NAME, OUTPUT_NAME), axes=axes, metadata=_metadata(model, dynamic_time), dynamo=dynamo,
    )  # fmt: skip
    log.info(
        "wrote %s (ONNX, dynamic batch, time axis %s)", path, _metadata(model, dynamic_time)["time_axis"]
    )
    return path


def write_onnx(
    module: nn.Module,
    example: torch.Tensor,
    path: Path,
    *,
    names: tuple[str, str],
    axes: dict[int, tuple[str, int, int]],
    metadata: dict,
    dynamo: bool = True,
) -> None:
    """``module`` (one input, one output) exported to ``path`` atomically, ``metadata`` as JSON
    under :data:`METADATA_KEY`. ``names`` are (input, output); ``axes`` maps each dynamic
    input axis to ``(name, min, max)``; the output's first axis follows the input's batch axis.
    Weights inside the file; an exporter's failure is one :class:`ExportError` line."""
    atomic_write(path, lambda tmp: onnx_file(module, example, tmp, names=names, axes=axes, metadata=metadata,
                                             dynamo=dynamo, shown=path))  # fmt: skip


def onnx_file(
    module: nn.Module,
    example: torch.Tensor,
    target: Path,
    *,
    names: tuple[str, str],
    axes: dict[int, tuple[str, int, int]],
    metadata: dict,
    dynamo: bool = True,
    shown: Path | None = None,
) -> None:
    """What :func:`write_onnx` does, written straight to ``target`` (a temporary file of the
    caller's atomic write, whose errors name ``shown``)."""
    try:
        import onnx
    except ImportError:
        raise ExportError("ONNX export needs onnx (pip install 'ast-audio[export]')") from None

    input_name, output_name = names
    kwargs: dict = {"input_names": [input_name], "output_names": [output_name], "dynamo": dynamo}
    if dynamo:
        dims = {axis: torch.export.Dim(name, min=low, max=high) for axis, (name, low, high) in axes.items()}
        kwargs.update(dynamic_shapes=(dims,), external_data=False, verbose=False, optimize=True)
    else:
        kwargs.update(dynamic_axes={input_name: {a: n for a, (n, _, _) in axes.items()}, output_name: {0: "batch"}})
    try:
        with _quiet_exporter():
            torch.onnx.export(module, (example,), str(target), **kwargs)
    except Exception as err:  # the exporters raise many kinds; name the first line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ExportError(f"ONNX export failed: {type(err).__name__}: {first}", shown or target) from err
    proto = onnx.load(str(target))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.save(proto, str(target))


def export_torchscript(model: ASTModel, path: str | os.PathLike) -> Path:
    """Write ``model`` traced with TorchScript (``torch.jit.load`` needs no ast_audio).

    Dynamic batch axis, time axis fixed to ``input_tdim``. The metadata is the extra
    file ``ast_audio.json``. (``torch.jit`` is deprecated in recent torch but still loads
    everywhere, C++ included; prefer ONNX for new deployments.)
    """

    path = Path(path)
    model = _cpu_copy(model)
    cfg = model.config
    example = torch.randn(2, cfg.input_tdim, cfg.input_fdim)
    extra = {"ast_audio.json": json.dumps(_metadata(model, False))}
    with _quiet_exporter(), torch.no_grad():
        traced = torch.jit.trace(model, (example,), check_trace=False)
        atomic_write(path, lambda tmp: torch.jit.save(traced, str(tmp), _extra_files=extra))
    log.info("wrote %s (TorchScript, dynamic batch, time axis %d)", path, cfg.input_tdim)
    return path


def _regridded(model: ASTModel, input_tdim: int) -> ASTModel:
    """A copy of ``model`` re-gridded to ``input_tdim`` frames (AST's rule), as load_model does."""
    if input_tdim == model.config.input_tdim:
        return model
    return copy.deepcopy(model).set_input_size(input_tdim=input_tdim).eval()


def verify_export(
    model: ASTModel,
    path: str | os.PathLike,
    *,
    kind: str | None = None,
    lengths: list[int] | None = None,
    batch_sizes: tuple[int, ...] = (1, 3),
    atol: float = TOLERANCE,
    seed: int = 0,
) -> float:
    """Largest ``|exported - PyTorch|`` of the logits on random input; ``ExportError`` above ``atol``.

    ``kind`` is ``"onnx"`` (run by onnxruntime on the CPU) or ``"torchscript"``; by
    default from the suffix (``.onnx`` or not). Batch sizes ``batch_sizes`` are tried
    (the batch axis is dynamic), at each time length of ``lengths`` (default: the
    model's ``input_tdim``; shorter lengths check a dynamic time axis against the
    re-gridded model).
    """
    path = Path(path)
    kind = kind or ("onnx" if path.suffix == ".onnx" else "torchscript")
    if kind not in ("onnx", "torchscript"):
        raise ConfigError(f"unknown export kind {kind!r}; choose 'onnx' or 'torchscript'")
    model = _cpu_copy(model)
    cfg = model.config
    if kind == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            raise ExportError(
                "checking an ONNX file needs onnxruntime (pip install 'ast-audio[export]')"
            ) from None
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def run(x: torch.Tensor) -> np.ndarray:
            return session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    else:
        with _quiet_exporter():
            loaded = torch.jit.load(str(path), map_location="cpu")

        def run(x: torch.Tensor) -> np.ndarray:
            with torch.no_grad():
                return loaded(x).numpy()

    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for length in lengths or [cfg.input_tdim]:
        reference = _regridded(model, length)
        for batch in batch_sizes:
            x = torch.randn(batch, length, cfg.input_fdim, generator=gen)
            with torch.no_grad():
                expected = reference(x).numpy()
            try:
                got = run(x)
            except Exception as err:  # a runtime's own error type; report it with the shape tried
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise ExportError(
                    f"running the export on input {list(x.shape)} failed: {first}", path
                ) from err
            diff = float(np.abs(got - expected).max())
            worst = max(worst, diff)
            if not diff <= atol:
                raise ExportError(
                    f"logits differ from PyTorch by {diff:.3g} (> {atol:g}) on input {list(x.shape)}", path
                )
    return worst
