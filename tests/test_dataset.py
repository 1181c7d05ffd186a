import os

import numpy as np
import pytest
import torch
from factories import write_audio, write_toy_dataset

from ast_audio.data import read_datafile
from ast_audio.data.dataset import AudioDataset, Draw, EpochSampler, norm_stats
from ast_audio.features import InputContract, file_to_input
from ast_audio.features.pipeline import Augmentation


def features_of(dataset: AudioDataset, *keys) -> torch.Tensor:
    """Model input of the given draws, through the dataset's own collate."""
    return dataset.model_input(dataset.collate([dataset[k] for k in keys]), "cpu")[0]


def test_items_use_the_one_feature_path(tmp_path):
    root = write_toy_dataset(tmp_path, 2, 1)
    df = read_datafile(root / "val.json", root / "labels.csv")
    conf = InputContract(target_length=120, mean=-5.0, std=3.0)
    dataset = AudioDataset(df, conf)
    features, target = features_of(dataset, 1)[0], dataset[1]["target"]
    want = file_to_input(df.entries[1].wav, conf)
    torch.testing.assert_close(features, want)
    assert target.tolist() == [0.0, 1.0, 0.0] and features.shape == (120, 128)


def test_augmentation_is_seeded_by_the_draw(tmp_path):
    root = write_toy_dataset(tmp_path, 4, 1)
    df = read_datafile(root / "train.json", root / "labels.csv")
    conf, aug = InputContract(target_length=100), Augmentation(freqm=20, timem=20, mixup=1.0, noise=True)
    a, b = AudioDataset(df, conf, aug, seed=3), AudioDataset(df, conf, aug, seed=3)
    first = Draw(5, 1, 0)
    x5 = features_of(a, first)
    torch.testing.assert_close(features_of(b, first), x5)  # the same draw: the same augmentation
    t5 = a[first]["target"]
    assert abs(float(t5.sum()) - 1.0) < 1e-6 and (t5 > 0).sum() >= 1  # mixed labels sum to one
    assert not torch.equal(features_of(a, Draw(5, 2, 0)), x5)  # another epoch
    assert not torch.equal(features_of(a, Draw(5, 1, 7)), x5)  # a second draw of the clip in the same epoch
    assert not torch.equal(a[Draw(5, 1, 7)]["masks"], a[first]["masks"])
    assert not torch.equal(features_of(AudioDataset(df, conf, aug, seed=4), first), x5)  # another seed


def test_norm_stats_are_those_of_the_unnormalised_inputs(tmp_path):
    root = write_toy_dataset(tmp_path, 2, 1)
    df = read_datafile(root / "train.json", root / "labels.csv")
    conf = InputContract(target_length=100)
    mean, std = norm_stats(AudioDataset(df, conf))
    raw = torch.stack([file_to_input(e.wav, conf, normalized=False) for e in df.entries])
    assert abs(mean - raw.double().mean().item()) < 1e-6 and abs(std - raw.double().std(unbiased=False).item()) < 1e-5


def test_epoch_sampler_shards_and_weights():
    shards = [list(EpochSampler(10, seed=1, rank=r, world=3)) for r in range(3)]
    assert all(len(s) == 4 for s in shards) and {d.index for d in sum(shards, [])} == set(range(10))
    positions = sorted(d.position for d in sum(shards, []))
    assert positions == list(range(12))  # every draw of the epoch (10 + 2 wrapped) has its own place
    weights = np.array([1.0] * 9 + [91.0])  # index 9 carries 91 % of the mass
    drawn = []
    sampler = EpochSampler(10, seed=0, weights=weights)
    for epoch in range(200):
        sampler.set_epoch(epoch)
        drawn += [d.index for d in sampler]
    assert abs(np.mean(np.array(drawn) == 9) - 0.91) < 0.02
    sampler.set_epoch(0)
    assert [d.index for d in sampler] != drawn[10:20]  # epochs differ
    assert {d.epoch for d in sampler} == {0}


def batches(dataset: AudioDataset, batch_size: int = 3, epoch: int = 0):
    sampler = EpochSampler(len(dataset), seed=0)
    sampler.set_epoch(epoch)
    return [dataset.model_input(batch, "cpu") for batch in dataset.loader(batch_size, sampler)]


@pytest.mark.parametrize("target_length", [80, 120])  # one-second clips: cut (98 > 80) and padded
def test_device_features_equal_loader_features(tmp_path, target_length):
    root = write_toy_dataset(tmp_path, 3, 1)
    df = read_datafile(root / "train.json", root / "labels.csv")
    conf = InputContract(target_length=target_length, mean=-5.0, std=3.0)
    aug = Augmentation(freqm=30, timem=40, mixup=0.5)
    loader_side = AudioDataset(df, conf, aug, seed=7)
    device_side = AudioDataset(df, conf, aug, seed=7, fbank_on="device")
    item = device_side[0]
    assert item["waveform"].shape == (conf.samples,) and set(item) >= {"frames", "masks", "target"}
    assert "features" in loader_side.collate([item]) and "features" not in device_side.collate([item])
    want, got = batches(loader_side, epoch=2), batches(device_side, epoch=2)
    masked = 0
    for (x, y), (x2, y2) in zip(want, got, strict=True):
        torch.testing.assert_close(x2, x, atol=2e-5, rtol=0)
        torch.testing.assert_close(y2, y)
        masked += int((x == (0 - conf.mean) / (2 * conf.std)).sum())
    assert masked > 0  # SpecAugment (and, at 120 frames, padding) did act on these batches


def test_device_noise_is_seeded_bounded_and_rolled(tmp_path):
    root = write_toy_dataset(tmp_path, 2, 1)
    df = read_datafile(root / "train.json", root / "labels.csv")
    conf = InputContract(target_length=100)
    clean = AudioDataset(df, conf, Augmentation(freqm=10, timem=10), seed=1, fbank_on="device")
    noisy = AudioDataset(df, conf, Augmentation(freqm=10, timem=10, noise=True), seed=1, fbank_on="device")
    raw = next(iter(noisy.loader(len(noisy))))
    x, _ = noisy.model_input(raw, "cpu")
    again, _ = noisy.model_input(raw, "cpu")
    torch.testing.assert_close(again, x)  # the noise comes from per-clip seeds
    plain, _ = clean.model_input(next(iter(clean.loader(len(clean)))), "cpu")  # the same draws, without noise
    for b, shift in enumerate(raw["roll"][:, 0].tolist()):
        diff = torch.roll(x[b], -shift, dims=0) - plain[b]
        scale = float(raw["noise"][b, 0])
        assert 0 <= scale <= 0.1 and diff.min() >= -1e-6 and diff.max() <= scale + 1e-6
        assert diff.std() > 0.1 * scale  # noise, not a constant offset


def test_waveform_cache_gives_the_same_samples_without_decoding(tmp_path, monkeypatch, caplog):
    import ast_audio.audio.cache as cache_module
    from ast_audio.audio.io import load_audio

    root = write_toy_dataset(tmp_path, 2, 1)
    df = read_datafile(root / "train.json", root / "labels.csv")
    rng = np.random.default_rng(0)
    write_audio(df.entries[0].wav, rng.uniform(-0.5, 0.5, 44100).astype(np.float32), 44100)  # resampled on load
    conf, aug = InputContract(target_length=100), Augmentation(mixup=0.5)
    plain = [AudioDataset(df, conf, aug, seed=2)[i] for i in range(len(df))]
    cached = AudioDataset(df, conf, aug, seed=2, cache_dir=str(tmp_path / "cache"))
    first = [cached[i] for i in range(len(df))]
    entries = sorted((tmp_path / "cache").rglob("*.npy"))
    assert len(entries) == len(df)
    calls = []
    monkeypatch.setattr(cache_module, "load_audio", lambda *a, **k: calls.append(a) or load_audio(*a, **k))
    second = [cached[i] for i in range(len(df))]
    assert calls == []  # every clip came from the cache
    for a, b, c in zip(plain, first, second, strict=True):
        assert torch.equal(a["waveform"], b["waveform"]) and torch.equal(a["waveform"], c["waveform"])
        assert torch.equal(a["target"], c["target"])
    # a replaced file is decoded again; a damaged entry is decoded again and rewritten
    write_audio(df.entries[1].wav, np.zeros(16000, dtype=np.float32), 16000)
    os.utime(df.entries[1].wav, ns=(1, 1))
    assert float(cached._waveform(1)[0].abs().max()) == 0.0 and len(calls) == 1
    entry = cached._cache.entry(df.entries[0].wav, 16000)
    entry.write_bytes(b"not numpy")
    torch.testing.assert_close(cached._waveform(0)[0], load_audio(df.entries[0].wav, 16000), rtol=0, atol=0)
    assert len(calls) == 2 and "unreadable cache entry" in caplog.text
    assert np.load(entry).shape == (16000,)  # rewritten
