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


def test_mean_pooling_is_the_mean_of_the_patch_tokens_and_survives_a_checkpoint(tmp_path):
    from ast_audio import load_model
    from ast_audio.checkpoints import export_hf, save_checkpoint
    from ast_audio.errors import CheckpointError

    model = tiny_ast(input_tdim=64)
    mean = ASTModel.from_config(model.config.replace(pool="mean"), model.info)
    mean.load_state_dict(model.state_dict())  # the same weights: only the pooling differs
    mean.eval()
    x = torch.randn(2, 64, 128)
    with torch.no_grad():
        tokens = mean.forward_tokens(x)
        torch.testing.assert_close(mean.forward_features(x), tokens[:, 2:].mean(dim=1))
        assert not torch.allclose(mean(x), model(x))
    loaded = load_model(save_checkpoint(mean, tmp_path / "mean.safetensors"))
    assert loaded.config.pool == "mean" and model.config.pool == "cls"
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), mean(x))
    with pytest.raises(CheckpointError, match="pool='mean' has no Hugging Face form"):
        export_hf(mean, tmp_path / "hf")


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
        ({"pool": "max"}, "pool must be one of cls, mean, got 'max'"),
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
    """Arrows point down: model/ast.py and model/pos_embed.py import neither hub, layouts nor checkpoints,
    not even inside a function."""
    import ast
    from pathlib import Path

    import ast_audio

    for name in ("ast.py", "pos_embed.py"):
        tree = ast.parse((Path(ast_audio.__file__).parent / "model" / name).read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                imported.add(node.module or "")
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        parts = {part for m in imported for part in m.split(".")}
        assert not parts & {"hub", "layouts", "checkpoints"}, (name, imported)


def test_pretrained_without_the_checkpoint_code_is_a_clear_error(monkeypatch):
    import ast_audio.model.weights as weights_module

    monkeypatch.setattr(weights_module, "_WEIGHTS", {})
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


# --------------------------------------------------------------------------- structured patchout


def _patchout_by_hand(model, x, rows, cols):
    """Patchout written out: every patch gets its own position on the full grid, then only the
    kept rows and columns go on, behind the cls and dist tokens with theirs."""
    v = model.v
    patches = v.patch_embed.proj(x.unsqueeze(1).transpose(2, 3)).permute(0, 2, 3, 1)  # (B, f, t, D)
    B, f, t, D = patches.shape
    placed = patches + v.pos_embed[:, 2:].reshape(1, f, t, D)
    kept = placed[:, rows][:, :, cols].reshape(B, -1, D)
    cls, dist = v.cls_token + v.pos_embed[:, :1], v.dist_token + v.pos_embed[:, 1:2]
    z = torch.cat([cls.expand(B, -1, -1), dist.expand(B, -1, -1), kept], dim=1)
    for block in v.blocks:
        z = block(z)
    return model.mlp_head(model.pool(v.norm(z)))


def test_patchout_keeps_each_patch_its_own_position():
    from ast_audio.model import draw_patchout

    model = tiny_ast(label_dim=3, input_tdim=200)  # a 12x19 grid
    x = torch.randn(2, 200, 128)
    rows, cols = draw_patchout(model.config.grid, 4, 7, torch.Generator().manual_seed(0))
    assert len(rows) == 8 and len(cols) == 12
    with torch.no_grad():
        got = model(x, patchout=(rows, cols))
        torch.testing.assert_close(got, _patchout_by_hand(model, x, rows, cols), atol=1e-6, rtol=1e-5)
        # lists work as index tensors do; None keeps the whole axis
        torch.testing.assert_close(model(x, patchout=(rows.tolist(), cols.tolist())), got, atol=0, rtol=0)
        every_row = model(x, patchout=(None, cols))
        torch.testing.assert_close(every_row, _patchout_by_hand(model, x, list(range(12)), cols), atol=1e-6,
                                   rtol=1e-5)  # fmt: skip
        # keeping every patch is the plain model, bit for bit; so is patchout=None
        f, t = model.config.grid
        plain = model(x)
        assert torch.equal(model(x, patchout=(torch.arange(f), torch.arange(t))), plain)
        assert torch.equal(model(x, patchout=None), plain)
        with pytest.raises(ConfigError, match="keeps no patch"):
            model(x, patchout=([], cols))
        with pytest.raises(ConfigError, match="out of the 12x19 patch grid"):
            model(x, patchout=([12], None))


def test_a_cut_input_at_the_start_positions_is_the_full_input_without_its_last_columns():
    """What length bucketing relies on: the first columns of a padded input are the cut
    input's patches, and ``positions="start"`` gives them the positions they have there."""
    model = tiny_ast(label_dim=3, input_tdim=300)  # 29 columns at tstride 10
    x = torch.randn(2, 300, 128)
    for length in (16, 106, 217):
        columns = (length - 16) // 10 + 1
        with torch.no_grad():
            cut = model(x[:, :length], any_length=True, positions="start")
            dropped = model(x, patchout=(None, torch.arange(columns)))
        torch.testing.assert_close(cut, dropped, atol=1e-6, rtol=1e-5)
    with pytest.raises(ConfigError, match="positions must be 'centre' or 'start'"):
        model(x, positions="end")


def test_patchout_counts_fractions_and_refusals():
    from ast_audio.model import draw_patchout
    from ast_audio.train.config import patchout_drops

    assert patchout_drops((4, 0.4), (12, 101)) == (4, 40)  # a count; 40% of 101 columns, rounded
    assert patchout_drops((0.5, 0), (12, 101)) == (6, 0)
    assert patchout_drops((3.0, 50), (12, 101)) == (3, 50)  # a whole float is a count (TOML gives 3.0)
    for spec, message in (((12, 0), "drops 12 of the 12 frequency rows: at least one must stay"),
                          ((0, 0.999), "drops 101 of the 101 time columns"),
                          ((-1, 0), "patchout-f must be a count"), ((0, 1.5), "patchout-t must be a count"),
                          ((True, 0), "patchout-f must be a count")):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            patchout_drops(spec, (12, 101))
    assert draw_patchout((12, 101), 0, 0) is None
    rows, cols = draw_patchout((12, 101), 4, 40, torch.Generator().manual_seed(3))
    assert rows.tolist() == sorted(set(rows.tolist())) and len(rows) == 8 and 0 <= min(rows) and max(rows) < 12
    assert cols.tolist() == sorted(set(cols.tolist())) and len(cols) == 61 and max(cols) < 101
    again = draw_patchout((12, 101), 4, 40, torch.Generator().manual_seed(3))
    assert torch.equal(again[0], rows) and torch.equal(again[1], cols)
    assert draw_patchout((12, 101), 0, 5)[0] is None  # no row dropped: every row
