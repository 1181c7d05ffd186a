"""Audio loading on real files written here: formats, mono, resampling, and every bad case."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile as sf
import torch
from factories import tone, write_audio, write_empty, write_text_as_audio

from ast_audio.audio.io import AUDIO_EXTENSIONS, AudioInfo, audio_info, load_audio, resample
from ast_audio.errors import AstAudioError, AudioError, ConfigError


def peak_hz(x: torch.Tensor, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x.numpy() * np.hanning(len(x))))
    return float(np.argmax(spectrum) * sample_rate / len(x))


# --- formats ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subtype", "tolerance"),
    [
        ("PCM_U8", 1 / 127),
        ("PCM_16", 1 / 32767),
        ("PCM_24", 1e-6),
        ("PCM_32", 1e-8),
        ("FLOAT", 0),
        ("DOUBLE", 0),
    ],
)
def test_wav_round_trip(tmp_path, subtype, tolerance):
    x = tone(440, 16000)
    path = write_audio(tmp_path / f"{subtype}.wav", x, subtype=subtype)
    y = load_audio(path)
    assert y.dtype == torch.float32 and y.shape == (16000,)
    assert np.abs(y.numpy() - x).max() <= tolerance + 1e-7
    assert y.abs().max() <= 1.0


def test_flac_ogg_mp3_round_trip(tmp_path):
    x = tone(440, 16000, seconds=2.0)
    flac = load_audio(write_audio(tmp_path / "a.flac", x))
    assert np.abs(flac.numpy() - x).max() < 1e-4  # 16-bit
    for name, kwargs in [("a.ogg", {"format": "OGG", "subtype": "VORBIS"}), ("a.mp3", {"format": "MP3"})]:
        y = load_audio(write_audio(tmp_path / name, x, **kwargs))
        assert abs(len(y) - len(x)) < 0.05 * len(x), name  # lossy codecs may pad a little
        assert abs(peak_hz(y, 16000) - 440) < 2, name
        assert 0.3 < y.abs().max() < 0.7, name


def test_multichannel_48k_flac_to_mono_16k(tmp_path):
    rng = np.random.default_rng(0)
    x = (0.2 * rng.standard_normal((48000, 3))).astype(np.float32)  # 3 channels, 1 s at 48 kHz
    path = write_audio(tmp_path / "three.flac", x, 48000)
    y = load_audio(path)  # mono, 16 kHz
    assert y.shape == (16000,)
    decoded = sf.read(path, dtype="float32")[0]  # (S, 3), 16-bit rounding
    expected = resample(torch.from_numpy(decoded.mean(axis=1)), 48000, 16000)
    assert torch.allclose(y, expected, atol=1e-6)  # the channel average, not the first channel
    channels = load_audio(path, mono=False)
    assert channels.shape == (3, 16000)
    assert torch.allclose(channels.mean(0), y, atol=1e-6)
    native = load_audio(path, sample_rate=None, mono=False)
    assert native.shape == (3, 48000)
    assert np.abs(native.numpy().T - x).max() < 1e-4


def test_resampling_keeps_a_1khz_tone_at_1khz(tmp_path):
    path = write_audio(tmp_path / "tone.wav", tone(1000, 44100, seconds=2.0), 44100)
    y = load_audio(path, sample_rate=16000)
    assert y.shape == (32000,)
    assert abs(peak_hz(y, 16000) - 1000) <= 0.5  # FFT bin width 0.5 Hz
    assert abs(y.abs().max().item() - 0.5) < 0.01  # HQ passband: amplitude kept


def test_resample_tensors_and_batches():
    x = torch.from_numpy(np.stack([tone(1000, 22050), tone(2000, 22050)]))  # (2, S)
    y = resample(x, 22050, 16000)
    assert y.shape == (2, 16000) and y.dtype == torch.float32
    assert abs(peak_hz(y[0], 16000) - 1000) <= 1 and abs(peak_hz(y[1], 16000) - 2000) <= 1
    assert torch.allclose(resample(x[1], 22050, 16000), y[1], atol=1e-6)
    assert torch.equal(resample(x, 22050, 22050), x)
    with pytest.raises(ConfigError, match="unsupported sample rate"):
        resample(x, 0, 16000)


def test_audio_info(tmp_path):
    path = write_audio(tmp_path / "info.wav", np.zeros((8000, 2), np.float32), 8000, subtype="PCM_24")
    info = audio_info(path)
    assert info == AudioInfo(str(path), 8000, 8000, 2, "WAV", "PCM_24")
    assert info.duration == 1.0


# --- bad audio: one error type naming the file and the reason ------------------------------


def assert_audio_error(path, reason: str, **kwargs) -> AudioError:
    with pytest.raises(AudioError) as caught:
        load_audio(path, **kwargs)
    err = caught.value
    assert isinstance(err, AstAudioError)
    assert err.path == str(path) and reason in err.reason
    assert str(err) == f"{path}: {err.reason}" and "\n" not in str(err)
    return err


def test_missing_file_and_directory(tmp_path):
    assert_audio_error(tmp_path / "nope.wav", "file not found")
    assert_audio_error(tmp_path, "not a regular file")
    with pytest.raises(AudioError, match="file not found"):
        audio_info(tmp_path / "nope.flac")


@pytest.mark.parametrize("name", ["empty.wav", "empty.mp3", "empty.flac"])
def test_zero_byte_files(tmp_path, name):
    assert_audio_error(write_empty(tmp_path / name), "empty file (0 bytes)")


def test_files_with_no_samples(tmp_path):
    assert_audio_error(write_audio(tmp_path / "none.wav", np.zeros((0, 1), np.float32)), "no audio samples")
    # libsndfile writes a sample-less mp3 as 0 bytes; a lone ID3 tag is an mp3 with no audio.
    empty_mp3 = write_audio(tmp_path / "none.mp3", np.zeros((0, 1), np.float32), format="MP3")
    assert_audio_error(empty_mp3, "empty file (0 bytes)")
    tag_only = tmp_path / "tag_only.mp3"
    tag_only.write_bytes(b"ID3\x04\x00\x00\x00\x00\x00\x00")
    with pytest.raises(AudioError) as caught:
        load_audio(tag_only)
    assert caught.value.reason.startswith(("not a decodable audio file", "no audio samples"))


def test_text_file_named_wav(tmp_path):
    path = write_text_as_audio(tmp_path / "notes.wav", "this is not audio\n" * 20)
    err = assert_audio_error(path, "not a decodable audio file")
    assert "Error opening" not in err.reason  # libsndfile's prefix is dropped: path once
    with pytest.raises(AudioError, match="not a decodable audio file"):
        audio_info(path)


def test_garbage_mp3(tmp_path):
    path = tmp_path / "garbage.mp3"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    assert_audio_error(path, "not a decodable audio file")


def test_truncated_wav_header(tmp_path):
    good = write_audio(tmp_path / "good.wav", tone(440, 16000))
    cut = tmp_path / "cut_header.wav"
    cut.write_bytes(good.read_bytes()[:30])
    assert_audio_error(cut, "not a decodable audio file")


def test_truncated_wav_data_loads_what_decodes_with_a_warning(tmp_path, caplog):
    x = tone(440, 16000)
    good = write_audio(tmp_path / "good.wav", x, subtype="PCM_16")
    data = good.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: 44 + 2 * 6000 + 1])  # header + 6000 samples + half a sample
    with caplog.at_level(logging.WARNING, logger="ast_audio.audio.io"):
        y = load_audio(cut)
    assert y.shape == (6000,)
    assert np.abs(y.numpy() - x[:6000]).max() < 1e-4
    assert "truncated file" in caplog.text and str(cut) in caplog.text
    err = assert_audio_error(cut, "truncated file", strict=True)
    assert "32000 bytes" in err.reason
    assert load_audio(good, strict=True).shape == (16000,)  # an intact file passes strict


def test_truncated_mp3_does_not_crash(tmp_path, caplog):
    good = write_audio(tmp_path / "good.mp3", tone(440, 16000, seconds=2.0), format="MP3")
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="ast_audio.audio.io"):
        y = load_audio(cut)
    assert 0 < len(y) < 32000
    assert torch.isfinite(y).all()
    assert "truncated file" in caplog.text
    assert_audio_error(cut, "truncated file", strict=True)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_wav_with_nan_or_inf(tmp_path, bad):
    x = tone(440, 16000)
    x[1234] = bad
    path = write_audio(tmp_path / "bad.wav", x, subtype="FLOAT")
    assert_audio_error(path, "contains NaN or Inf samples")


@pytest.mark.parametrize("rate", [500, 400000])
def test_unsupported_file_rate(tmp_path, rate):
    path = write_audio(tmp_path / f"rate{rate}.wav", np.zeros(1000, np.float32), rate)
    assert_audio_error(path, f"unsupported sample rate {rate} Hz")
    with pytest.raises(AudioError, match="unsupported sample rate"):
        audio_info(path)


def test_unsupported_requested_rate(tmp_path):
    path = write_audio(tmp_path / "ok.wav", tone(440, 16000))
    with pytest.raises(ConfigError, match="unsupported sample rate"):
        load_audio(path, sample_rate=0)
    assert load_audio(path, sample_rate=None).shape == (16000,)


def test_one_list_of_audio_extensions():
    """Folder searches and name matching all use ``audio.AUDIO_EXTENSIONS`` (no copies that drift)."""
    from ast_audio.cli import infer as cli_infer
    from ast_audio.recipes import audioset, csvdata

    assert cli_infer.AUDIO_EXTENSIONS is AUDIO_EXTENSIONS and audioset.AUDIO_EXTENSIONS is AUDIO_EXTENSIONS
    assert csvdata.EXTENSIONS is AUDIO_EXTENSIONS
    assert all(e.startswith(".") and e == e.lower() for e in AUDIO_EXTENSIONS)
    assert len(set(AUDIO_EXTENSIONS)) == len(AUDIO_EXTENSIONS)
