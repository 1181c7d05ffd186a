"""Kaldi filterbanks against independent references, batching, devices, and the input path."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from factories import write_audio

import ast_audio.features.kaldi as kaldi
from ast_audio.audio.io import load_audio
from ast_audio.errors import ConfigError
from ast_audio.features import (
    InputContract,
    fbank,
    file_to_input,
    frame_sizes,
    mel_banks,
    normalize,
    pad_or_cut,
    waveform_to_input,
)
from ast_audio.features.presets import PRESETS

RATES = [8000, 16000, 22050, 44100, 48000]


def real_audio(tmp_path, sample_rate: int, seconds: float = 2.0, seed: int = 0) -> torch.Tensor:
    """Tones, a chirp and noise, written to a 16-bit wav and read back as the loader returns it."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    x = (
        0.3 * np.sin(2 * np.pi * 440 * t)
        + 0.1 * np.sin(2 * np.pi * 3000 * t) * (t > seconds / 2)
        + 0.2 * np.sin(2 * np.pi * (100 + sample_rate / 4 * t / seconds) * t)
        + 0.05 * rng.standard_normal(t.size)
    )
    path = tmp_path / f"real_{sample_rate}_{seed}.wav"
    write_audio(path, x.astype(np.float32), sample_rate, subtype="PCM_16")
    return load_audio(path, sample_rate=None)


# --- independent references -------------------------------------------------------------


def hf_reference(x: torch.Tensor, sample_rate: int, bins: int) -> np.ndarray:
    """Hugging Face's NumPy Kaldi path (``transformers.audio_utils``, float64 inside) at any rate."""
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    window_size, window_shift, fft_size = frame_sizes(sample_rate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty filters at 8 kHz / 128 bins
        mel = mel_filter_bank(
            num_frequency_bins=fft_size // 2 + 1, num_mel_filters=bins, min_frequency=20,
            max_frequency=sample_rate / 2, sampling_rate=sample_rate, norm=None, mel_scale="kaldi",
            triangularize_in_mel_space=True,
        )  # fmt: skip
    return spectrogram(
        x.numpy().astype(np.float32), window_function(window_size, "hann", periodic=False),
        frame_length=window_size, hop_length=window_shift, fft_length=fft_size, power=2.0, center=False,
        preemphasis=0.97, mel_filters=mel, log_mel="log", mel_floor=1.192092955078125e-07, remove_dc_offset=True,
    ).T  # fmt: skip


U32 = np.finfo(np.float32).eps / 2  # float32 unit roundoff


def float32_log_mel_bound(x: torch.Tensor, sample_rate: int, bins: int) -> np.ndarray:
    """Per element, how far a float32 log-mel filterbank may be from the exact one, from
    the arithmetic alone (no figure seen on one machine): the frames' rounding is a few
    ulps per sample; a radix-2 FFT of size N adds at most ~log2(N) roundings, each bounded
    by the magnitudes it adds, so ``|dX_k| <= 2 log2(N) u sum|x| + 4 u |X_k|``; then
    ``|dP_k| <= 2 |X_k| dX + dX^2``, the mel sum adds ``K u`` relative, and the log turns
    ``dE/E`` into ``-log(1 - dE/E)``. Large only in the weakest bins of a frame, where the
    float32 result is not determined better than this by any FFT kernel (AVX2, AVX-512 or
    AMX: their rounding differs, the bound holds for all)."""
    window_size, window_shift, fft_size = frame_sizes(sample_rate)
    frames = x.double().unfold(0, window_size, window_shift)  # (T, L)
    frames = frames - frames.mean(1, keepdim=True)
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
    frames = (frames - 0.97 * previous) * torch.hann_window(window_size, periodic=False, dtype=torch.float64)
    magnitude = torch.fft.rfft(frames, n=fft_size).abs()  # (T, K) exact to float64
    d_x = 2 * np.log2(fft_size) * U32 * frames.abs().sum(1, keepdim=True) + 4 * U32 * magnitude
    banks = mel_banks(bins, fft_size, sample_rate).double()  # (K, M)
    energy = (magnitude**2) @ banks  # (T, M)
    d_energy = (2 * magnitude * d_x + d_x**2) @ banks + banks.shape[0] * U32 * energy
    floor = torch.finfo(torch.float32).eps
    relative = (d_energy / energy.clamp_min(floor)).numpy()
    bound = np.where(relative < 0.5, -np.log1p(-np.minimum(relative, 0.5)), np.inf)
    return bound + 1e-6  # + the rounding of the float32 log itself (|log E| < 20)


def knf_reference(x: torch.Tensor, sample_rate: int, bins: int) -> np.ndarray:
    """The C++ ``kaldi-native-fbank`` (float32) with AST's options."""
    knf = pytest.importorskip("kaldi_native_fbank")
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = sample_rate
    opts.frame_opts.dither = 0.0
    opts.frame_opts.window_type = "hanning"
    opts.mel_opts.num_bins = bins
    opts.htk_compat = True
    opts.use_energy = False
    online = knf.OnlineFbank(opts)
    online.accept_waveform(sample_rate, x.numpy())
    online.input_finished()
    return np.stack([online.get_frame(i) for i in range(online.num_frames_ready)])


def naive_kaldi_fbank(x: torch.Tensor, sample_rate: int, bins: int) -> torch.Tensor:
    """SPEC section 2 stage by stage, in Kaldi's order, on one clip, no blocks or buffers."""
    window_size, window_shift, fft_size = frame_sizes(sample_rate)
    frames = x.unfold(0, window_size, window_shift)  # (T, L)
    frames = frames - frames.mean(1, keepdim=True)  # DC offset
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)  # first sample uses itself
    frames = frames - 0.97 * previous  # pre-emphasis
    frames = frames * torch.hann_window(window_size, periodic=False, dtype=x.dtype)
    frames = torch.nn.functional.pad(frames, (0, fft_size - window_size))  # (T, N)
    power = torch.fft.rfft(frames).abs() ** 2  # (T, N/2 + 1)
    energies = power @ mel_banks(bins, fft_size, sample_rate).to(x.dtype)  # (T, M)
    return energies.clamp_min(torch.finfo(torch.float32).eps).log()


@pytest.mark.parametrize("sample_rate", RATES)
def test_float32_rounding_follows_kaldi_order(tmp_path, sample_rate):
    """Same stages in the same order give the same float32 frames to the FFT, hence the
    same rounding as torchaudio (whose float32 result differs from the float64 one by up
    to ~1e-3 in the weakest bins; taking another order would add that again)."""
    x = real_audio(tmp_path, sample_rate, seed=2)
    for bins in (64, 128):
        ref = naive_kaldi_fbank(x, sample_rate, bins)
        assert torch.allclose(fbank(x, sample_rate, bins), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("sample_rate", RATES)
@pytest.mark.parametrize("bins", [64, 128])
def test_parity_with_huggingface_numpy(tmp_path, sample_rate, bins):
    x = real_audio(tmp_path, sample_rate)
    ref = hf_reference(x, sample_rate, bins)
    ours = fbank(x, sample_rate, bins).numpy()
    assert ours.shape == ref.shape
    # HF computes in float64; our float32 differs by FFT rounding, largest in the weakest
    # (lowest, pre-emphasised) bins. Bounded per element from the arithmetic (the bound is
    # ~2e-4 in a typical bin, so a wrong stage, off by 1e-2 or more, cannot hide in it).
    bound = float32_log_mel_bound(x, sample_rate, bins)
    assert np.isfinite(bound).mean() > 0.99 and np.median(bound) < 1e-3
    worst = np.unravel_index(np.argmax(np.abs(ours - ref) - bound), ref.shape)
    assert (np.abs(ours - ref) <= bound).all(), f"frame/bin {worst}: {abs(ours - ref)[worst]} > {bound[worst]}"
    assert np.abs(ours - ref).mean() < 1e-5
    # In float64 we compute the same numbers (seen 6e-7, HF rounds its output to float32).
    ours64 = fbank(x.double(), sample_rate, bins).numpy()
    assert np.abs(ours64 - ref).max() < 1e-5


@pytest.mark.parametrize("sample_rate", RATES)
@pytest.mark.parametrize("bins", [64, 80])
def test_parity_with_kaldi_native_fbank(tmp_path, sample_rate, bins):
    x = real_audio(tmp_path, sample_rate, seed=1)
    ref = knf_reference(x, sample_rate, bins)
    ours = fbank(x, sample_rate, bins).numpy()
    assert ours.shape == ref.shape
    # Both are float32 and round differently: knf alone is up to 1.3e-3 from the float64
    # result in the weakest bins (16 kHz, 80 bins, this signal), ours up to 8.6e-4, so
    # against each other the worst seen is 1.8e-3; typical 3e-4, mean 2e-6.
    assert np.abs(ours - ref).max() < 2.5e-3
    assert np.abs(ours - ref).mean() < 1e-5
    ours64 = fbank(x.double(), sample_rate, bins).numpy()
    assert np.abs(ours64 - ref).max() < 2e-3  # knf's float32 rounding only


@pytest.mark.filterwarnings("ignore:At least one mel filter has all zero values")
def test_parity_with_ast_feature_extractor(tmp_path):
    """HF's ``ASTFeatureExtractor`` (its NumPy path, valid at 16 kHz only): same model input."""
    transformers = pytest.importorskip("transformers")
    x = real_audio(tmp_path, 16000, seconds=3.0)
    for cfg in (InputContract(), InputContract.preset("speechcommands")):
        extractor = transformers.ASTFeatureExtractor(
            num_mel_bins=cfg.num_mel_bins, max_length=cfg.target_length, mean=cfg.mean, std=cfg.std
        )
        ref = extractor(x.numpy(), sampling_rate=16000, return_tensors="np")["input_values"][0]
        ours = waveform_to_input(x, cfg).numpy()
        assert ours.shape == ref.shape == (cfg.target_length, 128)
        # HF does not remove the waveform mean; per-frame DC removal makes that moot. It
        # computes in float64: our float64 path agrees to its float32 output rounding ...
        ours64 = waveform_to_input(x.double(), cfg).numpy()
        assert np.abs(ours64 - ref).max() * 2 * cfg.std < 1e-5
        # ... and our float32 path (like torchaudio's) to float32 FFT rounding in the
        # weakest bins: seen 2.1e-3 in log-mel units on this clip, mean 2e-6.
        assert np.abs(ours - ref).max() * 2 * cfg.std < 3e-3
        assert np.abs(ours - ref).mean() * 2 * cfg.std < 1e-5


# --- shapes, batching, dtypes, devices ---------------------------------------------------


@pytest.mark.parametrize(
    ("sample_rate", "sizes"),
    [(8000, (200, 80, 256)), (16000, (400, 160, 512)), (22050, (551, 220, 1024)),
     (44100, (1102, 441, 2048)), (48000, (1200, 480, 2048))],
)  # fmt: skip
def test_frame_sizes(sample_rate, sizes):
    assert frame_sizes(sample_rate) == sizes


@pytest.mark.parametrize("samples", [0, 1, 399, 400, 401, 559, 560, 16000, 16001])
def test_frame_count_and_short_input(samples):
    out = fbank(torch.randn(samples), 16000)
    expected = 0 if samples < 400 else 1 + (samples - 400) // 160
    assert out.shape == (expected, 128)
    assert fbank(torch.randn(3, samples), 16000, 64).shape == (3, expected, 64)


def test_batched_equals_single(tmp_path):
    clips = torch.stack([real_audio(tmp_path, 16000, seconds=3.0, seed=s) for s in range(5)])  # (5, S)
    batched = fbank(clips, 16000)
    assert batched.shape == (5, 298, 128)
    for i in range(5):
        assert torch.allclose(batched[i], fbank(clips[i], 16000), rtol=0, atol=1e-5)


def test_cpu_blocks_do_not_change_results(monkeypatch):
    """The CPU path works in cache-sized blocks; block boundaries must not show."""
    x = torch.randn(3, 48000) * 0.1  # 298 frames per clip
    whole = fbank(x, 16000)
    for block_frames in (1, 7, 100, 300, 1000):  # spans inside a clip, several clips per block
        monkeypatch.setattr(kaldi, "CPU_BLOCK_SAMPLES", block_frames * 512)
        assert torch.allclose(fbank(x, 16000), whole, rtol=0, atol=1e-5)


def test_dtypes_and_autocast():
    x = torch.randn(2, 8000) * 0.1
    ref = fbank(x, 16000)
    assert ref.dtype == torch.float32
    assert fbank(x.double(), 16000).dtype == torch.float64
    assert torch.allclose(fbank(x.double(), 16000).float(), ref, atol=1e-3)
    assert fbank(x.half(), 16000).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = fbank(x, 16000)
    assert under_autocast.dtype == torch.float32
    assert torch.allclose(under_autocast, ref, rtol=0, atol=1e-5)


def test_bad_inputs():
    with pytest.raises(ValueError, match="floating point"):
        fbank(torch.zeros(1000, dtype=torch.int16), 16000)
    with pytest.raises(ValueError, match=r"\[batch, samples\]"):
        fbank(torch.zeros(1, 2, 1000), 16000)
    with pytest.raises(TypeError):
        fbank(np.zeros(1000, dtype=np.float32), 16000)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        fbank(torch.zeros(1000), 0)
    with pytest.raises(ConfigError):
        fbank(torch.zeros(1000), 16000, num_mel_bins=1)


def test_meta_device_and_constants_cached():
    x = torch.empty(4, 16000, device="meta")
    out = fbank(x, 16000)
    assert out.device.type == "meta" and out.shape == (4, 98, 128)
    kaldi._constants.cache_clear()
    fbank(torch.zeros(2, 1600), 16000)
    fbank(torch.zeros(3, 3200), 16000)
    info = kaldi._constants.cache_info()
    assert info.misses == 1 and info.hits == 1
    fbank(torch.zeros(1600), 16000, num_mel_bins=64)
    fbank(torch.zeros(1600, dtype=torch.float64), 16000)
    assert kaldi._constants.cache_info().misses == 3


def test_mel_banks_follow_kaldi():
    banks = mel_banks(128, 512, 16000)  # (257, 128)
    assert banks.shape == (257, 128)
    assert (banks >= 0).all() and banks.max() <= 1
    assert banks[-1].abs().sum() == 0  # Nyquist bin unused
    assert banks[0].abs().sum() == 0  # 0 Hz is below low_freq (20 Hz)
    nonempty = banks.sum(0) > 0
    assert (~nonempty).sum() == 1  # one filter at 16 kHz/128 bins falls between FFT bins (knf refuses this)
    peaks = banks.argmax(0)[nonempty]
    assert (peaks[1:] >= peaks[:-1]).all()  # filters in ascending order
    assert torch.equal(mel_banks(64, 512, 16000, high_freq=-0.0), mel_banks(64, 512, 16000, high_freq=8000))
    assert torch.allclose(
        mel_banks(64, 512, 16000, high_freq=-1000), mel_banks(64, 512, 16000, high_freq=7000)
    )


# --- waveform -> model input --------------------------------------------------------------


def test_feature_config_is_the_older_name_of_the_input_contract():
    """Code written against ``FeatureConfig`` (the public API and ``ast_audio.features``) keeps working."""
    import ast_audio
    import ast_audio.features

    assert ast_audio.FeatureConfig is InputContract and ast_audio.features.FeatureConfig is InputContract


def test_presets_come_from_the_table():
    for name, preset in PRESETS.items():
        cfg = InputContract.preset(name)
        assert (cfg.target_length, cfg.mean, cfg.std, cfg.num_mel_bins, cfg.sample_rate) == (
            preset.target_length, preset.mean, preset.std, preset.num_mel_bins, preset.sample_rate,
        )  # fmt: skip
    assert InputContract() == InputContract.preset("audioset")
    assert InputContract.preset("esc50", target_length=100).target_length == 100
    with pytest.raises(ConfigError, match="unknown feature preset"):
        InputContract.preset("librispeech")
    with pytest.raises(ConfigError):
        InputContract(std=0.0)


def test_pad_or_cut_and_normalize():
    x = torch.randn(2, 10, 4)
    padded = pad_or_cut(x, 16)
    assert padded.shape == (2, 16, 4)
    assert torch.equal(padded[:, :10], x) and (padded[:, 10:] == 0).all()
    assert torch.equal(pad_or_cut(x, 3), x[:, :3])
    assert torch.equal(pad_or_cut(x[0], 10), x[0])
    assert torch.allclose(normalize(x, -4.0, 5.0), (x + 4.0) / 10.0)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_waveform_to_input_is_the_original_recipe(tmp_path, name):
    cfg = InputContract.preset(name)
    x = real_audio(tmp_path, 16000, seconds=2.0)
    expected = fbank(x - x.mean(), 16000)  # (198, 128)
    expected = torch.cat([expected, torch.zeros(max(0, cfg.target_length - 198), 128)])[: cfg.target_length]
    expected = (expected - cfg.mean) / (2 * cfg.std)
    out = waveform_to_input(x, cfg)
    assert out.shape == (cfg.target_length, 128)
    assert torch.allclose(out, expected, rtol=0, atol=1e-6)
    raw = waveform_to_input(x, cfg, normalized=False)
    assert torch.allclose(normalize(raw, cfg.mean, cfg.std), out)
    # batched, each clip's own mean removed
    batch = torch.stack([x, 0.5 * x + 0.2])  # (2, S)
    out_b = waveform_to_input(batch, cfg)
    assert out_b.shape == (2, cfg.target_length, 128)
    assert torch.allclose(out_b[0], out, rtol=0, atol=1e-5)
    assert torch.allclose(out_b[1], waveform_to_input(0.5 * x + 0.2, cfg), rtol=0, atol=1e-5)


def test_file_to_input_resamples(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "clip.wav"
    write_audio(path, (0.1 * rng.standard_normal((44100 * 2, 2))).astype(np.float32), 44100)
    cfg = InputContract.preset("esc50")
    out = file_to_input(path, cfg)
    assert out.shape == (512, 128)
    frames = 1 + (32000 - 400) // 160
    assert (out[frames:] == normalize(torch.zeros(()), cfg.mean, cfg.std)).all()  # zero padding, normalised
    waveform = load_audio(path)
    assert torch.allclose(out, waveform_to_input(waveform, cfg))
    assert torch.allclose(out, waveform_to_input(waveform.numpy(), cfg))  # NumPy in, tensor out
    assert torch.equal(
        file_to_input(path, cfg, device="cpu", normalized=False),
        waveform_to_input(waveform, cfg, normalized=False),
    )
    # a waveform at another rate is resampled on the way in
    native = load_audio(path, sample_rate=None)
    assert torch.allclose(waveform_to_input(native, cfg, sample_rate=44100), out, atol=1e-4)
