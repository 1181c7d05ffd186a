import numpy as np
import torch
from factories import write_toy_dataset

from ast_audio.data import read_datafile
from ast_audio.dataset import AudioConf, AudioDataset, norm_stats
from ast_audio.features import FeatureConfig, file_to_input
from ast_audio.train import EpochSampler


def test_items_use_the_one_feature_path(tmp_path):
    root = write_toy_dataset(tmp_path, 2, 1)
    df = read_datafile(root / "val.json", root / "labels.csv")
    conf = AudioConf(target_length=120, mean=-5.0, std=3.0)
    features, target = AudioDataset(df, conf)[1]
    want = file_to_input(df.entries[1].wav, FeatureConfig(target_length=120, mean=-5.0, std=3.0))
    torch.testing.assert_close(features, want)
    assert target.tolist() == [0.0, 1.0, 0.0] and features.shape == (120, 128)


def test_augmentation_is_seeded_by_epoch_and_index(tmp_path):
    root = write_toy_dataset(tmp_path, 4, 1)
    df = read_datafile(root / "train.json", root / "labels.csv")
    conf = AudioConf(target_length=100, freqm=20, timem=20, mixup=1.0, noise=True)
    a, b = AudioDataset(df, conf, seed=3), AudioDataset(df, conf, seed=3)
    torch.testing.assert_close(a[5][0], b[5][0])
    x5, t5 = a[5]
    assert abs(float(t5.sum()) - 1.0) < 1e-6 and (t5 > 0).sum() >= 1  # mixed labels sum to one
    a.set_epoch(1)
    assert not torch.equal(a[5][0], x5)


def test_norm_stats_are_those_of_the_unnormalised_inputs(tmp_path):
    root = write_toy_dataset(tmp_path, 2, 1)
    df = read_datafile(root / "train.json", root / "labels.csv")
    conf = AudioConf(target_length=100)
    mean, std = norm_stats(AudioDataset(df, conf))
    raw = torch.stack([file_to_input(e.wav, FeatureConfig(target_length=100), normalized=False) for e in df.entries])
    assert abs(mean - raw.double().mean().item()) < 1e-6 and abs(std - raw.double().std(unbiased=False).item()) < 1e-5


def test_epoch_sampler_shards_and_weights():
    shards = [list(EpochSampler(10, seed=1, rank=r, world=3)) for r in range(3)]
    assert all(len(s) == 4 for s in shards) and set(sum(shards, [])) == set(range(10))
    weights = np.array([1.0] * 9 + [91.0])  # index 9 carries 91 % of the mass
    drawn = []
    sampler = EpochSampler(10, seed=0, weights=weights)
    for epoch in range(200):
        sampler.set_epoch(epoch)
        drawn += list(sampler)
    assert abs(np.mean(np.array(drawn) == 9) - 0.91) < 0.02
    sampler.set_epoch(0)
    assert list(sampler) != drawn[10:20]  # epochs differ
