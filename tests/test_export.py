"""ONNX and TorchScript exports against PyTorch: fixed and dynamic axes, metadata, a failed check."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from factories import labelled, perturb, tiny_ast

from ast_audio.checkpoints.export import ExportError, export_onnx, export_torchscript, verify_export

pytestmark = pytest.mark.usefixtures("one_thread")


def model_with_labels(input_tdim=128, seed=0):
    return labelled(tiny_ast(label_dim=3, input_tdim=input_tdim, seed=seed), ["a", "b", "c"], False, -4.27, 4.57)


def test_onnx_fixed_time_dynamic_batch(tmp_path):
    model = model_with_labels()
    # the legacy exporter here; the CLI test covers the default (torch.export-based) one
    path = export_onnx(model, tmp_path / "m.onnx", dynamo=False)
    assert verify_export(model, path, batch_sizes=(1, 4)) <= 1e-4
    proto = onnx.load(str(path))
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["ast_audio"])
    assert meta["labels"] == ["a", "b", "c"] and meta["multilabel"] is False
    assert meta["config"]["input_tdim"] == 128 and meta["time_axis"] == "128"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="dimension"):  # the time axis is fixed
        session.run(None, {"input": np.zeros((1, 100, 128), np.float32)})


def test_onnx_dynamic_time_follows_asts_position_rule(tmp_path):
    model = model_with_labels(input_tdim=300)
    path = export_onnx(model, tmp_path / "dyn.onnx", dynamic_time=True)  # torch.export-based exporter
    assert not (tmp_path / "dyn.onnx.data").exists()  # weights inside the file
    # shorter inputs equal the model re-gridded to that length (load_model(..., input_tdim=T))
    assert verify_export(model, path, lengths=[300, 201, 128, 16], batch_sizes=(1, 2)) <= 1e-4


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_parity_and_metadata(tmp_path):
    model = model_with_labels()
    path = export_torchscript(model, tmp_path / "m.pt")
    assert verify_export(model, path, batch_sizes=(1, 5)) <= 1e-4
    loaded = torch.jit.load(str(path))
    x = torch.randn(2, 128, 128)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith("extra/ast_audio.json"))
        assert json.loads(z.read(name))["labels"] == ["a", "b", "c"]


def test_verify_reports_a_mismatch(tmp_path):
    model = model_with_labels()
    path = export_torchscript(model, tmp_path / "m.pt")
    other = perturb(model_with_labels(), scale=0.2, seed=3)
    with pytest.raises(ExportError, match="differ from PyTorch"):
        verify_export(other, path)
