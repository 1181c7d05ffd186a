"""`ast-audio convert ... --format hf` writes a model card; transformers loads the folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import ok, run_main
from factories import toy_train_settings, write_toy_dataset

from ast_audio import load_model, save_checkpoint
from ast_audio.train import TrainConfig, train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-epoch tiny run with an eval set: its folder holds config.json, result.csv, eval_result.csv."""
    root = tmp_path_factory.mktemp("card")
    toy = write_toy_dataset(root / "toy", per_class_train=4, per_class_val=2)
    exp = root / "exp"
    train(TrainConfig(**toy_train_settings(toy, exp, n_epochs=3, data_eval=str(toy / "val.json"), lr=7e-4)))
    return exp


def test_card_holds_labels_contract_settings_and_results_and_transformers_loads_it(run, tmp_path):
    source = run / "models" / "best_audio_model.safetensors"
    folder = tmp_path / "toy-ast"
    ok(run_main("convert", source, folder, "--format", "hf"))
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: audio-classification\n")
    assert "# toy-ast" in card and "`best_audio_model.safetensors`" in card
    model = load_model(source)
    for label in ("low tone", "high tone", "noise"):
        assert f"| {label} |" in card
    assert "| sample rate | 16000 Hz |" in card and "softmax (single-label)" in card
    assert f"(x - {model.info.dataset_mean}) / (2 x {model.info.dataset_std})" in card
    assert "| lr | `0.0007` |" in card and "| n_epochs | `3` |" in card and "| model_size | `tiny224` |" in card
    rows = np.loadtxt(run / "result.csv", delimiter=",", ndmin=2)
    best = int(rows[:, 0].argmax())
    assert f"| {best + 1} (best" in card and f"| {rows[best, 0]:.4f} | {rows[best, 1]:.4f} |" in card
    ev = np.loadtxt(run / "eval_result.csv", delimiter=",")
    assert f"accuracy {ev[2]:.4f}, mAUC {ev[3]:.4f}" in card

    from transformers import ASTForAudioClassification

    hf = ASTForAudioClassification.from_pretrained(folder).eval()
    x = torch.randn(2, model.config.input_tdim, model.config.input_fdim)
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), rtol=0, atol=1e-4)
    assert hf.config.id2label[1] == "high tone"
    config = json.loads((folder / "config.json").read_text())
    assert config["max_length"] == model.config.input_tdim


def test_card_of_a_file_outside_a_run_has_no_training_section(tmp_path):
    from factories import multilabel_model

    path = save_checkpoint(multilabel_model(), tmp_path / "multi.safetensors")
    (tmp_path / "config.json").write_text("{}")  # not a run's config.json
    folder = tmp_path / "hf"
    ok(run_main("convert", path, folder, "--format", "hf"))
    card = (folder / "README.md").read_text()
    assert "## Labels (3)" in card and "sigmoid (multi-label)" in card
    assert "## Training" not in card and "## Results" not in card
