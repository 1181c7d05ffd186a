"""Self-supervised pretraining (``ast-audio pretrain``, SSAST): masking, the objective, the run
on real files, its checkpoint through load_model / train / convert, and resume."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import ok, run_main, run_torchrun
from factories import as_flags, noise, ssast_state, tone, write_audio, write_toy_dataset
from factories import toy_train_settings as base_args
from layouts import write_class_folders

from ast_audio import load_model
from ast_audio.checkpoints.read import read_checkpoint
from ast_audio.data.shard_writer import write_shards
from ast_audio.data.unlabelled import UnlabelledDataset, unlabelled_sources
from ast_audio.errors import ConfigError
from ast_audio.features.contract import InputContract
from ast_audio.model.ast import ASTModel
from ast_audio.model.ssast import SSAST, draw_masks, mask_count

LENGTH = 100  # frames: a 8x6 grid of 16x16 patches


def tiny(seed: int = 0) -> SSAST:
    torch.manual_seed(seed)
    return SSAST(ASTModel(527, 16, 16, 128, LENGTH, imagenet_pretrain=False, model_size="tiny224", verbose=False,
                          depth=2))  # fmt: skip


# --------------------------------------------------------------------------- masking and objective


def test_mask_count_is_ssast_share_scaled_to_the_grid():
    assert mask_count(512) == 400  # SSAST: 400 of the 512 patches of 128 bins x 1024 frames
    assert mask_count(48) == round(48 * 400 / 512) == 38
    assert mask_count(2) == 1  # one patch always stays visible
    with pytest.raises(ConfigError, match="at least 2 patches"):
        mask_count(1)


@pytest.mark.parametrize("masking", ["cluster", "random"])
def test_masks_are_distinct_patches_of_the_grid(masking):
    masks = draw_masks(16, (8, 6), 38, masking, torch.Generator().manual_seed(1))
    assert masks.shape == (16, 38) and masks.dtype == torch.long
    for row in masks:
        assert len(set(row.tolist())) == 38 and 0 <= int(row.min()) and int(row.max()) < 48
    again = draw_masks(16, (8, 6), 38, masking, torch.Generator().manual_seed(1))
    assert torch.equal(masks, again)  # drawn from the generator only


def test_cluster_masking_masks_neighbours_together():
    """On a large grid with a low share, a clustered mask's patches have many more masked
    neighbours than a random mask's (squares of 3x3..5x5)."""
    grid, count = (8, 64), 100

    def neighbours(masks):
        total = 0
        for row in masks:
            chosen = torch.zeros(grid, dtype=torch.bool).flatten()
            chosen[row] = True
            chosen = chosen.reshape(grid)
            total += int((chosen[:, 1:] & chosen[:, :-1]).sum() + (chosen[1:] & chosen[:-1]).sum())
        return total / len(masks)

    gen = torch.Generator().manual_seed(0)
    clustered, scattered = neighbours(draw_masks(20, grid, count, "cluster", gen)), neighbours(draw_masks(20, grid, count, "random", gen))
    assert clustered > 2.5 * scattered, (clustered, scattered)


def test_bad_mask_settings_are_refused():
    with pytest.raises(ConfigError, match="masking must be one of"):
        draw_masks(1, (8, 6), 3, "stripes")
    with pytest.raises(ConfigError, match=r"1\.\.47"):
        draw_masks(1, (8, 6), 48)
    model = ASTModel(527, 10, 10, 128, LENGTH, imagenet_pretrain=False, model_size="tiny224", verbose=False, depth=2)
    with pytest.raises(ConfigError, match="without overlap"):
        SSAST(model)


def test_heads_have_ssasts_names_and_shapes():
    published = {k.removeprefix("module."): v.shape for k, v in ssast_state(input_tdim=96).items()}
    ours = tiny().pretraining_state()
    assert set(ours) == {k for k in published if k.startswith(("cpredlayer", "gpredlayer", "mask_embed"))}
    for key, tensor in ours.items():
        assert tensor.shape == published[key], key


def test_objective_targets_the_masked_patches_and_learns_a_fixed_batch():
    ssast = tiny()
    x = torch.randn(3, LENGTH, 128)
    patches = ssast.patches(x)  # (B, 48, 256): patch (row r, column c) is x[:, 16c:16c+16, 16r:16r+16]
    assert patches.shape == (3, 48, 256)
    torch.testing.assert_close(patches[1, 2 * 6 + 4].reshape(16, 16), x[1, 64:80, 32:48].T)
    masked = draw_masks(3, ssast.grid, 38, "cluster", torch.Generator().manual_seed(0))
    # a masked patch's content does not reach the encoder: changing it leaves every output as it is
    changed = x.clone()
    row, col = divmod(int(masked[0, 0]), 6)
    changed[0, 16 * col : 16 * col + 16, 16 * row : 16 * row + 16] += 5.0
    with torch.no_grad():
        torch.testing.assert_close(ssast.encode(changed, masked), ssast.encode(x, masked))
    optimizer = torch.optim.Adam(ssast.parameters(), 1e-3)
    history = []
    for _ in range(8):
        out = ssast(x, masked)
        assert 0 <= float(out.acc) <= 1
        torch.testing.assert_close(out.loss, out.disc + 10 * out.gen)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        history.append((out.disc.item(), out.gen.item()))
    assert history[-1][0] < 0.8 * history[0][0] and history[-1][1] < history[0][1], history


# --------------------------------------------------------------------------- the run


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread):
    """A 1-epoch pretraining of a tiny model on a folder (a 5 s recording, short clips in a
    subfolder) and a datafile, with the linear probe; and the toy labelled set."""
    root = tmp_path_factory.mktemp("pretrain")
    toy = write_toy_dataset(root / "toy", per_class_train=3, per_class_val=2)
    unlabelled = root / "recordings"
    (unlabelled / "session").mkdir(parents=True)
    write_audio(unlabelled / "long.wav", noise(5.0, seed=1) + tone(440, seconds=5.0))
    write_audio(unlabelled / "session" / "short.flac", noise(0.5, seed=2))
    exp = root / "exp"
    args = ["pretrain", unlabelled, toy / "train.json", "--exp-dir", exp, *TINY, "--n-epochs", "1",
            "--probe-train", toy / "train.json", "--probe-valid", toy / "val.json"]  # fmt: skip
    out = ok(run_main(*args, timeout=300))
    return root, toy, exp, out


TINY = ["--model-size", "tiny224", "--depth", "2", "--audio-length", LENGTH, "-b", "4", "--amp", "off",
        "--progress", "False", "--lr", "1e-3"]  # fmt: skip


def test_unlabelled_sources_take_folders_datafiles_and_shards(run, tmp_path):
    root, toy, _, _ = run
    recordings, skipped = unlabelled_sources([root / "recordings", toy / "val.json"])
    assert len(recordings) == 2 + 6 and not skipped
    contract = InputContract(target_length=LENGTH)
    dataset = UnlabelledDataset(recordings, contract)
    assert len(dataset) == 4 + 1 + 6  # the 5 s recording gives 4 crops of 1.01 s per epoch
    crops = [dataset[(0, epoch, 0)]["waveform"] for epoch in (1, 2)]
    assert crops[0].shape == (contract.samples,) and not torch.equal(crops[0], crops[1])  # new crops every epoch
    torch.testing.assert_close(dataset[(0, 1, 0)]["waveform"], crops[0])  # and the same for the same draw
    write_shards(toy / "val.json", toy / "labels.csv", tmp_path / "shards")
    members, _ = unlabelled_sources([tmp_path / "shards"])
    assert len(members) == 6 and all(m.member for m in members)
    item = UnlabelledDataset(members, contract)[0]
    assert item["waveform"].shape == (contract.samples,) and item["waveform"].abs().max() > 0


def test_run_writes_curve_checkpoint_and_probe(run):
    _, _, exp, out = run
    assert "done: 1 epochs" in out.stdout
    with open(exp / "pretrain_result.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and set(rows[0]) == {"epoch", "loss", "disc_loss", "gen_loss", "masked_acc", "lr", "probe_acc"}
    row = {k: float(v) for k, v in rows[0].items()}
    assert row["loss"] == pytest.approx(row["disc_loss"] + 10 * row["gen_loss"], rel=1e-4)
    assert 0 <= row["masked_acc"] <= 1 and 0 <= row["probe_acc"] <= 1
    assert (exp / "curves.png").stat().st_size > 1000 and (exp / "models" / "last.pt").exists()
    assert "normalisation statistics" in (exp / "log.txt").read_text()


def test_checkpoint_loads_like_a_published_ssast_file(run):
    _, _, exp, _ = run
    path = exp / "models" / "pretrained.safetensors"
    raw = read_checkpoint(path)
    assert raw.layout == "ssast" and set(raw.pretraining) == set(tiny().pretraining_state())
    model = load_model(path, label_dim=3)
    cfg = model.config
    assert (cfg.fstride, cfg.tstride, cfg.grid, cfg.label_dim, cfg.depth) == (16, 16, (8, 6), 3, 2)
    assert model.info.extra["pretraining"] == "ssast" and model.info.labels is None
    saved = torch.load(exp / "models" / "last.pt", weights_only=True)["model"]
    for key in ("v.pos_embed", "v.blocks.1.mlp.fc2.weight", "v.norm.bias"):
        torch.testing.assert_close(model.state_dict()[key], saved["model." + key], rtol=0, atol=0)
    statistics = torch.load(exp / "models" / "last.pt", weights_only=True)["state"]
    assert (model.info.dataset_mean, model.info.dataset_std) == (statistics["mean"], statistics["std"])


def test_train_takes_it_as_the_trunk(run, tmp_path):
    _, toy, exp, _ = run
    path = exp / "models" / "pretrained.safetensors"
    pretrained = load_model(path).state_dict()
    args = base_args(toy, tmp_path / "tuned", n_epochs=1, lr=1e-6, batch_size=6, audioset_pretrain=str(path),
                     fstride=10, tstride=10)  # fmt: skip
    ok(run_main("train", *as_flags(args), timeout=240))
    tuned = load_model(tmp_path / "tuned" / "models" / "best_audio_model.safetensors").state_dict()
    for key in ("v.blocks.0.attn.qkv.weight", "v.norm.weight", "v.patch_embed.proj.weight"):
        torch.testing.assert_close(tuned[key], pretrained[key], rtol=0, atol=1e-4)
    # positions: the 8x6 pretraining grid interpolated to the 12x9 grid of strides 10/10
    assert tuned["v.pos_embed"].shape == (1, 2 + 12 * 9, 192)
    torch.testing.assert_close(tuned["v.pos_embed"][:, :2], pretrained["v.pos_embed"][:, :2], rtol=0, atol=1e-4)


def test_a_recipe_takes_it_as_the_trunk(run, tmp_path):
    """``recipe folder --set preset=scratch audioset_pretrain=PATH``: the from-scratch preset's
    tiny model (what the pretraining above trained) starts from the pretrained trunk."""
    _, _, exp, _ = run
    path = exp / "models" / "pretrained.safetensors"
    root = tmp_path / "mine"
    write_class_folders(root)
    out = tmp_path / "tuned"
    ok(run_main("recipe", "folder", root, "--exp-dir", out, "--set", "preset=scratch", f"audioset_pretrain={path}",
                "n_epochs=1", "lr=1e-7", "batch_size=8", "progress=false", "device=cpu", timeout=300))  # fmt: skip
    recorded = json.loads((out / "recipe.json").read_text())
    assert recorded["preset"] == "scratch" and recorded["train"]["audioset_pretrain"] == str(path)
    tuned = load_model(out / "models" / "best_audio_model.safetensors").state_dict()
    pretrained = load_model(path).state_dict()
    for key in ("v.blocks.1.attn.qkv.weight", "v.patch_embed.proj.weight", "v.norm.bias"):
        torch.testing.assert_close(tuned[key], pretrained[key], rtol=0, atol=1e-4)


def test_convert_writes_the_ssast_layout(run, tmp_path):
    _, _, exp, _ = run
    path = exp / "models" / "pretrained.safetensors"
    out = tmp_path / "SSAST-Tiny-Patch-ours.pth"
    ok(run_main("convert", path, out, "--format", "ssast"))
    ours = torch.load(out, weights_only=True)
    published = ssast_state(dim=192, depth=2, input_fdim=128, input_tdim=LENGTH)
    assert set(ours) == set(published)
    for key, tensor in published.items():
        assert ours[key].shape == tensor.shape and ours[key].dtype == tensor.dtype, key
    assert (int(ours["module.p_input_fdim"]), int(ours["module.p_input_tdim"])) == (128, LENGTH)
    raw = read_checkpoint(path)
    torch.testing.assert_close(ours["module.cpredlayer.2.weight"], raw.pretraining["cpredlayer.2.weight"], rtol=0, atol=0)
    # read back as a published SSAST file: the same trunk
    again, first = load_model(out, label_dim=3).state_dict(), load_model(path, label_dim=3).state_dict()
    for key in first:
        if key.startswith("v."):
            torch.testing.assert_close(again[key], first[key], rtol=0, atol=0)
    # a published SSAST file converts too (its own layout back), a fine-tuned model does not
    published_path = tmp_path / "SSAST-Tiny-Patch-400.pth"
    torch.save(ssast_state(), published_path)
    ok(run_main("convert", published_path, tmp_path / "back.pth", "--format", "ssast"))
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    original = ssast_state()
    assert set(back) == set(original)
    torch.testing.assert_close(back["module.v.pos_embed"], original["module.v.pos_embed"], rtol=0, atol=0)
    torch.testing.assert_close(back["module.mask_embed"], original["module.mask_embed"], rtol=0, atol=0)
    tuned = tmp_path / "tuned.safetensors"
    ok(run_main("convert", path, tuned, "--label-dim", "3"))  # ours, without the pretraining parts
    refused = run_main("convert", tuned, tmp_path / "no.pth", "--format", "ssast")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert str(tuned) in refused.stderr and "not an SSAST pretraining checkpoint" in refused.stderr
    assert not (tmp_path / "no.pth").exists()


def test_resume_continues_where_an_uninterrupted_run_would_end(run, tmp_path):
    root, toy, _, _ = run
    data = [root / "recordings", toy / "train.json"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    ok(run_main("pretrain", *data, "--exp-dir", whole, *TINY, "--n-epochs", "2", "--dataset-mean", "-5",
                "--dataset-std", "4", timeout=300))  # fmt: skip
    ok(run_main("pretrain", *data, "--exp-dir", parts, *TINY, "--n-epochs", "1", "--dataset-mean", "-5",
                "--dataset-std", "4", timeout=300))  # fmt: skip
    changed = run_main("pretrain", *data, "--exp-dir", parts, *TINY[:-2], "--lr", "5e-4", "--n-epochs", "2",
                       "--dataset-mean", "-5", "--dataset-std", "4")  # fmt: skip
    assert changed.returncode == 2 and "other settings (lr" in changed.stderr
    ok(run_main("pretrain", *data, "--exp-dir", parts, *TINY, "--n-epochs", "2", "--dataset-mean", "-5",
                "--dataset-std", "4", timeout=300))  # fmt: skip
    assert "resuming" in (parts / "log.txt").read_text()
    a = torch.load(whole / "models" / "last.pt", weights_only=True)
    b = torch.load(parts / "models" / "last.pt", weights_only=True)
    assert len(b["state"]["rows"]) == 2  # (the probe column is NaN: no probe)
    assert [r[:6] for r in a["state"]["rows"]] == [r[:6] for r in b["state"]["rows"]]
    for key, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][key], tensor, rtol=0, atol=0)


def test_runs_under_torchrun(run, tmp_path):
    """Two CPU processes: each draws its own crops and masks, the epoch's figures are gathered
    from both, rank 0 writes."""
    root, toy, _, _ = run
    exp = tmp_path / "ddp"
    ok(run_torchrun("pretrain", root / "recordings", toy / "train.json", "--exp-dir", exp, *TINY, "--n-epochs", "2"))
    with open(exp / "pretrain_result.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert load_model(exp / "models" / "pretrained.safetensors", label_dim=2).config.grid == (8, 6)


def test_bad_inputs_are_one_line(tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    out = run_main("pretrain", empty, "--exp-dir", tmp_path / "exp")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert str(empty) in out.stderr and "no audio files" in out.stderr
    write_audio(empty / "a.wav", noise(0.5))
    out = run_main("pretrain", empty, "--exp-dir", tmp_path / "exp", "--probe-train", empty)
    assert out.returncode == 2 and "--probe-valid" in out.stderr
