"""bench/webpage.py: the client-side page's time per clip in headless Chromium, on the toy model
(its code path; the figure itself is not checked beyond being a time)."""

from __future__ import annotations

import sys
from pathlib import Path

from factories import SR, toy_sequence, write_audio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import webpage  # noqa: E402

from ast_audio.audio.io import resample  # noqa: E402
from ast_audio.serve.web import cached_model  # noqa: E402


def test_browser_seconds_per_clip_times_the_page_on_each_clip(toy_model, tmp_path):
    model = cached_model(str(toy_model), tmp_path / "cache")  # the waveform-in ONNX file of the checkpoint
    clip = toy_sequence([0, 2], 1.0, seed=3)
    wavs = [write_audio(tmp_path / "a.wav", clip, SR, subtype="PCM_16"),
            write_audio(tmp_path / "b.wav", resample(clip, SR, 44100).numpy(), 44100, subtype="PCM_16")]  # fmt: skip
    for isolated in (True, False):  # threads as serve --client-side gives them, and one as a plain host
        seconds = webpage.browser_seconds_per_clip(model, wavs, isolated=isolated)
        assert isinstance(seconds, float) and 0 < seconds < 60
