"""Training faster: structured patchout and length bucketing, on real files and the real CLI."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import run_main
from factories import TOY_CLASSES, as_flags, toy_clip, write_audio, write_toy_dataset
from factories import toy_train_settings as base_args

from ast_audio import ConfigError
from ast_audio.data import read_datafile
from ast_audio.data.dataset import AudioDataset, EpochSampler
from ast_audio.features.pipeline import fit_waveform, load_clip
from ast_audio.model import ASTConfig, ASTModel
from ast_audio.train import Run, TrainConfig, bucket_length, train


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), per_class_train=6, per_class_val=3)


@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    """A toy dataset of clips from 0.2 to 1 s (20 to 98 frames), some at 8 kHz, and its lengths in seconds."""
    root = write_toy_dataset(tmp_path_factory.mktemp("varied"), per_class_train=1, per_class_val=3)
    rng = np.random.default_rng(1)
    data, seconds = [], []
    for i in range(24):
        kind, length = i % 3, float(rng.choice([0.2, 0.3, 0.5, 0.7, 1.0]))
        rate = 8000 if i % 5 == 0 else 16000
        path = write_audio(root / "audio" / f"varied_{i}.wav", toy_clip(kind, rng, rate, length), rate)
        data.append({"wav": str(path), "labels": TOY_CLASSES[kind][0]})
        seconds.append(length)
    (root / "train.json").write_text(json.dumps({"data": data}))
    return root, seconds


def results(exp: Path) -> np.ndarray:
    return np.loadtxt(exp / "result.csv", delimiter=",", ndmin=2)


# --------------------------------------------------------------------------- patchout in training


def test_patchout_training_resumes_exactly_and_refuses_other_patchout(toy, tmp_path):
    settings = dict(patchout_f=2, patchout_t=0.4)
    whole = tmp_path / "whole"
    out = run_main("train", *as_flags(base_args(toy, whole, n_epochs=2, **settings)), timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    saved = json.loads((whole / "config.json").read_text())["config"]
    assert saved["patchout_f"] == 2 and saved["patchout_t"] == 0.4
    # one epoch, then the same command with two: the patchout of every step is drawn from
    # (seed, step), so the resumed run ends where the uninterrupted one did
    split = tmp_path / "split"
    assert run_main("train", *as_flags(base_args(toy, split, n_epochs=1, **settings)), timeout=240).returncode == 0
    assert run_main("train", *as_flags(base_args(toy, split, n_epochs=2, **settings)), timeout=240).returncode == 0
    np.testing.assert_array_equal(results(split), results(whole))
    # without patchout the same run trains differently (patchout did act)
    plain = tmp_path / "plain"
    train(TrainConfig(**base_args(toy, plain, n_epochs=1)))
    assert results(plain)[0, 5] != results(whole)[0, 5]  # train loss of epoch 1
    refused = run_main("train", *as_flags(base_args(toy, split, n_epochs=3, patchout_f=2, patchout_t=0.5)),
                      timeout=60)  # fmt: skip
    assert refused.returncode == 2
    assert "holds a run with other settings (patchout_t: 0.4 there, 0.5 now)" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.parametrize(("flags", "message"), [
    (["--patchout-t", "6"], r"--patchout-t 6 drops 6 of the 6 time columns: at least one must stay"),
    (["--patchout-f", "1.5"], r"patchout_f must be a count \(0, 1, 2...\) or a fraction in \(0, 1\), got 1.5"),
    (["--patchout-f", "two"], r"expected a count like 4 or a fraction like 0.4, got 'two'"),
])  # fmt: skip
def test_bad_patchout_is_a_one_line_error(toy, tmp_path, flags, message):
    out = run_main("train", *as_flags(base_args(toy, tmp_path / "exp")), *flags, timeout=60)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines and __import__("re").search(message, lines[-1]), out.stderr
    assert "Traceback" not in out.stderr


def test_patchout_and_bucketing_from_a_toml_config(toy, tmp_path):
    from ast_audio.cli.train import train_config_from_args

    path = tmp_path / "run.toml"
    path.write_text("[train]\npatchout_f = 3\npatchout_t = 0.25\nbucket_by_length = true\n")
    cfg = train_config_from_args(SimpleNamespace(config=str(path), **{n: None for n in TrainConfig.field_names()}))
    assert (cfg.patchout_f, cfg.patchout_t, cfg.bucket_by_length) == (3, 0.25, True)
    assert (TrainConfig().patchout_f, TrainConfig().patchout_t, TrainConfig().bucket_by_length) == (0, 0, False)
    from ast_audio.recipes import resolve_config

    train_settings = resolve_config("esc50", ["patchout_f=4", "patchout_t=0.4", "bucket_by_length=true"])[0]
    assert (train_settings["patchout_f"], train_settings["patchout_t"], train_settings["bucket_by_length"]) == (4, 0.4, True)
    assert isinstance(train_settings["patchout_f"], int)
    with pytest.raises(ConfigError, match="--set patchout_t=lots: expected a number"):
        resolve_config("esc50", ["patchout_t=lots"])


# --------------------------------------------------------------------------- length bucketing


def test_natural_frames_come_from_the_headers_and_equal_the_decoded_frames(varied):
    root, _ = varied
    settings = TrainConfig(**base_args(root, root / "unused"))
    from ast_audio.train import contract_of

    contract = contract_of(settings)
    dataset = AudioDataset(read_datafile(root / "train.json", root / "labels.csv"), contract)
    decoded = [fit_waveform(load_clip(e.wav, contract)[0], contract)[1] for e in dataset.datafile.entries]
    assert dataset.natural_frames() == decoded
    assert min(decoded) < 30 and max(decoded) == 98  # 0.2 s and 1 s clips


def test_bucketed_epochs_draw_every_clip_once_in_batches_of_similar_length():
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 1000, size=203).tolist()
    plain = EpochSampler(203, seed=5)
    sampler = EpochSampler(203, seed=5, lengths=lengths, batch_size=4)
    spreads = []
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        plain.set_epoch(epoch)
        draws = list(sampler)
        assert sorted(d.index for d in draws) == list(range(203))  # every clip exactly once
        assert [d.position for d in draws] == list(range(203)) and all(d.epoch == epoch for d in draws)
        assert draws == list(sampler)  # the same again for the same (seed, epoch)
        batches = [[lengths[d.index] for d in draws[k : k + 4]] for k in range(0, 203, 4)]
        spreads.append(np.mean([max(b) - min(b) for b in batches]))
        shuffled = [[lengths[d.index] for d in list(plain)[k : k + 4]] for k in range(0, 203, 4)]
        assert spreads[-1] < np.mean([max(b) - min(b) for b in shuffled]) / 4  # much closer lengths
        # the order of batches is shuffled, not sorted from short to long
        assert sorted(max(b) for b in batches[:-1]) != [max(b) for b in batches[:-1]]
    sampler.set_epoch(1)
    first = list(sampler)
    sampler.set_epoch(2)
    assert list(sampler) != first  # another epoch, another grouping
    # two processes: the same global grouping, each rank's consecutive draws from one global batch
    ranks = [EpochSampler(203, seed=5, rank=r, world=2, lengths=lengths, batch_size=4) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(1)
    per_rank = [list(s) for s in ranks]
    everything = sorted((d for p in per_rank for d in p), key=lambda d: d.position)
    assert [d.position for d in everything] == list(range(204))  # 203 wrapped to 2 x 102
    counts = Counter(d.index for d in everything)
    assert set(counts) == set(range(203)) and sorted(counts.values())[-2:] == [1, 2]
    for k in range(0, len(per_rank[0]) - 1, 2):
        together = {per_rank[0][k].position // 4, per_rank[0][k + 1].position // 4,
                    per_rank[1][k].position // 4, per_rank[1][k + 1].position // 4}  # fmt: skip
        assert len(together) == 1
    with pytest.raises(ConfigError, match="batch size divisible"):
        EpochSampler(203, seed=5, world=2, lengths=lengths, batch_size=3)


def test_a_bucketed_batch_is_cut_to_its_longest_clip_in_whole_patch_columns():
    config = ASTConfig(input_tdim=100, fstride=16, tstride=16, model_size="tiny224", depth=1)
    assert [bucket_length(n, config) for n in (0, 16, 17, 32, 33, 47, 64, 65, 97, 98, 100)] == \
        [16, 16, 32, 32, 48, 48, 64, 80, 100, 100, 100]  # fmt: skip  (96 < 97: 6 columns end at 96)
    model = ASTModel.from_config(config)
    cfg = TrainConfig(bucket_by_length=True, tstride=16, fstride=16, audio_length=100)
    run = SimpleNamespace(cfg=cfg, model=model, patchout=(0, 0))
    x = torch.randn(3, 100, 128)
    cut, options = Run.step_input(run, x, torch.tensor([20, 40, 33]), step=0)
    assert cut.shape == (3, 48, 128) and torch.equal(cut, x[:, :48])
    assert options == {"any_length": True, "positions": "start"}
    full, options = Run.step_input(run, x, torch.tensor([98, 3, 50]), step=0)
    assert full.shape == (3, 100, 128) and options == {}
    # with patchout too: the columns dropped scale with the cut grid (3 columns of 48 frames)
    run.patchout = (2, 3)  # of the full 8x6 grid
    _, options = Run.step_input(run, x, torch.tensor([20, 40, 33]), step=7)
    rows, cols = options["patchout"]
    assert len(rows) == 6 and len(cols) == 3 - round(3 * 3 / 6)
    again = Run.step_input(run, x, torch.tensor([20, 40, 33]), step=7)[1]["patchout"]
    assert torch.equal(again[0], rows) and torch.equal(again[1], cols)  # drawn from (seed, step)
    other = Run.step_input(run, x, torch.tensor([20, 40, 33]), step=8)[1]["patchout"]
    assert not torch.equal(other[0], rows) or not torch.equal(other[1], cols)


def test_bucketed_training_runs_cut_batches_and_evaluates_at_full_length(varied, tmp_path, monkeypatch):
    root, _ = varied
    calls = []
    forward = ASTModel.forward

    def recording(self, x, **kwargs):
        calls.append((torch.is_grad_enabled(), x.shape[1], kwargs.get("positions", "centre")))
        return forward(self, x, **kwargs)

    monkeypatch.setattr(ASTModel, "forward", recording)
    state = train(TrainConfig(**base_args(root, tmp_path / "exp", n_epochs=2, batch_size=4, bucket_by_length=True)))
    assert state.epoch == 2
    training = [c for c in calls if c[0]]
    evaluation = [c for c in calls if not c[0]]
    assert len(training) == 2 * 24 // 4
    assert all(length < 100 and positions == "start" for _, length, positions in training if length < 100)
    assert any(length <= 48 for _, length, _ in training)  # short batches ran short
    assert {length for _, length, _ in training} <= {bucket_length(n, ASTConfig(input_tdim=100, fstride=16,
                                                                                tstride=16)) for n in range(101)}
    assert evaluation and all(length == 100 and p == "centre" for _, length, p in evaluation)  # eval untouched


def test_bucketing_with_shards_is_refused(toy, tmp_path):
    out = run_main("train", *as_flags(base_args(toy, tmp_path / "exp", data_train=str(tmp_path / "s-{0..1}.tar"))),
                  "--bucket-by-length", timeout=60)  # fmt: skip
    assert out.returncode == 2 and "--bucket-by-length needs a datafile" in out.stderr
    assert "Traceback" not in out.stderr
