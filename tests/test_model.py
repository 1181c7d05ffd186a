import pytest
import torch
from factories import tiny_ast

from ast_audio import ASTModel, ConfigError
from ast_audio.model import SIZES, ASTConfig


def test_patch_grid_matches_spec():
    # SPEC: 128x1024 with strides 10/10 gives 12x101 = 1212 patches
    cfg = ASTConfig(input_fdim=128, input_tdim=1024, fstride=10, tstride=10)
    assert cfg.grid == (12, 101) and cfg.num_patches == 1212
    assert ASTConfig(fstride=16, tstride=16).grid == (8, 64)


@pytest.mark.parametrize("size", list(SIZES))
def test_sizes_have_the_original_dims(size):
    model = ASTModel(label_dim=3, input_tdim=32, imagenet_pretrain=False, model_size=size, verbose=False, depth=1)
    dim = {"tiny224": 192, "small224": 384, "base224": 768, "base384": 768}[size]
    assert model.v.cls_token.shape == (1, 1, dim)
    assert model.v.blocks[0].attn.num_heads == dim // 64


def test_parameter_names_are_the_originals():
    names = set(tiny_ast(depth=1).state_dict())
    expected = {
        "v.cls_token", "v.dist_token", "v.pos_embed", "v.patch_embed.proj.weight", "v.patch_embed.proj.bias",
        "v.blocks.0.norm1.weight", "v.blocks.0.norm1.bias", "v.blocks.0.attn.qkv.weight", "v.blocks.0.attn.qkv.bias",
        "v.blocks.0.attn.proj.weight", "v.blocks.0.attn.proj.bias", "v.blocks.0.norm2.weight", "v.blocks.0.norm2.bias",
        "v.blocks.0.mlp.fc1.weight", "v.blocks.0.mlp.fc1.bias", "v.blocks.0.mlp.fc2.weight", "v.blocks.0.mlp.fc2.bias",
        "v.norm.weight", "v.norm.bias", "mlp_head.0.weight", "mlp_head.0.bias", "mlp_head.1.weight", "mlp_head.1.bias",
    }  # fmt: skip
    assert names == expected


def test_forward_shapes_and_embedding():
    model = tiny_ast(label_dim=7, input_tdim=100)
    x = torch.randn(4, 100, 128)
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_features(x)
        grid = model.token_grid(x)
    assert logits.shape == (4, 7)
    assert feats.shape == (4, 192)
    assert grid.shape == (4, 12, 9, 192)
    torch.testing.assert_close(model.forward_head(feats), logits)


def test_pooling_is_mean_of_cls_and_dist():
    model = tiny_ast(input_tdim=64)
    x = torch.randn(2, 64, 128)
    with torch.no_grad():
        tokens = model.forward_tokens(x)
        torch.testing.assert_close(model.forward_features(x), (tokens[:, 0] + tokens[:, 1]) / 2)


def test_attention_maps_path_equals_sdpa_path():
    model = tiny_ast(input_tdim=64)
    x = torch.randn(2, 64, 128)
    with torch.no_grad():
        logits, maps = model.attention_maps(x)
        ref = model(x)
    assert len(maps) == 2
    n = 2 + model.config.num_patches
    assert maps[0].shape == (2, 3, n, n)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 3, n))
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)


def test_wrong_input_shape_is_a_clear_error():
    model = tiny_ast(input_tdim=64)
    with pytest.raises(ConfigError, match=r"\[batch, 64 frames, 128 mel bins\], got \[2, 65, 128\]"):
        model(torch.randn(2, 65, 128))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"model_size": "huge"}, "unknown model_size"),
        ({"input_fdim": 8}, "input_fdim=8 is shorter than one 16x16 patch"),
        ({"input_tdim": 15}, "input_tdim=15 is shorter"),
        ({"fstride": 0}, "fstride must be a positive integer"),
        ({"label_dim": 0}, "label_dim must be a positive integer"),
    ],
)
def test_bad_configs_fail_with_a_message(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ASTModel(**{"imagenet_pretrain": False, "verbose": False, **kwargs})


def test_backward_runs_and_reaches_every_parameter():
    model = tiny_ast(input_tdim=48).train()
    model(torch.randn(2, 48, 128)).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# --------------------------------------------------------------------------- surgery and layering


def test_model_file_imports_no_checkpoint_code():
    """Arrows point down: model.py and pos_embed.py import neither hub, layouts nor checkpoints,
    not even inside a function."""
    import ast
    from pathlib import Path

    import ast_audio

    for name in ("model.py", "pos_embed.py"):
        tree = ast.parse((Path(ast_audio.__file__).parent / name).read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                imported.add(node.module or "")
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        assert not {m.rsplit(".", 1)[-1] for m in imported} & {"hub", "layouts", "checkpoints"}, (name, imported)


def test_pretrained_without_the_checkpoint_code_is_a_clear_error(monkeypatch):
    import ast_audio.model as model_module

    monkeypatch.setattr(model_module, "_WEIGHTS", {})
    with pytest.raises(ConfigError, match="pretrained weights need the checkpoint code"):
        ASTModel(input_tdim=32, model_size="tiny224", verbose=False, depth=1)
    ASTModel(input_tdim=32, imagenet_pretrain=False, model_size="tiny224", verbose=False, depth=1)  # no weights: fine


def test_from_pretrained_equals_load_model(tmp_path):
    from ast_audio import load_model
    from ast_audio.checkpoints import export_original

    path = export_original(tiny_ast(label_dim=527, input_tdim=1024), tmp_path / "audioset_10_10_0.4593.pth")
    a = ASTModel.from_pretrained(path, input_tdim=300, label_dim=4)
    b = load_model(path, input_tdim=300, label_dim=4)
    assert type(a) is ASTModel and a.config == b.config and not a.training
    for (name, x), (_, y) in zip(a.v.state_dict().items(), b.v.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, atol=0, rtol=0, msg=name)


@pytest.mark.parametrize("changes", [{"input_tdim": 300}, {"input_tdim": 2000}, {"fstride": 12, "tstride": 12},
                                     {"input_fdim": 64}])  # fmt: skip
def test_set_input_size_equals_loading_with_that_size(tmp_path, changes):
    from ast_audio import load_model, save_checkpoint

    source = tiny_ast(label_dim=527, input_tdim=1024)
    path = save_checkpoint(source, tmp_path / "model.safetensors")
    loaded = load_model(path, **changes)
    regridded = source.set_input_size(**changes)
    assert regridded is source and regridded.config == loaded.config
    x = torch.randn(2, loaded.config.input_tdim, loaded.config.input_fdim)
    with torch.no_grad():
        torch.testing.assert_close(regridded(x), loaded(x), atol=0, rtol=0)


def test_reset_classifier_and_pre_logits():
    model = tiny_ast(label_dim=5, input_tdim=64)
    model.info.labels = list("abcde")
    x = torch.randn(2, 64, 128)
    with torch.no_grad():
        feats = model.forward_features(x)
        torch.testing.assert_close(model.forward_head(feats, pre_logits=True), feats, atol=0, rtol=0)
        model.reset_classifier(9)
        assert model(x).shape == (2, 9) and model.config.label_dim == 9 and model.info.labels is None
        torch.testing.assert_close(model.forward_features(x), feats, atol=0, rtol=0)  # the trunk is untouched
    assert ASTModel.new_head is ASTModel.reset_classifier


def test_any_length_equals_the_model_set_to_that_length():
    import copy

    model = tiny_ast(label_dim=3, input_tdim=300)
    for length in (300, 217, 128, 16):
        x = torch.randn(2, length, 128)
        with torch.no_grad():
            got = model.forward_head(model.forward_features(x, any_length=True))
            want = copy.deepcopy(model).set_input_size(input_tdim=length)(x)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    with pytest.raises(ConfigError, match=r"\[batch, 16..300 frames, 128 mel bins\], got \[1, 301, 128\]"):
        model.forward_features(torch.randn(1, 301, 128), any_length=True)
