import numpy as np
import pytest
import torch

from ast_audio.features.augment import (
    mask_bounds,
    mix_targets,
    mix_waveforms,
    mixup_lambda,
    noise_and_roll,
    spec_augment,
)


def test_spec_augment_masks_one_band_per_axis_with_zeros():
    x = torch.rand(8, 100, 128) + 1.0  # no zeros before masking
    out = spec_augment(x, freqm=24, timem=40, rng=np.random.default_rng(0))
    for clip, orig in zip(out, x, strict=True):
        zero = clip == 0
        cols = zero.all(0).nonzero().flatten()  # masked frequency bins
        rows = zero.all(1).nonzero().flatten()  # masked frames
        for idx, limit in ((cols, 24), (rows, 40)):
            assert len(idx) < limit
            if len(idx):
                assert (idx.diff() == 1).all()  # one contiguous band
        keep = ~zero
        torch.testing.assert_close(clip[keep], orig[keep])
        assert zero.sum() == len(rows) * 128 + len(cols) * 100 - len(rows) * len(cols)


def test_spec_augment_widths_are_uniform_below_the_limit():
    start, end = mask_bounds(np.random.default_rng(1), 128, 48, 20000)
    width = end - start
    assert width.min() >= 0 and width.max() <= 47 and end.max() <= 128
    assert abs(width.mean() - 23.5) < 0.5  # integers 0..47, mean 23.5
    assert abs(np.bincount(width, minlength=48) / 20000 - 1 / 48).max() < 0.01


def test_spec_augment_off_and_single_clip():
    x = torch.rand(50, 64)
    torch.testing.assert_close(spec_augment(x, 0, 0, np.random.default_rng(0)), x)
    assert spec_augment(x, 10, 10, np.random.default_rng(0)).shape == (50, 64)


def test_mixup_waveforms_and_targets():
    a = torch.ones(100) + torch.linspace(0, 1, 100)
    b = torch.linspace(-1, 1, 60)
    mixed = mix_waveforms(a, b, 0.7)
    a0, b0 = a - a.mean(), torch.nn.functional.pad(b - b.mean(), (0, 40))
    expected = 0.7 * a0 + 0.3 * b0
    torch.testing.assert_close(mixed, expected - expected.mean())
    assert mix_waveforms(a, torch.rand(300), 0.5).shape == (100,)
    np.testing.assert_allclose(mix_targets(np.array([1.0, 0]), np.array([0, 1.0]), 0.7), [0.7, 0.3])
    lams = [mixup_lambda(np.random.default_rng(i)) for i in range(2000)]
    assert abs(np.mean(lams) - 0.5) < 0.01 and abs(np.var(lams) - 1 / 84) < 0.002  # Beta(10, 10)


def test_noise_and_roll():
    x = torch.zeros(4, 30, 8)
    x[:, 0, :] = 5.0  # a marker frame to follow the roll
    out = noise_and_roll(x, np.random.default_rng(3))
    for clip in out:
        marker = int((clip[:, 0] > 4).nonzero()[0])
        shift = marker if marker < 20 else marker - 30
        assert -10 <= shift < 10
        rest = torch.cat([clip[:marker], clip[marker + 1 :]])
        assert rest.min() >= 0 and rest.max() < 0.1


@pytest.mark.parametrize("dim", [2, 3])
def test_same_seed_same_augmentation(dim):
    x = torch.rand(*((3,) if dim == 3 else ()), 40, 16)
    a = spec_augment(x, 8, 8, np.random.default_rng(42))
    b = spec_augment(x, 8, 8, np.random.default_rng(42))
    torch.testing.assert_close(a, b)
