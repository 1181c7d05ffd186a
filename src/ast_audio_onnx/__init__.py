"""Run an ast-audio waveform ONNX file with onnxruntime and numpy alone: no torch, no ast_audio.

A file written by ``ast-audio export --format onnx --input waveform`` holds everything from
raw audio to calibrated scores (Kaldi filterbanks, normalisation, the model, its
activation) and, in its metadata, the label names, thresholds and sample rate. This
package adds what lies outside the graph, as ``AudioTagger.predict`` does it: decoding
(soundfile), downmixing to mono (the channels' mean), resampling to the model's rate (soxr,
"HQ"), and cutting a long recording into model windows (half a window apart, the last
aligned to the end) whose probabilities are combined by their maximum (or mean)::

    import ast_audio_onnx
    model = ast_audio_onnx.load("model.onnx")
    scores = model.predict("dog.wav")  # {label: probability}, in the model's label order

or ``python -m ast_audio_onnx model.onnx dog.wav``. Its dependencies are onnxruntime,
numpy, soundfile and soxr (``pip install onnxruntime numpy soundfile soxr``; copy this
folder or install ast-audio with ``--no-deps``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

__all__ = ["OnnxTagger", "RunnerError", "load", "window_spans"]

METADATA_KEY = "ast_audio"
RESAMPLE_QUALITY = "HQ"  # as ast_audio.audio.io resamples
BATCH = 8  # model windows per onnxruntime call (windows of one length)


class RunnerError(ValueError):
    """A file that cannot be run or read, as one line: ``<path>: <reason>``."""

    def __init__(self, reason: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        super().__init__(reason if path is None else f"{self.path}: {reason}")


def window_spans(length: int, window: int, hop: int) -> list[tuple[int, int]]:
    """``[start, end)`` spans of ``window`` every ``hop`` over ``length``, the last aligned to the end;
    a length that fits one window is one span ``(0, length)`` (the tagger's rule)."""
    if length <= window:
        return [(0, length)]
    starts = list(range(0, length - window, hop)) + [length - window]
    return [(s, s + window) for s in starts]


def decode(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """A file as float32 mono ``[samples]`` at ``sample_rate``: soundfile, channels' mean, soxr."""
    import soundfile
    import soxr

    if not os.path.isfile(path):
        raise RunnerError("no such file" if not os.path.exists(path) else "not a file", path)
    try:
        data, rate = soundfile.read(os.fspath(path), dtype="float32", always_2d=True)  # (S, C)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise RunnerError(f"cannot decode: not an audio file soundfile reads ({detail})", path) from None
    except OSError as err:
        raise RunnerError(err.strerror or str(err), path) from None
    if data.size == 0:
        raise RunnerError("no audio samples", path)
    if not np.isfinite(data).all():
        raise RunnerError("contains NaN or Inf samples", path)
    data = data.mean(axis=1, keepdims=True)  # (S, 1)
    if rate != sample_rate:
        data = soxr.resample(data, rate, sample_rate, quality=RESAMPLE_QUALITY)  # (S', 1)
    wave = np.ascontiguousarray(data[:, 0], dtype=np.float32)
    if wave.size == 0:
        raise RunnerError(f"no audio samples after resampling {rate} -> {sample_rate} Hz", path)
    return wave


class OnnxTagger:
    """A waveform-in ast-audio ONNX file in an onnxruntime session (see the package notes)."""

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None):
        import onnxruntime as ort

        self.path = os.fspath(path)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime's own error types
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise RunnerError(f"not an ONNX model onnxruntime can run: {first}", path) from None
        meta = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        self.metadata: dict = json.loads(meta) if meta else {}
        if self.metadata.get("input") != "waveform":
            raise RunnerError("not a waveform-in ast-audio model (export it with --input waveform)", path)
        self.labels: list[str] = list(self.metadata["labels"])
        thresholds = self.metadata.get("thresholds")
        self.thresholds: list[float] | None = None if thresholds is None else [float(t) for t in thresholds]
        self.sample_rate: int = int(self.metadata["sample_rate"])
        self.window: int = int(self.metadata["window_samples"])  # samples of one model input
        # int8 graphs quantise activations by each batch's range: one window per call keeps a
        # window's scores independent of its batch-mates (as the tagger's int8 path does).
        self.batch = 1 if self.metadata.get("int8") else BATCH
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def __repr__(self) -> str:
        return f"OnnxTagger({self.path!r}, {len(self.labels)} labels, {self.sample_rate} Hz)"

    def run(self, waveforms: np.ndarray) -> np.ndarray:
        """The graph itself: ``[n, samples]`` float32 clips at :attr:`sample_rate` -> probabilities
        ``[n, labels]``. Each clip is cut or padded to one model window (no windowing here)."""
        x = np.ascontiguousarray(waveforms, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] == 0:
            raise RunnerError(f"waveforms must be [n, samples] with samples > 0, got shape {list(x.shape)}")
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def scores(
        self, audio: str | os.PathLike | np.ndarray, sample_rate: int | None = None, *, aggregate: str = "max",
        hop: int | None = None,
    ) -> np.ndarray:  # fmt: skip
        """Probabilities ``[labels]`` of one recording: a path, or a waveform ``[samples]`` or
        ``[samples, channels]`` at ``sample_rate`` (default: the model's). Long recordings
        are windowed (``hop`` samples apart, default half a window) and ``aggregate``d."""
        if aggregate not in ("max", "mean"):
            raise RunnerError(f"aggregate must be max or mean, got {aggregate!r}")
        wave = self._waveform(audio, sample_rate)
        spans = window_spans(len(wave), self.window, max(1, hop or self.window // 2))
        out = []
        for i in range(0, len(spans), self.batch):
            group = spans[i : i + self.batch]
            out.append(self.run(np.stack([wave[a:b] for a, b in group])))  # (n, C): one length per group
        probs = np.concatenate(out)  # (W, C)
        return probs.max(axis=0) if aggregate == "max" else probs.mean(axis=0)

    def predict(
        self, audio: str | os.PathLike | np.ndarray, sample_rate: int | None = None, *, aggregate: str = "max"
    ) -> dict[str, float]:
        """``{label: probability}`` of one recording, in the model's label order (see :meth:`scores`)."""
        return dict(zip(self.labels, (float(p) for p in self.scores(audio, sample_rate, aggregate=aggregate)),
                        strict=True))  # fmt: skip

    def top(self, scores: dict[str, float], k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` highest ``(label, probability)`` pairs of :meth:`predict`'s result."""
        return sorted(scores.items(), key=lambda item: -item[1])[:k]

    def present(self, scores: dict[str, float]) -> list[str] | None:
        """Labels at or above their calibrated threshold (``None`` if the model has none)."""
        if self.thresholds is None:
            return None
        return [name for name, t in zip(self.labels, self.thresholds, strict=True) if scores[name] >= t]

    def _waveform(self, audio: str | os.PathLike | np.ndarray | Sequence[float], sample_rate: int | None) -> np.ndarray:
        if isinstance(audio, str | os.PathLike):
            return decode(audio, self.sample_rate)
        wave = np.asarray(audio, dtype=np.float32)
        if wave.ndim == 2:
            wave = wave.mean(axis=1)  # (samples, channels) -> (samples,), as soundfile gives them
        if wave.ndim != 1 or wave.size == 0:
            raise RunnerError(f"a waveform must be [samples] or [samples, channels], got shape {list(np.shape(audio))}")
        if not np.isfinite(wave).all():
            raise RunnerError("waveform contains NaN or Inf samples")
        rate = sample_rate or self.sample_rate
        if rate != self.sample_rate:
            import soxr

            wave = soxr.resample(wave, rate, self.sample_rate, quality=RESAMPLE_QUALITY).astype(np.float32)
        return wave


def load(path: str | os.PathLike, *, threads: int | None = None) -> OnnxTagger:
    """The model in the ONNX file at ``path`` (``threads``: onnxruntime's intra-op threads)."""
    return OnnxTagger(path, threads=threads)
