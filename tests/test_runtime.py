"""runtime.py: the one device choice, precision choice, autocast and int8 quantisation."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from factories import tiny_ast

from ast_audio import ConfigError
from ast_audio.base import runtime
from ast_audio.base.runtime import (
    PRECISIONS,
    auto_precision,
    autocast,
    concrete_precision,
    cpu_bf16_units,
    cpu_flags,
    device_for,
    pick_device,
    quantize_int8,
    resolve_precision,
    training_amp,
)

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
    assert PRECISIONS == ("auto", "fp32", "bf16", "int8")
    assert resolve_precision(None) == "auto" and resolve_precision(None, autocast=True) == "bf16"
    assert [resolve_precision(p) for p in PRECISIONS] == list(PRECISIONS)
    with pytest.raises(ConfigError, match="unknown precision 'fp16'; choose one of auto, fp32, bf16, int8"):
        resolve_precision("fp16")
    with pytest.raises(ConfigError, match="autocast=True means precision 'bf16'"):
        resolve_precision("fp32", autocast=True)
    assert device_for("int8") == torch.device("cpu")  # int8: device=None means the CPU
    assert device_for("fp32") == device_for("auto") == pick_device()
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


# /proc/cpuinfo excerpts (flags lines shortened): an AVX2-only AMD Zen 3, an AMD Zen 4 with
# AVX512-BF16, an Intel Sapphire Rapids with AMX, an Arm Neoverse (its "Features" line).
ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni vaes vpclmulqdq
bugs\t\t: sysret_ss_attrs spectre_v1

processor\t: 1
flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni vaes vpclmulqdq
"""
ZEN4 = "processor\t: 0\nflags\t\t: avx2 avx512f avx512bw avx512_vnni avx512_bf16 avx512vl\n"
SPR = "processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8 avx512_fp16\n"
NEOVERSE = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 crc32 bf16 i8mm\n"


@pytest.fixture(autouse=True)
def no_isa_cap(monkeypatch):
    """These tests fake the CPU's flags; a oneDNN cap in the caller's environment would bar units,
    and an AST_AUDIO_PRECISION pin would decide auto whatever the flags say."""
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("AST_AUDIO_PRECISION", raising=False)


def test_bf16_units_are_read_from_cpuinfo_flags():
    assert "avx2" in cpu_flags(ZEN3) and "bugs" not in cpu_flags(ZEN3) and "spectre_v1" not in cpu_flags(ZEN3)
    assert cpu_bf16_units(cpu_flags(ZEN3)) == []
    assert cpu_bf16_units(cpu_flags(ZEN4)) == ["avx512_bf16"]
    assert cpu_bf16_units(cpu_flags(SPR)) == ["amx_bf16", "avx512_bf16"]
    assert cpu_bf16_units(cpu_flags(NEOVERSE)) == []  # Arm's bf16 is not a matrix unit torch uses for autocast
    assert cpu_flags("") == set() and cpu_bf16_units(set()) == []


def test_a_onednn_isa_cap_takes_the_bf16_units_it_bars():
    # ONEDNN_MAX_CPU_ISA keeps torch's bf16 matmuls off the units above the cap, so auto
    # must see the CPU as the cap describes it (bench/model.py uses AVX2 to act as a Zen 3).
    spr = cpu_flags(SPR)
    assert cpu_bf16_units(spr, {}) == ["amx_bf16", "avx512_bf16"]
    assert cpu_bf16_units(spr, {"ONEDNN_MAX_CPU_ISA": "avx2"}) == []
    assert cpu_bf16_units(spr, {"DNNL_MAX_CPU_ISA": "AVX512_CORE_VNNI"}) == []
    assert cpu_bf16_units(spr, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}) == ["avx512_bf16"]
    assert cpu_bf16_units(spr, {"ONEDNN_MAX_CPU_ISA": "ALL"}) == ["amx_bf16", "avx512_bf16"]
    assert cpu_bf16_units(cpu_flags(ZEN3), {"ONEDNN_MAX_CPU_ISA": "ALL"}) == []  # a cap adds nothing
    assert runtime.onednn_isa_cap({"ONEDNN_MAX_CPU_ISA": " "}) is None


def test_this_cpus_flags_come_from_proc_cpuinfo_or_are_none(monkeypatch, tmp_path):
    runtime._this_cpu_flags.cache_clear()
    monkeypatch.setattr(runtime, "CPUINFO", tmp_path / "cpuinfo")
    (tmp_path / "cpuinfo").write_text(ZEN4)
    assert cpu_bf16_units() == ["avx512_bf16"]
    runtime._this_cpu_flags.cache_clear()
    monkeypatch.setattr(runtime, "CPUINFO", tmp_path / "missing")  # not Linux: nothing known, no units assumed
    assert cpu_bf16_units() == []
    runtime._this_cpu_flags.cache_clear()


@pytest.fixture
def cpu_with(monkeypatch):
    """Pretend this CPU has the cpuinfo text given; forget what was logged or warned."""
    monkeypatch.setattr(runtime, "_told", set())

    def pretend(text: str) -> None:
        monkeypatch.setattr(runtime, "_this_cpu_flags", lambda: frozenset(cpu_flags(text)))

    return pretend


@pytest.mark.parametrize(("text", "precision", "amp"), [(ZEN3, "int8", None), (ZEN4, "bf16", torch.bfloat16),
                                                        (SPR, "bf16", torch.bfloat16)])  # fmt: skip
def test_auto_on_a_cpu(cpu_with, caplog, text, precision, amp):
    cpu_with(text)
    cpu = torch.device("cpu")
    assert auto_precision(cpu)[0] == precision
    with caplog.at_level(logging.INFO, logger="ast_audio.base.runtime"):
        assert concrete_precision("auto", cpu) == precision
        assert concrete_precision("auto", cpu) == precision
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith(f"precision auto: {precision} on cpu (")  # once, with the why
    assert training_amp("auto", cpu) == (amp, False)  # training: bf16 where native, else off


@pytest.mark.parametrize(("bf16", "precision", "amp"), [(True, "bf16", (torch.bfloat16, False)),
                                                        (False, "fp32", (torch.float16, True))])  # fmt: skip
def test_auto_on_a_gpu(cpu_with, monkeypatch, bf16, precision, amp):
    cpu_with(ZEN3)  # the host CPU does not matter
    monkeypatch.setattr(runtime, "bf16_native", lambda device: bf16 if device.type == "cuda" else False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a GPU")
    gpu = torch.device("cuda", 0)
    assert auto_precision(gpu) == (precision, "a GPU supports bf16" if bf16 else "a GPU has no native bf16")
    assert training_amp("auto", gpu) == amp  # without bf16: fp16 and a scaler, as the original
    assert auto_precision(torch.device("meta"))[0] == "fp32"  # no fast path known elsewhere


def test_explicit_bf16_on_a_cpu_without_units_warns_once(cpu_with):
    cpu_with(ZEN3)
    cpu = torch.device("cpu")
    with pytest.warns(RuntimeWarning, match="bf16 on a CPU without bf16 matrix units .* emulated") as seen:
        assert concrete_precision("bf16", cpu) == "bf16"
    assert len(seen) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert concrete_precision("bf16", cpu) == "bf16"  # once only
        training_amp("bf16", cpu)
        assert concrete_precision("fp32", cpu) == "fp32" and concrete_precision("int8", cpu) == "int8"
        cpu_with(ZEN4)
        assert concrete_precision("bf16", cpu) == "bf16"  # native: nothing to warn about
