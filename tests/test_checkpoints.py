"""Loading every layout users arrive with, against Hugging Face transformers as the reference."""

from __future__ import annotations

import json

import pytest
import torch
from factories import deit_state, hf_model, original_audioset_state, tiny_ast
from transformers import ASTForAudioClassification

from ast_audio import ASTModel, CheckpointError, load_model, save_checkpoint
from ast_audio.checkpoints import export_hf, export_original, hf_to_original, read_checkpoint


def logits_of(model, x):
    with torch.no_grad():
        out = model(x)
    return out.logits if hasattr(out, "logits") else out


STRIDES = [(10, 10), (12, 12), (16, 16)]
LENGTHS = [128, 512, 1024]


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("fstride, tstride", STRIDES)
def test_hf_hub_layout_and_original_layout_match_transformers(tmp_path, fstride, tstride, length):
    ref = hf_model(fstride, tstride, length)
    ref.save_pretrained(tmp_path / "hf")  # the hub layout (transformers 4 names on disk)
    x = torch.randn(2, length, 128)
    want = logits_of(ref, x)

    ours = load_model(tmp_path / "hf")
    assert ours.config.grid == ((128 - 16) // fstride + 1, (length - 16) // tstride + 1)
    assert (logits_of(ours, x) - want).abs().max() <= 1e-4
    assert ours.info.labels == [f"class {i}" for i in range(5)]

    # the same weights converted to the original AST layout (module. prefix, no config)
    original = {f"module.{k}": v for k, v in hf_to_original(ref.state_dict()).items()}
    torch.save(original, tmp_path / "converted.pth")
    from_pth = load_model(tmp_path / "converted.pth", fstride=fstride, tstride=tstride, input_tdim=length)
    assert (logits_of(from_pth, x) - want).abs().max() <= 1e-4


def test_transformers5_names_and_pytorch_model_bin(tmp_path):
    ref = hf_model(max_length=256)
    folder = tmp_path / "v5"
    folder.mkdir()
    torch.save(ref.state_dict(), folder / "pytorch_model.bin")  # in-memory names: layers.N.attention.q_proj
    assert any(".attention.q_proj." in k for k in ref.state_dict())
    ref.config.to_json_file(folder / "config.json")
    x = torch.randn(2, 256, 128)
    assert (logits_of(load_model(folder), x) - logits_of(ref, x)).abs().max() <= 1e-4


def test_hf_layer_norm_eps_comes_from_config(tmp_path):
    ref = hf_model(eps=1e-12)  # transformers' default, also in the published hub config
    ref.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf")
    assert ours.config.layer_norm_eps == 1e-12
    x = torch.randn(1, 128, 128)
    assert (logits_of(ours, x) - logits_of(ref, x)).abs().max() <= 1e-4


def test_export_hf_loads_in_transformers(tmp_path):
    ours = tiny_ast(label_dim=4, fstride=12, tstride=12, input_tdim=300)
    ours.info.labels = ["a", "b", "c", "d"]
    export_hf(ours, tmp_path / "exported")
    ref = ASTForAudioClassification.from_pretrained(tmp_path / "exported").eval()
    x = torch.randn(2, 300, 128)
    assert (logits_of(ref, x) - logits_of(ours, x)).abs().max() <= 1e-4
    assert ref.config.id2label[2] == "c"


def test_published_file_name_gives_strides_and_length(tmp_path):
    source = tiny_ast(label_dim=527, fstride=12, tstride=12, input_tdim=1024)
    path = export_original(source, tmp_path / "audioset_12_12_0.4467.pth")
    model = load_model(path)
    cfg = model.config
    assert (cfg.fstride, cfg.tstride, cfg.input_tdim, cfg.label_dim) == (12, 12, 1024, 527)
    assert model.info.labels[0] == "Speech" and model.info.label_ids[0] == "/m/09x0r"
    assert model.info.dataset_mean == pytest.approx(-4.2677393) and model.info.multilabel
    x = torch.randn(1, 1024, 128)
    torch.testing.assert_close(logits_of(model, x), logits_of(source, x))


def test_speechcommands_name_gives_its_length_and_label_order(tmp_path):
    source = tiny_ast(label_dim=35, input_tdim=128)
    path = export_original(source, tmp_path / "speechcommands_10_10_0.9812.pth")
    model = load_model(path)
    assert model.config.input_tdim == 128
    assert model.info.labels[0] == "backward" and not model.info.multilabel


def test_unnamed_original_defaults_to_10_10_and_infers_length(tmp_path):
    source = tiny_ast(label_dim=3, input_tdim=200)
    path = export_original(source, tmp_path / "mine.pth")
    model = load_model(path)
    assert (model.config.fstride, model.config.tstride) == (10, 10)
    assert model.config.grid == source.config.grid
    with pytest.raises(CheckpointError, match="do not fit 10 frequency rows"):
        load_model(path, fstride=12)


def test_requesting_another_length_adapts_positions(tmp_path):
    source = tiny_ast(label_dim=527, input_tdim=1024)
    path = export_original(source, tmp_path / "audioset_10_10_0.4593.pth")
    short = load_model(path, input_tdim=512)
    assert short.config.grid == (12, 50)  # (512 - 16) // 10 + 1
    grid = source.v.pos_embed.detach()[0, 2:].reshape(12, 101, 192)
    torch.testing.assert_close(short.v.pos_embed.detach()[0, 2:], grid[:, 25:75].reshape(-1, 192))  # 50 - 50 // 2
    torch.testing.assert_close(short.mlp_head[1].weight, source.mlp_head[1].weight)  # head kept


def test_new_label_dim_gives_a_new_head(tmp_path):
    source = tiny_ast(label_dim=527, input_tdim=1024)
    path = export_original(source, tmp_path / "audioset_10_10_0.4593.pth")
    model = load_model(path, label_dim=10)
    assert model.mlp_head[1].weight.shape == (10, 192) and model.info.labels is None
    torch.testing.assert_close(model.v.blocks[0].attn.qkv.weight, source.v.blocks[0].attn.qkv.weight)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_own_format_is_self_describing(tmp_path, suffix):
    model = tiny_ast(label_dim=3, fstride=12, tstride=11, input_fdim=64, input_tdim=77)
    model.info.labels = ["dog", "cat", "bird"]
    model.info.dataset_mean, model.info.dataset_std, model.info.multilabel = -5.0, 4.0, False
    path = save_checkpoint(model, tmp_path / f"model{suffix}")
    loaded = load_model(path)
    assert loaded.config == model.config
    assert loaded.info == model.info
    x = torch.randn(2, 77, 64)
    torch.testing.assert_close(logits_of(loaded, x), logits_of(model, x), atol=0, rtol=0)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_deit_file_as_load_model_source_builds_an_imagenet_initialised_ast(tmp_path):
    path = tmp_path / "deit_tiny_distilled_patch16_224-b40b3cf7.pth"
    torch.save({"model": deit_state(side=14, depth=2)}, path)
    model = load_model(path, label_dim=10, input_tdim=128)
    assert model.config.model_size == "tiny224" and model.config.label_dim == 10
    assert read_checkpoint(path).layout == "deit"


def test_shape_mismatch_names_parameter_and_shapes(tmp_path):
    sd = original_audioset_state(depth=2)
    sd["module.v.blocks.1.mlp.fc1.weight"] = torch.zeros(700, 192)
    torch.save(sd, tmp_path / "audioset_10_10_0.4593.pth")
    with pytest.raises(CheckpointError, match=r"'v.blocks.1.mlp.fc1.weight' has shape \[700, 192\].*needs \[768, 192\]"):
        load_model(tmp_path / "audioset_10_10_0.4593.pth")


def test_missing_and_unexpected_parameters_are_named(tmp_path):
    sd = original_audioset_state(depth=2)
    del sd["module.v.blocks.0.norm2.bias"]
    torch.save(sd, tmp_path / "a.pth")
    with pytest.raises(CheckpointError, match="missing parameter 'v.blocks.0.norm2.bias'"):
        load_model(tmp_path / "a.pth")
    sd = original_audioset_state(depth=2)
    sd["module.v.blocks.0.extra"] = torch.zeros(1)
    torch.save(sd, tmp_path / "b.pth")
    with pytest.raises(CheckpointError, match="unexpected parameter 'v.blocks.0.extra'"):
        load_model(tmp_path / "b.pth")


class Payload:
    """Unpickling this creates ``marker``: stands in for arbitrary code in a hostile checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    sd = original_audioset_state(depth=1)
    sd["module.v.cls_token"] = torch.zeros(1, 1, 192)
    path = tmp_path / "audioset_10_10_0.4593.pth"
    torch.save({**sd, "evil": Payload(marker)}, path)

    with pytest.raises(CheckpointError, match="refused: the file holds pickled Python objects"):
        load_model(path)
    with pytest.raises(CheckpointError, match="refused"):
        ASTModel(audioset_pretrain=str(path), model_size="tiny224", depth=1, verbose=False)
    assert not marker.exists()

    # the payload is real: an unsafe load would have run it
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not a readable PyTorch checkpoint"),
        (b"hello, I am text", "not a readable PyTorch checkpoint"),
    ],
)
def test_garbage_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as err:
        load_model(path)
    assert str(path) in str(err.value)


def test_unknown_layout_and_unknown_name(tmp_path):
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout"):
        load_model(tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a known checkpoint name"):
        load_model("no_such_model_anywhere")


def test_hf_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "audio-spectrogram-transformer"}))
    with pytest.raises(CheckpointError, match="no model.safetensors or pytorch_model.bin"):
        load_model(tmp_path)


def test_hf_weights_file_with_config_beside_it(tmp_path):
    ref = hf_model(fstride=12, tstride=12, max_length=300)
    ref.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf" / "model.safetensors")
    assert (ours.config.fstride, ours.config.input_tdim) == (12, 300)
    x = torch.randn(1, 300, 128)
    assert (logits_of(ours, x) - logits_of(ref, x)).abs().max() <= 1e-4
