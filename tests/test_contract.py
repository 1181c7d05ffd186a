"""The input contract travels with the model: written by every writer, read back by one
function, inferred once for foreign layouts, and the same features wherever they are made."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from factories import tiny_ast

from ast_audio import AudioTagger
from ast_audio.checkpoints import export_hf, export_original, load_model, read_checkpoint, save_checkpoint
from ast_audio.errors import CheckpointError, ConfigError
from ast_audio.features import InputContract, waveform_to_input
from ast_audio.features.pipeline import batch_input, fit_waveform
from ast_audio.features.presets import PRESETS
from ast_audio.model import ModelInfo

BIN = Path(sys.executable).parent


def trained_like(**info) -> torch.nn.Module:
    model = tiny_ast(label_dim=3, fstride=16, tstride=16, input_tdim=64)
    model.info = ModelInfo(labels=["a", "b", "c"], dataset_mean=-5.5, dataset_std=3.25, multilabel=False,
                           sample_rate=8000, **info)  # fmt: skip
    return model


def test_contract_round_trips_and_checks_itself():
    contract = InputContract.preset("esc50", frame_shift=12.5)
    assert contract.activation == "softmax" and contract.target_length == 512
    assert InputContract.from_dict(contract.to_dict()) == contract and "normalize" not in contract.to_dict()
    assert contract.samples == contract.window[0] + 511 * contract.window[1]
    with pytest.raises(ConfigError, match="mono policy"):
        InputContract(mono="left")
    with pytest.raises(ConfigError, match="activation"):
        InputContract(activation="relu")
    with pytest.raises(ConfigError, match="unknown input contract keys: dither"):
        InputContract.from_dict({**contract.to_dict(), "dither": 1.0})


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_every_checkpoint_we_write_carries_the_whole_contract(tmp_path, suffix):
    model = trained_like(frame_shift=12.5)
    path = save_checkpoint(model, tmp_path / f"m{suffix}")
    if suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as fh:
            saved = json.loads(fh.metadata()["ast-audio"])["input_contract"]
    else:
        saved = torch.load(path, weights_only=True)["input_contract"]
    want = dict(sample_rate=8000, mono="mean", num_mel_bins=128, frame_length=25.0, frame_shift=12.5,
                target_length=64, mean=-5.5, std=3.25, activation="softmax", resample=True, thresholds=None)  # fmt: skip
    assert saved == want
    assert load_model(path).input_contract == InputContract(**want)


def test_a_saved_contract_that_disagrees_with_the_model_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    path = save_checkpoint(trained_like(), tmp_path / "m.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        meta = json.loads(fh.metadata()["ast-audio"])
    meta["input_contract"]["target_length"] = 100
    save_file(load_file(path), str(tmp_path / "bad.safetensors"), metadata={"ast-audio": json.dumps(meta), "format": "pt"})
    with pytest.raises(CheckpointError, match=r"input contract \(100 frames x 128 bins\) disagrees"):
        load_model(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("with_contract", [False, True])
def test_checkpoints_with_the_flat_metadata_of_earlier_versions_give_the_same_contract(tmp_path, with_contract):
    """Files written before ModelInfo held the contract keep its settings as flat keys of
    ``info``, with the contract object beside them (``with_contract``) or without it."""
    from safetensors.torch import load_file, save_file

    model = trained_like(frame_shift=12.5, thresholds=[0.25, 0.5, 0.75])
    path = save_checkpoint(model, tmp_path / "new.safetensors")
    flat = {"labels": ["a", "b", "c"], "label_ids": None, "dataset_mean": -5.5, "dataset_std": 3.25,
            "multilabel": False, "sample_rate": 8000, "mono": "mean", "frame_length": 25.0, "frame_shift": 12.5,
            "resample": True, "thresholds": [0.25, 0.5, 0.75], "extra": {}}  # fmt: skip
    meta = {"format": "ast-audio", "version": 1, "config": model.config.to_dict(), "info": flat}
    if with_contract:
        meta["input_contract"] = model.input_contract.to_dict()
    old = tmp_path / "old.safetensors"
    save_file(load_file(path), str(old), metadata={"ast-audio": json.dumps(meta), "format": "pt"})
    torch.save({**meta, "state_dict": load_file(path)}, tmp_path / "old.pt")
    for source in (old, tmp_path / "old.pt"):
        back = load_model(source)
        assert back.input_contract == model.input_contract == load_model(path).input_contract
        assert back.input_contract.thresholds == (0.25, 0.5, 0.75) and back.input_contract.activation == "softmax"
        assert back.info.labels == ["a", "b", "c"] and back.info.contract is back.input_contract
        assert (back.info.dataset_mean, back.info.dataset_std, back.info.multilabel) == (-5.5, 3.25, False)


def test_model_info_holds_the_contract_at_the_models_input_size():
    model = trained_like()
    assert model.info.contract.target_length == 64 and model.input_contract is model.info.contract
    model.set_input_size(input_tdim=48)
    assert model.input_contract.target_length == 48 and model.input_contract.mean == -5.5
    info = ModelInfo.from_dict(model.info.to_dict())
    assert info == model.info
    model.reset_classifier(5)
    assert model.info.labels is None and model.input_contract.activation == "softmax"


def test_foreign_layouts_get_their_contract_once_at_load(tmp_path, caplog):
    source = tiny_ast(label_dim=527, fstride=16, tstride=16, input_tdim=1024)
    pth = export_original(source, tmp_path / "audioset_16_16_0.4422.pth")
    contract = load_model(pth).input_contract  # the published name says AudioSet
    assert (contract.mean, contract.std, contract.activation) == (PRESETS["audioset"].mean, PRESETS["audioset"].std,
                                                                  "sigmoid")  # fmt: skip
    unnamed = tiny_ast(label_dim=4, fstride=16, tstride=16, input_tdim=64)
    path = export_original(unnamed, tmp_path / "mine.pth")  # no name, no statistics anywhere
    with caplog.at_level(logging.WARNING, logger="ast_audio"):
        model = load_model(path, fstride=16, tstride=16)
        first = [r.getMessage() for r in caplog.records]
        contract = model.input_contract
        AudioTagger(model, device="cpu")
    assert len(first) == 1 and "mine.pth" in first[0] and str(PRESETS["audioset"].mean) in first[0]
    assert [r.getMessage() for r in caplog.records] == first  # said once, at load, naming the default
    assert (contract.mean, contract.std) == (PRESETS["audioset"].mean, PRESETS["audioset"].std)
    hf = export_hf(trained_like(), tmp_path / "hf")
    assert read_checkpoint(hf).layout == "hf"
    assert load_model(hf).input_contract == trained_like().input_contract  # preprocessor_config.json carries it


def test_info_prints_the_contract(tmp_path):
    path = save_checkpoint(trained_like(), tmp_path / "m.safetensors")
    out = subprocess.run([str(BIN / "ast-audio"), "info", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["input_contract"] == trained_like().input_contract.to_dict()


def test_the_pipeline_equals_waveform_to_input_for_cut_and_padded_clips():
    contract = InputContract(target_length=100, mean=-4.0, std=2.0)
    rng = np.random.default_rng(0)
    clips = [torch.from_numpy(rng.uniform(-0.5, 0.5, n).astype(np.float32)) for n in (8000, 16000, 30000, 100)]
    fitted = [fit_waveform(c, contract) for c in clips]
    got = batch_input(torch.stack([w for w, _ in fitted]), torch.tensor([n for _, n in fitted]), contract)
    for clip, features in zip(clips, got, strict=True):
        torch.testing.assert_close(features, waveform_to_input(clip, contract), rtol=0, atol=1e-5)


def test_the_tagger_reads_a_file_as_training_does(tmp_path):
    from ast_audio.data import read_datafile
    from ast_audio.data.dataset import AudioDataset

    model = trained_like()
    rng = np.random.default_rng(1)
    wav = tmp_path / "clip.wav"
    sf.write(wav, rng.uniform(-0.3, 0.3, 4000).astype(np.float32), 8000)  # shorter than one model window
    (tmp_path / "labels.csv").write_text("index,mid,display_name\n0,a,a\n1,b,b\n2,c,c\n")
    (tmp_path / "d.json").write_text(json.dumps({"data": [{"wav": str(wav), "labels": "a"}]}))
    dataset = AudioDataset(read_datafile(tmp_path / "d.json", tmp_path / "labels.csv"), model.input_contract)
    features, _ = dataset.model_input(dataset.collate([dataset[0]]), "cpu")
    with torch.no_grad():
        want = torch.softmax(model(features), -1)[0].numpy()
    got = AudioTagger(model, device="cpu", precision="fp32").predict(wav, top_k=3)
    np.testing.assert_allclose(got.scores, want, rtol=0, atol=1e-5)
