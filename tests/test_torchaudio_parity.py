"""Our fbank against torchaudio's ``compliance.kaldi.fbank`` itself, with AST's arguments.

torchaudio has no CPU build on this machine, but ``compliance/kaldi.py`` is plain PyTorch:
``make install`` extracts that one file from the registry's torchaudio wheel into
``.venv/reference/`` and this test runs it as the reference (nothing else of torchaudio
is used; the module's ``import torchaudio`` is satisfied by a stub while it loads).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import write_audio

from ast_audio.audio.io import load_audio
from ast_audio.features import FeatureConfig, fbank, waveform_to_input

REFERENCE = Path(__file__).resolve().parents[1] / ".venv" / "reference" / "torchaudio_kaldi.py"


@pytest.fixture(scope="module")
def kaldi():
    if not REFERENCE.exists():
        pytest.fail(f"{REFERENCE} is missing: run `make install` (it extracts torchaudio's kaldi.py)")
    spec = importlib.util.spec_from_file_location("torchaudio_compliance_kaldi", REFERENCE)
    module = importlib.util.module_from_spec(spec)
    saved = sys.modules.get("torchaudio")
    sys.modules["torchaudio"] = types.ModuleType("torchaudio")  # only its MFCC path would use it
    try:
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            sys.modules.pop("torchaudio", None)
        else:
            sys.modules["torchaudio"] = saved
    return module


def ast_fbank(kaldi, waveform: torch.Tensor, sample_rate: int, bins: int) -> torch.Tensor:
    """What the original AST data loader computes (mean removed, then torchaudio's fbank)."""
    waveform = waveform - waveform.mean()
    return kaldi.fbank(
        waveform[None], htk_compat=True, sample_frequency=sample_rate, use_energy=False,
        window_type="hanning", num_mel_bins=bins, dither=0.0, frame_shift=10,
    )  # fmt: skip


def speechlike(path: Path, sample_rate: int, seconds: float, seed: int) -> torch.Tensor:
    """Harmonics with a moving pitch, bursts of noise and silence, as a 16-bit wav read back."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    f0 = 120 + 60 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    x = sum(0.3 / k * np.sin(k * phase) for k in range(1, 12)) * (np.sin(2 * np.pi * 2 * t) > -0.3)
    x = x + 0.05 * rng.standard_normal(t.size) * (rng.random(t.size) < 0.3)
    write_audio(path, (0.8 * x / np.abs(x).max()).astype(np.float32), sample_rate, subtype="PCM_16")
    return load_audio(path, sample_rate=None)


@pytest.mark.parametrize("bins", [64, 128])
@pytest.mark.parametrize("sample_rate", [8000, 16000, 22050, 44100, 48000])
def test_fbank_equals_torchaudio_within_1e3(kaldi, tmp_path, sample_rate, bins):
    for seed in range(2):
        waveform = speechlike(tmp_path / f"{seed}.wav", sample_rate, 2.5 + seed, seed)
        want = ast_fbank(kaldi, waveform, sample_rate, bins)
        got = fbank(waveform - waveform.mean(), sample_rate, bins)
        assert got.shape == want.shape
        assert (got - want).abs().max().item() <= 1e-3


def test_model_input_equals_the_original_loader(kaldi, tmp_path):
    """waveform_to_input == the original: torchaudio fbank, zero-pad to 1024, (x - mean) / (2 std)."""
    cfg = FeatureConfig.preset("audioset")
    waveform = speechlike(tmp_path / "a.wav", 16000, 4.0, 3)
    want = ast_fbank(kaldi, waveform, 16000, 128)
    want = torch.nn.functional.pad(want, (0, 0, 0, 1024 - want.shape[0]))
    want = (want - cfg.mean) / (cfg.std * 2)
    got = waveform_to_input(waveform, cfg)
    assert got.shape == (1024, 128)
    assert (got - want).abs().max().item() <= 1e-3 / (2 * cfg.std)
