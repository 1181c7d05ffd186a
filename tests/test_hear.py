"""The HEAR 2021 API: the official validator on a tiny checkpoint, and the contract itself.

The official ``hearvalidator`` (installed by the Makefile with ``--no-deps``) imports
TensorFlow at its top only to tell TensorFlow models from PyTorch ones; TensorFlow is
hundreds of megabytes, so its run here puts a stand-in ``tensorflow`` module first on the
path whose ``Module`` class nothing is an instance of: every check on the PyTorch path is
the validator's own code.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import cli_env
from factories import SR, noise, ssast_state, tiny_ast

from ast_audio import AudioTagger, load_model, save_checkpoint
from ast_audio.errors import ConfigError
from ast_audio.features import waveform_to_input
from ast_audio.infer import hear


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny AST: 1.28 s windows, tstride 5 (a timestamp every 50 ms), 8x23 patches."""
    model = tiny_ast(label_dim=3, fstride=16, tstride=5, input_tdim=128, depth=1)
    return save_checkpoint(model, tmp_path_factory.mktemp("hear") / "tiny.safetensors")


@pytest.fixture(scope="module")
def model(checkpoint):
    return hear.load_model(str(checkpoint))


def validator(module: str, checkpoint, tmp_path) -> subprocess.CompletedProcess:
    stub = tmp_path / "tf-stand-in"
    (stub / "tensorflow").mkdir(parents=True, exist_ok=True)
    (stub / "tensorflow" / "__init__.py").write_text(
        "class Module:  # nothing ast-audio returns is one\n    pass\n\n\n"
        "def device(name):\n    raise AssertionError('the PyTorch path never asks for a TensorFlow device')\n"
    )
    env = cli_env(OMP_NUM_THREADS=1)
    env["PYTHONPATH"] = f"{stub}:{tmp_path}:{env['PYTHONPATH']}"
    cmd = [sys.executable, "-m", "hearvalidator.validate", module, "-m", str(checkpoint), "-d", "cpu"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_the_official_validator_passes(checkpoint, tmp_path):
    out = validator("ast_audio.infer.hear", checkpoint, tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "Looks good!" in out.stdout
    assert "Interval between timestamps is 50.0ms" in out.stdout


def test_the_validator_fails_a_module_that_breaks_the_contract(checkpoint, tmp_path):
    (tmp_path / "broken_hear.py").write_text(
        "from ast_audio.infer.hear import load_model, get_timestamp_embeddings\n"
        "from ast_audio.infer import hear\n\n\n"
        "def get_scene_embeddings(audio, model):\n    return hear.get_scene_embeddings(audio, model).double()\n"
    )
    out = validator("broken_hear", checkpoint, tmp_path)
    assert out.returncode != 0 and "Expected embeddings to be torch.float32" in out.stderr


def test_shapes_dtypes_and_timestamps_in_ms(model):
    assert (model.sample_rate, model.scene_embedding_size, model.timestamp_embedding_size) == (16000, 192, 192)
    audio = torch.from_numpy(np.stack([noise(2.0, seed=s) for s in range(3)]))
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    frames = 1 + (32000 - 400) // 160  # 25 ms frames every 10 ms, snip edges
    columns = (frames - 16) // 5 + 1  # 16-frame patch columns every 5 frames
    assert emb.shape == (3, columns, 192) and ts.shape == (3, columns)
    assert emb.dtype == ts.dtype == torch.float32
    expected = np.arange(columns) * 50.0 + (15 * 10 + 25) / 2  # centre of each column's 16 frames
    for row in ts:
        np.testing.assert_array_equal(row.numpy(), expected)
    scene = hear.get_scene_embeddings(audio, model)
    assert scene.shape == (3, 192) and scene.dtype == torch.float32
    short = hear.get_timestamp_embeddings(torch.zeros(1, 100), model)  # shorter than one frame: one column
    assert short[0].shape == (1, 1, 192) and short[1].tolist() == [[87.5]]


def test_columns_are_the_patch_outputs_and_windows_continue_the_grid(model):
    ast = model.ast
    window = 400 + 127 * 160  # the samples of one 128-frame model window
    rng = np.random.default_rng(0)
    first, rest = rng.standard_normal(window) * 0.1, rng.standard_normal(SR) * 0.1
    audio = np.concatenate([first - first.mean(), rest - rest.mean()]).astype("float32")  # zero mean, both ways
    emb, ts = hear.get_timestamp_embeddings(torch.from_numpy(audio)[None], model)
    alone = torch.from_numpy(audio[:window])[None]
    with torch.no_grad():
        grid = ast.token_grid(waveform_to_input(alone, ast.input_contract)).mean(dim=1)  # (1, 23, D)
    torch.testing.assert_close(emb[:, :23], grid, rtol=0, atol=2e-4)  # window 1 = the model on its frames
    assert emb.shape[1] == (1 + (len(audio) - 400) // 160 - 16) // 5 + 1 > 23  # window 2 adds columns
    np.testing.assert_allclose(np.diff(ts[0].numpy()), 50.0)
    whole = waveform_to_input(torch.from_numpy(audio)[None], ast.input_contract.replace(target_length=115 + 128))
    with torch.no_grad():  # window 2 starts 23 columns (115 frames) in
        second = ast.token_grid(whole[:, 115:]).mean(dim=1)
    n = emb.shape[1] - 23
    torch.testing.assert_close(emb[:, 23:], second[:, :n], rtol=0, atol=2e-4)


def test_scene_embedding_is_the_taggers_pooled_embedding(model):
    clip = noise(1.0, seed=7)
    scene = hear.get_scene_embeddings(torch.from_numpy(clip)[None], model)
    tagged = AudioTagger(model.ast, device="cpu", precision="fp32").embed(clip, sample_rate=SR)
    np.testing.assert_allclose(scene[0].numpy(), tagged.embedding, rtol=0, atol=1e-5)


def test_any_checkpoint_loads_ssast_too_and_bad_audio_is_refused(tmp_path, model):
    path = tmp_path / "ssast.pth"
    torch.save(ssast_state(input_tdim=256), path)
    ssast = hear.load_model(path)
    assert ssast.timestamp_embedding_size == 192 and ssast.hop_ms == 160.0  # 16x16 patches without overlap
    emb, ts = hear.get_timestamp_embeddings(torch.zeros(2, 3 * SR), ssast)
    assert emb.shape[:2] == ts.shape and ts[0, 1] - ts[0, 0] == 160.0
    assert load_model(path).config.tstride == 16
    with pytest.raises(ConfigError, match=r"n_sounds, n_samples"):
        hear.get_scene_embeddings(torch.zeros(SR), model)
