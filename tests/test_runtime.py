"""runtime.py: the one device choice, precision choice, autocast and int8 quantisation."""

from __future__ import annotations

import pytest
import torch
from factories import tiny_ast

from ast_audio import ConfigError
from ast_audio.runtime import PRECISIONS, autocast, device_for, pick_device, quantize_int8, resolve_precision

CUDA = torch.cuda.is_available()


def test_pick_device_defaults_to_cuda_when_available_else_the_cpu():
    assert pick_device() == pick_device(None) == torch.device("cuda" if CUDA else "cpu")
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(torch.device("cpu")) == torch.device("cpu")
    assert pick_device("meta").type == "meta"  # any device torch knows passes through


def test_pick_device_errors_are_one_line_and_name_the_device():
    with pytest.raises(ConfigError, match="bad device 'gpu0'") as err:
        pick_device("gpu0")
    assert "\n" not in str(err.value)
    if CUDA:  # this machine has CUDA: the name resolves to a CUDA device
        assert pick_device("cuda:0") == torch.device("cuda", 0)
    else:
        with pytest.raises(ConfigError, match="device 'cuda:0' asked for, but CUDA is not available here"):
            pick_device("cuda:0")


def test_precision_choice_and_its_device():
    assert PRECISIONS == ("fp32", "bf16", "int8")
    assert resolve_precision(None) == "fp32" and resolve_precision(None, autocast=True) == "bf16"
    assert [resolve_precision(p) for p in PRECISIONS] == list(PRECISIONS)
    with pytest.raises(ConfigError, match="unknown precision 'fp16'; choose one of fp32, bf16, int8"):
        resolve_precision("fp16")
    with pytest.raises(ConfigError, match="autocast=True means precision 'bf16'"):
        resolve_precision("fp32", autocast=True)
    assert device_for("int8") == torch.device("cpu")  # int8: device=None means the CPU
    assert device_for("fp32") == pick_device()
    with pytest.raises(ConfigError, match="precision 'int8' runs on the CPU only, not on 'meta'"):
        device_for("int8", "meta")


def test_autocast_is_bf16_for_bf16_only():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast(torch.device("cpu"), "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    for precision in ("fp32", "int8"):
        with autocast(torch.device("cpu"), precision):
            assert (a @ b).dtype == torch.float32


def test_quantize_int8_on_a_copy_or_in_place(recwarn):
    quantized_linear = torch.ao.nn.quantized.dynamic.Linear
    model = tiny_ast(label_dim=3, input_tdim=128)
    x = torch.randn(2, 128, 128)
    with torch.no_grad():
        expected = model(x)
    copy = quantize_int8(model, inplace=False)
    assert copy is not model and not any(isinstance(m, quantized_linear) for m in model.modules())
    assert sum(isinstance(m, quantized_linear) for m in copy.modules()) == 4 * len(model.v.blocks) + 1
    with torch.no_grad():
        got = copy(x)
    assert 0 < (got - expected).abs().max() < 0.5  # another computation, close to fp32
    same = quantize_int8(model, inplace=True)
    assert same is model and any(isinstance(m, quantized_linear) for m in model.modules())
    assert not [w for w in recwarn if "quantiz" in str(w.message)]  # torch's deprecation notes silenced
