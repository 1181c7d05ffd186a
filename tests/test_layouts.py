"""The two-way rename tables of ``ast_audio.checkpoints.layouts`` against the key sets transformers, timm
and the original AST really write."""

from __future__ import annotations

import pytest
import torch
from factories import deit_state, hf_model, original_audioset_state, tiny_ast
from safetensors import safe_open

from ast_audio import CheckpointError, ModelInfo
from ast_audio.checkpoints.layouts import (
    DEIT,
    HF,
    HF5,
    LAYOUTS,
    ORIGINAL,
    UNUSED,
    config_from_hf,
    config_to_hf,
    from_ours,
    hf_to_original,
    original_to_hf,
    to_ours,
)

RULES = [(layout, rule) for layout in LAYOUTS.values() for rule in layout.rules]


def sample(template: str) -> str:
    """A concrete key for a template: block 3, and ``weight`` after a prefix."""
    key = template.replace("{n}", "3")
    return key + "weight" if key == "" or key.endswith(".") else key


@pytest.mark.parametrize("layout, rule", RULES, ids=[f"{lay.name}:{r.ours or '*'}" for lay, r in RULES])
def test_every_rule_round_trips_both_ways(layout, rule):
    parts = len(rule.parts)
    tensor = torch.arange(6 * parts, dtype=torch.float32).reshape(2 * parts, 3)
    ours = {sample(rule.ours): tensor}
    theirs = from_ours(ours, layout)
    assert sorted(theirs) == sorted(sample(t) for t in rule.parts)
    back = to_ours(theirs, layout)
    assert list(back) == list(ours)
    torch.testing.assert_close(back[sample(rule.ours)], tensor, atol=0, rtol=0)
    assert sorted(from_ours(back, layout)) == sorted(theirs)


@pytest.mark.parametrize("layout", list(LAYOUTS.values()), ids=list(LAYOUTS))
def test_each_key_matches_exactly_one_rule(layout):
    for rule in layout.rules:
        ours = sample(rule.ours)
        assert [r for r in layout.rules if r.ours_re.fullmatch(ours)] == [rule]
        for theirs in map(sample, rule.parts):
            assert [r for r in layout.rules if any(p.fullmatch(theirs) for p in r.theirs_re)] == [rule]


def test_hub_layout_to_ours_and_back_reproduces_the_published_key_set(tmp_path):
    """HF (the hub file) -> ours -> HF gives the same keys and tensors, and ours are the model's names."""
    ref = hf_model(depth=2)
    ref.save_pretrained(tmp_path / "hf")
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), framework="pt") as fh:
        published = {k: fh.get_tensor(k) for k in fh.keys()}
    assert any(".attention.attention.query." in k for k in published)  # transformers 4 names on disk

    ours = hf_to_original(published)
    assert set(ours) == set(tiny_ast(depth=2).state_dict())
    again = original_to_hf(ours)
    assert set(again) == set(published)
    for key, value in published.items():
        torch.testing.assert_close(again[key], value, atol=0, rtol=0)


def test_transformers5_names_round_trip_through_their_own_table():
    state = hf_model(depth=2).state_dict()
    assert any(".attention.q_proj." in k for k in state)  # transformers 5 in-memory names
    ours = to_ours(state, HF5)
    assert set(ours) == set(tiny_ast(depth=2).state_dict())
    assert set(from_ours(ours, HF5)) == set(state)
    torch.testing.assert_close(hf_to_original(state)["v.blocks.1.attn.qkv.weight"], ours["v.blocks.1.attn.qkv.weight"])


def test_bare_hf_trunk_without_prefix_or_head():
    trunk = {k.removeprefix("audio_spectrogram_transformer."): v for k, v in hf_model(depth=1).state_dict().items()}
    trunk = {k: v for k, v in trunk.items() if not k.startswith("classifier.")}
    ours = hf_to_original(trunk)
    assert set(ours) == {k for k in tiny_ast(depth=1).state_dict() if k.startswith("v.")}


def test_original_and_deit_layouts_round_trip():
    published = original_audioset_state(depth=2)  # module. prefix and the unused DeiT heads
    ours = to_ours(published, ORIGINAL)
    assert set(from_ours(ours, ORIGINAL)) == set(published)
    assert {k for k in ours if not k.startswith(UNUSED)} == set(tiny_ast(depth=2).state_dict())

    deit = deit_state(depth=2)
    ours = to_ours(deit, DEIT)
    assert set(from_ours(ours, DEIT)) == set(deit)
    assert {k for k in ours if not k.startswith(UNUSED)} == {
        k for k in tiny_ast(depth=2).state_dict() if k.startswith("v.")
    }


def test_missing_query_key_or_value_and_unknown_keys_are_named():
    state = hf_model(depth=1).state_dict()
    del state["audio_spectrogram_transformer.layers.0.attention.k_proj.bias"]
    with pytest.raises(CheckpointError, match=r"'v.blocks.0.attn.qkv.bias' needs '.*layers.0.attention.k_proj.bias'"):
        hf_to_original(state)
    with pytest.raises(CheckpointError, match="unexpected parameter 'v.blocks.0.extra'"):
        from_ours({"v.blocks.0.extra": torch.zeros(1)}, HF)


def test_hf_config_mapping_round_trips():
    model = tiny_ast(label_dim=3, fstride=12, tstride=11, input_fdim=64, input_tdim=77)
    info = ModelInfo(labels=["dog", "cat", "bird"], dataset_mean=-5.0, dataset_std=4.0, multilabel=False)
    config, preprocessor = config_to_hf(model.config, info)
    cfg, back = config_from_hf(config, {"mlp_head.1.weight": torch.zeros(3, 192)}, preprocessor)
    assert cfg == model.config
    assert back == info
