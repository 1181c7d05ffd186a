"""Streams that lie: a container piped into ``listen --input -``, a truncated file, a decoder
that fails (``--ffmpeg``), and the decoders' own lines on stderr."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess

import numpy as np
import pytest
import soundfile
from conftest import CLI, cli_env, run_cli
from factories import SR, loudness_model, noise, write_truncated_mp3

from ast_audio.audio.sources import sniff_container, stdin_source
from ast_audio.checkpoints import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def scene() -> np.ndarray:
    """0-4 s quiet, 4-7 s loud, 7-10 s quiet."""
    return np.concatenate([noise(4, 1e-4, seed=1), noise(3, 0.3, seed=2), noise(3, 1e-4, seed=3)]).astype(np.float32)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_checkpoint(loudness_model(100), tmp_path_factory.mktemp("loud") / "loud.safetensors")


def encoded(x: np.ndarray, rate: int, **kwargs) -> bytes:
    out = io.BytesIO()
    soundfile.write(out, x, rate, **kwargs)
    return out.getvalue()


def events(stdout: bytes | str) -> list[dict]:
    text = stdout.decode() if isinstance(stdout, bytes) else stdout
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize(
    "rate, options",
    [
        (32000, {"format": "WAV", "subtype": "FLOAT"}),  # 32 kHz float: nothing like 16-bit PCM at 16 kHz
        (22050, {"format": "FLAC"}),
    ],
)
def test_a_container_piped_into_listen_is_decoded_at_its_own_rate(model, rate, options):
    # the scene's samples written at `rate`: a clip of 10 * SR / rate seconds, its loud part at 4 and 7 s scaled so
    scale = SR / rate
    piped = subprocess.run([*CLI, "listen", "--checkpoint", str(model), "--input", "-"],
                           input=encoded(scene(), rate, **options), capture_output=True, env=cli_env(),
                           timeout=300)  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    lines = events(piped.stdout)
    assert [x["label"] for x in lines if x["event"] == "start"] == ["quiet", "loud", "quiet"]
    assert max(x["time"] for x in lines) <= 10.0 * scale + 1e-3  # no event past the end of the clip
    loud = [x["time"] for x in lines if x["label"] == "loud"]
    assert abs(loud[0] - 4.0 * scale) <= 0.3 and abs(loud[1] - 7.0 * scale) <= 0.3


def test_raw_pcm_is_still_raw_and_headers_are_told_apart():
    for seed in range(200):  # noise at every level: a frame sync in raw samples is common, two valid frames are not
        pcm = (noise(0.2, level=0.05 * (1 + seed % 20), seed=seed) * 32767).astype("<i2").tobytes()
        assert sniff_container(pcm[:4096]) is None, seed
    assert sniff_container(encoded(noise(0.5), SR, format="WAV")[:4096]) == "WAV"
    assert sniff_container(encoded(noise(0.5), SR, format="FLAC")[:4096]) == "FLAC"
    assert sniff_container(encoded(noise(0.5), SR, format="OGG")[:4096]) == "Ogg"
    mp3 = encoded(noise(0.5), SR, format="MP3")
    assert sniff_container(mp3[:4096]) == "MP3"
    tag = 10 + (mp3[6] << 21 | mp3[7] << 14 | mp3[8] << 7 | mp3[9]) if mp3[:3] == b"ID3" else 0  # ID3v2 size
    assert sniff_container(mp3[tag : tag + 4096]) == "MP3"  # without its tag: told by two valid frame headers
    assert sniff_container(mp3[tag : tag + 4]) is None  # one frame sync alone is not enough
    assert sniff_container(b"") is None and sniff_container(b"\xff\xfb") is None


def test_raw_pcm_on_stdin_goes_through_at_the_given_rate():
    pcm = (np.linspace(-0.5, 0.5, 1000) * 32767).astype("<i2").tobytes()
    rate, blocks = stdin_source(8000, 0.01, lambda: False, stream=io.BytesIO(pcm))
    got = np.concatenate(list(blocks))
    assert rate == 8000 and len(got) == 1000 and abs(got[0] + 0.5) < 1e-3 and abs(got[-1] - 0.5) < 1e-3


def test_a_truncated_mp3_in_listen_ends_where_the_audio_ends_with_one_warning(model, tmp_path):
    path = write_truncated_mp3(tmp_path / "cut.mp3", scene(), SR)
    claimed = soundfile.info(str(path)).frames
    out = run_cli("listen", "--checkpoint", model, "--input", path, "--as-fast-as-possible", timeout=300)
    assert out.returncode == 0, out.stderr
    warnings = out.stderr.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith(f"{path}: truncated file: decoded "), out.stderr
    decoded = int(warnings[0].split("decoded ")[1].split(" of ")[0])
    assert f" of {claimed} frames" in warnings[0] and decoded < claimed
    lines = events(out.stdout)
    assert lines and max(x["time"] for x in lines) <= decoded / SR + 1e-3  # (times to the ms) not the 10 s the header claims
    assert "mpg123" not in out.stderr and "[src/" not in out.stderr  # the decoder's own lines stay off stderr


def test_the_decoders_own_lines_stay_off_stderr_in_predict(tmp_path, checkpoints):
    path = write_truncated_mp3(tmp_path / "cut.mp3", noise(3.0), SR)
    out = run_cli("predict", path, "--checkpoint", checkpoints["single"], "--format", "json", timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip().splitlines() == [
        line for line in out.stderr.strip().splitlines() if line.startswith(f"{path}: truncated file: decoded ")
    ] and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_listen_ffmpeg_that_cannot_decode_is_one_line_and_exit_2(model, tmp_path):
    fake = tmp_path / "bin" / "ffmpeg"  # a stand-in that fails as ffmpeg does on garbage: the real exit path
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\ncat > /dev/null\necho 'pipe:0: Invalid data found when processing input' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = cli_env()
    env["PATH"] = f"{fake.parent}{os.pathsep}{env['PATH']}"
    out = subprocess.run([*CLI, "listen", "--checkpoint", str(model), "--input", "-", "--ffmpeg"],
                         input=b"this is not audio\n" * 100, capture_output=True, env=env, timeout=300)  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stderr.decode().strip().splitlines() == [
        "ast-audio: error: stdin: ffmpeg could not decode it (pipe:0: Invalid data found when processing input)"
    ]


def test_a_container_on_stdin_cut_short_ends_with_a_warning_or_is_one_line_error(model):
    flac = encoded(noise(10.0, level=0.3), SR, format="FLAC")

    def listen(data: bytes) -> tuple[int, list[str], list[dict]]:
        out = subprocess.run([*CLI, "listen", "--checkpoint", str(model), "--input", "-"], input=data,
                             capture_output=True, env=cli_env(), timeout=300)  # fmt: skip
        return out.returncode, out.stderr.decode().strip().splitlines(), events(out.stdout)

    code, stderr, _ = listen(flac[:200])  # the header and a few bytes: nothing decodes
    assert code == 2 and len(stderr) == 1 and stderr[0].startswith("ast-audio: error: stdin: not a decodable audio"), stderr
    code, stderr, lines = listen(flac[: len(flac) // 2])  # half: what decodes is listened to, then one warning
    assert code == 0 and len(stderr) == 1 and stderr[0].startswith("stdin: truncated or corrupt file: the decoder "
                                                                   "stopped after "), stderr  # fmt: skip
    seconds = float(stderr[0].split("the stream ends at ")[1].split(" s")[0])
    assert 1.0 < seconds < 10.0 and lines and max(x["time"] for x in lines) <= seconds + 0.01
