"""Named checkpoints: cache, download from a local HTTP server, truncated transfers, offline."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import Server
from factories import deit_state, original_audioset_state

from ast_audio import ASTModel, DownloadError, load_model
from ast_audio.checkpoints.hub import REGISTRY, PublishedCheckpoint, register_checkpoint


@pytest.fixture
def published_file(tmp_path):
    """The bytes of a small checkpoint in the original layout, named as a published one."""
    path = tmp_path / "src.pth"
    torch.save(original_audioset_state(depth=2), path)
    return path.read_bytes()


@pytest.fixture
def mirror_registry():
    """Point registry entries at a test server for the test's duration."""
    saved = dict(REGISTRY)

    def point(name: str, url: str) -> PublishedCheckpoint:
        entry = replace(REGISTRY[name], url=url)
        register_checkpoint(entry)
        return entry

    yield point
    REGISTRY.clear()
    REGISTRY.update(saved)


def test_named_checkpoint_downloads_once_into_the_cache(ast_home, published_file, mirror_registry):
    with Server({"audioset_10_10_0.4593.pth": published_file}) as server:
        mirror_registry("audioset_10_10_0.4593", f"{server.url}/s/abc/audioset_10_10_0.4593.pth?dl=1")
        model = load_model("audioset_10_10_0.4593")
        assert (ast_home / "audioset_10_10_0.4593.pth").read_bytes() == published_file
        assert model.config.label_dim == 527 and model.config.grid == (12, 101)
        again = load_model("audioset_10_10_0.4593.pth")  # the file name works too
        assert len(server.hits) == 1
    torch.testing.assert_close(again.v.pos_embed, model.v.pos_embed)
    assert sorted(p.name for p in ast_home.iterdir()) == ["audioset_10_10_0.4593.pth"]


def test_interrupted_transfer_leaves_no_half_file(ast_home, published_file, mirror_registry):
    with Server({"audioset_10_10_0.4593.pth": published_file}) as server:
        mirror_registry("audioset_10_10_0.4593", f"{server.url}/cut/audioset_10_10_0.4593.pth")
        with pytest.raises(DownloadError) as err:
            load_model("audioset_10_10_0.4593")
    message = str(err.value)
    assert "audioset_10_10_0.4593" in message
    assert "download" in message and str(ast_home / "audioset_10_10_0.4593.pth") in message
    assert list(ast_home.iterdir()) == []


def test_http_error_is_a_download_error(ast_home, mirror_registry):
    with Server({}) as server:
        mirror_registry("audioset_12_12_0.4467", f"{server.url}/nowhere/audioset_12_12_0.4467.pth")
        with pytest.raises(DownloadError, match="404"):
            load_model("audioset_12_12_0.4467")
    assert list(ast_home.iterdir()) == []


def test_offline_says_which_file_to_put_where(ast_home, monkeypatch):
    monkeypatch.setenv("AST_AUDIO_OFFLINE", "1")
    with pytest.raises(DownloadError) as err:
        load_model("audioset_16_16_0.4422")
    message = str(err.value)
    assert REGISTRY["audioset_16_16_0.4422"].url in message
    assert str(ast_home / "audioset_16_16_0.4422.pth") in message


def test_no_network_says_which_file_to_put_where(ast_home, mirror_registry):
    mirror_registry("audioset_14_14_0.4431", "http://127.0.0.1:9/audioset_14_14_0.4431.pth")  # nothing listens
    with pytest.raises(DownloadError, match=r"save it as .*audioset_14_14_0.4431.pth"):
        load_model("audioset_14_14_0.4431")


def test_original_readme_snippet_with_cached_weights(ast_home):
    """The original README's model snippet, unchanged but for a tiny size: ImageNet weights
    come from the cache by name, as ``imagenet_pretrain=True`` asks."""
    torch.save({"model": deit_state(side=14, depth=12)}, ast_home / REGISTRY["deit_tiny_distilled_patch16_224"].filename)
    input_tdim = 100
    ast_mdl = ASTModel(input_tdim=input_tdim, model_size="tiny224")
    test_input = torch.rand([10, input_tdim, 128])
    with torch.no_grad():
        test_output = ast_mdl(test_input)
    assert test_output.shape == (10, 527)


def test_audioset_pretrain_true_uses_the_default_published_file(ast_home):
    torch.save(original_audioset_state(depth=2), ast_home / "audioset_10_10_0.4593.pth")
    model = ASTModel(label_dim=35, input_tdim=128, audioset_pretrain=True, model_size="tiny224", depth=2)
    assert model.config.grid == (12, 12)
    with torch.no_grad():
        assert model(torch.randn(2, 128, 128)).shape == (2, 35)


def test_the_public_checkpoint_names_are_the_objects_of_their_modules():
    """The registry and download live in ast_audio.checkpoints.hub, the rename tables in
    ast_audio.checkpoints.layouts, safe reading in .read, loading and writing in .load; the
    package offers the public names, the same objects."""
    import ast_audio.checkpoints as package
    from ast_audio.checkpoints import hub, layouts, load, read

    for module, names in ((hub, ("REGISTRY", "PublishedCheckpoint", "register_checkpoint", "cache_dir", "download",
                                 "resolve")),
                          (layouts, ("hf_to_original", "original_to_hf")),
                          (read, ("RawCheckpoint", "read_checkpoint")),
                          (load, ("load_model", "save_checkpoint", "export_hf", "export_original"))):  # fmt: skip
        for name in names:
            assert getattr(package, name) is getattr(module, name), name
    for name in ("load_state_strict", "init_from_imagenet", "init_from_audioset", "load_model", "save_checkpoint"):
        assert hasattr(load, name), name
