"""Inference for people: tags, timelines, embeddings and attention maps for any recording.

:class:`AudioTagger` wraps one checkpoint, or several (an ensemble), from any source
:func:`~ast_audio.checkpoints.load_model` accepts, and takes paths, lists of paths or
waveforms with their sample rate.

Decisions, in one place:

- **Labels** are ``model.info.labels`` (``load_model`` fills the AudioSet and Speech
  Commands names for the published checkpoints; ours carry their own); a checkpoint
  without names gets ``"class N"``.
- **Features** go through :func:`~ast_audio.features.waveform_to_input` with
  ``FeatureConfig(sample_rate=info.sample_rate, num_mel_bins=config.input_fdim,
  target_length=config.input_tdim, mean=info.dataset_mean, std=info.dataset_std)``:
  exactly the training path. A checkpoint without normalisation statistics uses
  AudioSet's, with one logged warning.
- **Model windows.** One model input covers ``input_tdim`` frames, i.e.
  ``25 ms + (input_tdim - 1) * 10 ms`` of audio (10.255 s for 1024 frames). A clip that
  fits is one window, padded with zero frames as in training. A longer clip is cut into
  windows of that length every ``hop`` seconds (default: half a window), the last one
  aligned to the end of the clip, so every sample is seen and nothing is silently cut.
- **Aggregation over windows** (``predict``): the *maximum* probability of each label
  over the windows (``aggregate="max"``, the default: "does this sound occur anywhere in
  the recording"), or the mean (``aggregate="mean"``: "how much of the recording is
  it"). For a clip that fits one window both are that window's scores.
- **Scores** are probabilities: sigmoid for multi-label checkpoints, softmax for
  single-label ones (``info.multilabel``).
- **Ensembles**: each member computes its own features (its own length, strides,
  sample rate and statistics) and windows, aggregates over its windows, and the
  members' probabilities are averaged. Members must have the same number of labels.
- **Timelines**: windows of ``window`` seconds every ``hop`` seconds, the last one
  aligned to the end. A timeline window shorter than the model input is padded as in
  training; a longer one is scored like ``predict`` scores a clip (model windows inside
  it, aggregated). Consecutive windows where a label's score is at least ``threshold``
  become one :class:`Event` spanning them.
- **Embeddings**: the pooled embedding (mean of the ``cls`` and ``dist`` outputs) of
  each model window; for a clip longer than one window, ``embedding`` is their mean and
  the per-window ones are kept too. Token grids (``[f_dim, t_dim, dim]``) on request.
- **Attention**: rollout (Abnar and Zuidema 2020: heads averaged, identity added, rows
  renormalised, multiplied through the layers) or the last layer's attention, from the
  ``cls`` and ``dist`` tokens to the patches, on the patch grid and spread back onto
  ``(frames, mel bins)``; :func:`plot_attention` draws spectrogram, map and top labels
  into a PNG (matplotlib's Agg canvas, imported only then).

Everything runs under ``torch.inference_mode()``; ``device=None`` picks CUDA when
available, else the CPU.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .audio import load_audio, resample
from .errors import AstAudioError, ConfigError
from .features import FeatureConfig, frame_sizes, waveform_to_input
from .model import PATCH, ASTModel
from .presets import PRESETS

__all__ = [
    "AttentionMap",
    "AudioTagger",
    "Embedding",
    "Event",
    "Prediction",
    "Timeline",
    "Window",
    "attention_grid",
    "grid_to_frames",
    "merge_events",
    "plot_attention",
    "window_spans",
]

log = logging.getLogger(__name__)

AGGREGATES = ("max", "mean")
PRECISIONS = ("fp32", "bf16", "int8")
Audio = str | os.PathLike | np.ndarray | torch.Tensor


# --------------------------------------------------------------------------- results


@dataclass
class Prediction:
    """Scores of one recording: ``labels`` are the top-k ``(name, probability)`` pairs,
    ``scores`` all probabilities ``[label_dim]``, ``spans`` the model windows (seconds)
    that were aggregated (of the first member, for an ensemble)."""

    path: str | None
    labels: list[tuple[str, float]]
    scores: np.ndarray
    duration: float
    spans: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class Window:
    """One timeline window: ``[start, end)`` seconds, its probabilities and top-k labels."""

    start: float
    end: float
    scores: np.ndarray
    labels: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Event:
    """A label above threshold in consecutive windows: from the first one's start to the
    last one's end, with the highest score it reached."""

    label: str
    index: int
    start: float
    end: float
    peak: float


@dataclass
class Timeline:
    path: str | None
    duration: float
    labels: list[str]
    windows: list[Window]
    events: list[Event]

    @property
    def scores(self) -> np.ndarray:
        """All window scores ``[windows, label_dim]``."""
        return np.stack([w.scores for w in self.windows])


@dataclass
class Embedding:
    """``embedding`` ``[dim]`` is the mean over the model windows; ``window_embeddings``
    ``[windows, dim]`` and ``spans`` (seconds) are per window; ``tokens`` (on request) the
    token grids ``[windows, f_dim, t_dim, dim]``."""

    path: str | None
    embedding: np.ndarray
    duration: float
    spans: list[tuple[float, float]]
    window_embeddings: np.ndarray
    tokens: np.ndarray | None = None


@dataclass
class AttentionMap:
    """Attention of one model window: ``features`` and ``map`` are ``[frames, mel bins]``
    (the model input and the attention spread onto it), ``grid`` is ``[f_dim, t_dim]``."""

    path: str | None
    start: float
    end: float
    method: str
    features: np.ndarray
    grid: np.ndarray
    map: np.ndarray
    labels: list[tuple[str, float]]
    frame_shift: float = 0.01


# --------------------------------------------------------------------------- windows and events


def window_spans(length: int, window: int, hop: int) -> list[tuple[int, int]]:
    """``[start, end)`` spans of ``window`` every ``hop`` over ``length``, the last aligned to the end.

    A length that fits one window is one span ``(0, length)``; otherwise every span is
    ``window`` long and together they cover ``[0, length)``.
    """
    if window < 1 or hop < 1:
        raise ConfigError(f"window and hop must be positive, got {window} and {hop}")
    if length <= window:
        return [(0, length)]
    starts = list(range(0, length - window, hop)) + [length - window]
    return [(s, s + window) for s in starts]


def merge_events(windows: Sequence[Window], labels: Sequence[str], threshold: float = 0.5) -> list[Event]:
    """One :class:`Event` per run of consecutive windows whose score for a label is >= ``threshold``.

    Windows are taken in the order given (time order); events come sorted by start time,
    then by peak score (highest first).
    """
    if not windows:
        return []
    scores = np.stack([w.scores for w in windows])  # (W, C)
    above = scores >= threshold
    events = []
    for c in np.flatnonzero(above.any(axis=0)):
        col = np.concatenate([[False], above[:, c], [False]]).astype(np.int8)
        edges = np.diff(col)  # +1 where a run starts, -1 one past where it ends
        for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
            peak = float(scores[a:b, c].max())
            events.append(Event(labels[c], int(c), windows[a].start, windows[b - 1].end, peak))
    events.sort(key=lambda e: (e.start, -e.peak, e.index))
    return events


def _top(scores: np.ndarray, names: Sequence[str], k: int) -> list[tuple[str, float]]:
    order = np.argsort(-scores, kind="stable")[: max(0, k)]
    return [(names[i], float(scores[i])) for i in order]


# --------------------------------------------------------------------------- attention


def attention_grid(
    model: ASTModel, x: torch.Tensor, method: str = "rollout"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[B, label_dim]`` and the attention of the ``cls``/``dist`` tokens on the patches
    as ``[B, f_dim, t_dim]`` for model input ``x`` ``[B, T, F]``.

    ``method="rollout"``: per layer the heads are averaged, the identity added and rows
    renormalised (``(A + I) / 2``); the layers are multiplied (last @ ... @ first) and the
    rows of the two tokens averaged. ``method="last"``: the last layer's head-averaged
    attention of the two tokens. Rows are not rescaled (rollout rows sum to 1 over all
    tokens, the two token columns included).
    """
    if method not in ("rollout", "last"):
        raise ConfigError(f"unknown attention method {method!r}; choose 'rollout' or 'last'")
    logits, maps = model.attention_maps(x)
    if method == "last":
        joint = maps[-1].float().mean(dim=1)  # (B, N, N)
    else:
        n = maps[0].shape[-1]
        eye = torch.eye(n, device=x.device)
        joint = eye.expand(x.shape[0], n, n)
        for attn in maps:
            a = attn.float().mean(dim=1) + eye  # (B, N, N)
            a = a / a.sum(dim=-1, keepdim=True)
            joint = a @ joint
    to_patches = joint[:, :2, 2:].mean(dim=1)  # (B, f*t): cls and dist rows
    f_dim, t_dim = model.config.grid
    return logits, to_patches.reshape(-1, f_dim, t_dim)  # (B, f, t)


def grid_to_frames(grid: torch.Tensor, model: ASTModel) -> torch.Tensor:
    """Spread a patch-grid map ``[B, f_dim, t_dim]`` onto the input ``[B, frames, mel bins]``.

    Each patch's value covers its 16x16 receptive field; where patches overlap (strides
    below 16) the values are averaged; frames and bins no patch sees get 0.
    """
    cfg = model.config
    stride = (cfg.fstride, cfg.tstride)
    ones = grid.new_ones(1, 1, PATCH, PATCH)
    x = grid.unsqueeze(1).float()  # (B, 1, f, t)
    total = F.conv_transpose2d(x, ones, stride=stride)  # (B, 1, F', T'): sum of covering patches
    count = F.conv_transpose2d(torch.ones_like(x[:1]), ones, stride=stride)  # (1, 1, F', T')
    spread = total / count.clamp_min(1.0)
    pad_f, pad_t = cfg.input_fdim - spread.shape[-2], cfg.input_tdim - spread.shape[-1]
    spread = F.pad(spread, (0, pad_t, 0, pad_f))  # (B, 1, F, T)
    return spread[:, 0].transpose(1, 2)  # (B, T, F)


def plot_attention(att: AttentionMap, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Save spectrogram, attention map and top labels of ``att`` as a PNG; returns the path.

    Draws on matplotlib's Agg canvas directly (no pyplot, no global backend change).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    frames = att.features.shape[0]
    extent = (att.start, att.start + frames * att.frame_shift, 0, att.features.shape[1])
    fig = Figure(figsize=(10, 7.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_spec, ax_att, ax_top = fig.subplots(3, 1, height_ratios=(3, 3, 2))
    ax_spec.imshow(att.features.T, origin="lower", aspect="auto", extent=extent, cmap="magma")
    ax_spec.set(ylabel="mel bin", title=title or (att.path or "waveform"))
    ax_att.imshow(att.features.T, origin="lower", aspect="auto", extent=extent, cmap="gray")
    shown = att.map / att.map.max() if att.map.max() > 0 else att.map
    image = ax_att.imshow(shown.T, origin="lower", aspect="auto", extent=extent, cmap="inferno", alpha=0.6)
    ax_att.set(ylabel="mel bin", xlabel="time (s)", title=f"attention ({att.method}), scaled to its maximum")
    fig.colorbar(image, ax=ax_att, fraction=0.02)
    names = [name for name, _ in att.labels][::-1]
    ax_top.barh(names, [score for _, score in att.labels][::-1], color="tab:blue")
    ax_top.set(xlim=(0, 1), xlabel="probability", title="top labels")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


# --------------------------------------------------------------------------- the tagger


def pick_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> CUDA when available, else the CPU; a CUDA device without CUDA is a clear error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"bad device {device!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {str(device)!r} asked for, but CUDA is not available here")
    return device


@dataclass
class _Member:
    name: str
    model: ASTModel
    features: FeatureConfig
    window: int  # samples of one model input
    compiled: dict[str, Callable] = field(default_factory=dict)  # "forward" / "tokens" -> torch.compile'd

    @property
    def rate(self) -> int:
        return self.features.sample_rate

    def hop(self, seconds: float | None) -> int:
        return max(1, self.window // 2 if seconds is None else round(seconds * self.rate))


@dataclass
class _Item:
    """One input: a path or a waveform ``[samples]`` at ``sample_rate``."""

    path: str | None
    waveform: torch.Tensor | None = None
    sample_rate: int | None = None


@dataclass
class _Record:
    """An item in flight: its segments and, per member and segment, the outputs of its windows."""

    path: str | None
    duration: float
    segments: list[tuple[float, float]]
    rows: list[list[list]]  # [member][segment] -> outputs of its model windows
    spans: list[list[list[tuple[float, float]]]]  # same layout: each window's [start, end) in seconds


class AudioTagger:
    """Tag, time, embed and explain recordings with one AST checkpoint or an ensemble.

    ``checkpoint`` is anything :func:`~ast_audio.checkpoints.load_model` accepts (a file,
    a Hugging Face folder, a published name) or an :class:`ASTModel`, or a list of these:
    an ensemble whose members' probabilities are averaged. ``device=None`` picks CUDA when
    available. ``batch_size`` model windows go through the model at once (windows of
    several files share batches).

    ``precision`` is how the model computes (features are always float32); ``None`` means
    ``"fp32"``, or ``"bf16"`` with ``autocast=True``:

    - ``"fp32"`` (default): float32 throughout, the reference.
    - ``"bf16"``: the model under bfloat16 autocast (``autocast=True`` is a synonym).
      Fast where the hardware has bf16 matrix units (AMX or AVX512-BF16 CPUs, recent
      GPUs); elsewhere it can be slower than fp32.
    - ``"int8"``: dynamic int8 quantisation of every ``nn.Linear``
      (``torch.ao.quantization.quantize_dynamic``: int8 weights, activations quantised
      per batch) on a copy of the model, so an :class:`ASTModel` passed in is left as it
      was. CPU only. Meant for CPUs without fast bf16 (no AMX/AVX512-BF16); where bf16 is
      fast it is the better choice. ``device=None`` then means the CPU.

    ``compile=True`` runs the model through ``torch.compile(..., dynamic=False)`` (each
    member, and its token path for ``embed``, compiled on first use). Every batch is then
    padded with zero windows up to ``batch_size`` (their outputs dropped), so the last,
    smaller batch reuses the compiled graph instead of compiling again; a few files in a
    large ``batch_size`` therefore cost a full batch. ``attention`` always runs eagerly.
    With ``"int8"`` it works, but the graph breaks at every quantised Linear, so expect
    little from it (not measured).

    Measured on a 2-core Intel Xeon with AMX (base384, 1024 frames, batch 4, model
    forward only; logit differences against fp32; "-": not measured):

    ======================  =========  ===================  ==============================
    precision / compile     s / clip   max logit diff       note
    ======================  =========  ===================  ==============================
    fp32                    0.83       (reference)
    bf16                    0.26       0.02
    int8                    0.56       0.17                 bf16 is faster on this CPU
    fp32 + compile          0.83       -                    no gain
    bf16 + compile          0.23       -                    ~15% over bf16 eager
    ======================  =========  ===================  ==============================

    ``torch.compile`` first spends 10-40 s compiling (per member and per output kind), so
    it pays off on long runs only.

    ``predict``, ``timeline`` and ``embed`` take ``on_error``: without it, the first input
    that cannot be read raises its ``AstAudioError``; with it, the error is passed to it
    and that input is left out of the results (a single input then gives ``None``).
    ``progress=True`` shows a bar over the inputs (tqdm, on stderr).
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | ASTModel | Sequence[str | os.PathLike | ASTModel],
        device: str | torch.device | None = None,
        *,
        batch_size: int = 8,
        precision: str | None = None,
        compile: bool = False,
        autocast: bool = False,
    ):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        precision = _precision(precision, autocast)
        sources = list(checkpoint) if isinstance(checkpoint, list | tuple) else [checkpoint]
        if not sources:
            raise ConfigError("AudioTagger needs at least one checkpoint")
        self.device = pick_device("cpu" if device is None and precision == "int8" else device)
        if precision == "int8" and self.device.type != "cpu":
            raise ConfigError(f"precision 'int8' runs on the CPU only, not on {str(self.device)!r}")
        self.batch_size = batch_size
        self.precision = precision
        self.autocast = precision == "bf16"
        self.compile = bool(compile)
        self.members = [self._member(i, source) for i, source in enumerate(sources)]
        first = self.members[0]
        dims = {m.name: m.model.config.label_dim for m in self.members}
        if len(set(dims.values())) > 1:
            listing = ", ".join(f"{name}: {dim}" for name, dim in dims.items())
            raise ConfigError(f"ensemble members must have the same number of labels; got {listing}")
        info = first.model.info
        self.labels: list[str] = list(
            info.labels or [f"class {i}" for i in range(first.model.config.label_dim)]
        )
        for m in self.members[1:]:
            if m.model.info.labels and list(m.model.info.labels) != self.labels:
                log.warning("%s: label names differ from %s's; using the first member's", m.name, first.name)
        self.multilabel = info.multilabel

    def _member(self, index: int, source) -> _Member:
        from .checkpoints import load_model

        if isinstance(source, ASTModel):
            model, name = source.to(self.device).eval(), f"model {index}"
        else:
            model, name = load_model(source, device=self.device), os.fspath(source)
        if self.precision == "int8":
            model = _quantize(model, inplace=not isinstance(source, ASTModel))  # a caller's model stays float
        cfg, info = model.config, model.info
        mean, std = info.dataset_mean, info.dataset_std
        if mean is None or std is None:
            mean, std = PRESETS["audioset"].mean, PRESETS["audioset"].std
            log.warning("%s: no normalisation statistics in the checkpoint; using AudioSet's (%g, %g)",
                        name, mean, std)  # fmt: skip
        features = FeatureConfig(
            sample_rate=info.sample_rate, num_mel_bins=cfg.input_fdim, target_length=cfg.input_tdim,
            mean=mean, std=std,
        )  # fmt: skip
        window_size, window_shift, _ = frame_sizes(info.sample_rate)
        return _Member(name, model, features, window_size + (cfg.input_tdim - 1) * window_shift)

    # ----------------------------------------------------------------- public API

    def predict(
        self,
        audio: Audio | Sequence[Audio],
        sample_rate: int | None = None,
        *,
        top_k: int = 5,
        aggregate: str = "max",
        hop: float | None = None,
        on_error: Callable[[AstAudioError], None] | None = None,
        progress: bool = False,
    ) -> Prediction | list[Prediction] | None:
        """Top-``top_k`` labels and all probabilities of each recording.

        ``audio``: a path, a waveform ``[samples]`` (with ``sample_rate``) -> one
        :class:`Prediction`; a list of these or a batch ``[n, samples]`` -> a list. A long
        recording is windowed (``hop`` seconds apart, default half a model input) and
        aggregated by ``aggregate`` (``"max"`` or ``"mean"`` over windows). For
        ``on_error`` and ``progress`` see the class notes.
        """
        _check_aggregate(aggregate)
        items, single = _items(audio, sample_rate)
        records = self._run(items, None, hop, "probs", on_error, progress)
        out = []
        for rec in records:
            scores = self._combine(rec, 0, aggregate)
            out.append(
                Prediction(rec.path, _top(scores, self.labels, top_k), scores, rec.duration, rec.spans[0][0])
            )
        return _result(out, single)

    def timeline(
        self,
        audio: Audio | Sequence[Audio],
        window: float = 10.0,
        hop: float = 5.0,
        *,
        sample_rate: int | None = None,
        threshold: float = 0.5,
        top_k: int = 5,
        aggregate: str = "max",
        on_error: Callable[[AstAudioError], None] | None = None,
        progress: bool = False,
    ) -> Timeline | list[Timeline] | None:
        """Scores per window of ``window`` seconds every ``hop`` seconds, and merged events.

        Windows cover the whole recording (the last one aligned to its end); each is
        scored as ``predict`` scores a clip. Consecutive windows where a label reaches
        ``threshold`` become one :class:`Event` (see :func:`merge_events`).
        """
        _check_aggregate(aggregate)
        if not (window > 0 and hop > 0):
            raise ConfigError(f"timeline window and hop must be positive seconds, got {window} and {hop}")
        items, single = _items(audio, sample_rate)
        rate = self.members[0].rate

        def segments(num_samples: int) -> list[tuple[float, float]]:
            spans = window_spans(num_samples, max(1, round(window * rate)), max(1, round(hop * rate)))
            return [(a / rate, b / rate) for a, b in spans]

        records = self._run(items, segments, None, "probs", on_error, progress)
        out = []
        for rec in records:
            windows = []
            for s, (start, end) in enumerate(rec.segments):
                scores = self._combine(rec, s, aggregate)
                windows.append(Window(start, end, scores, _top(scores, self.labels, top_k)))
            events = merge_events(windows, self.labels, threshold)
            out.append(Timeline(rec.path, rec.duration, list(self.labels), windows, events))
        return _result(out, single)

    def embed(
        self,
        audio: Audio | Sequence[Audio],
        sample_rate: int | None = None,
        *,
        tokens: bool = False,
        hop: float | None = None,
        on_error: Callable[[AstAudioError], None] | None = None,
        progress: bool = False,
    ) -> Embedding | list[Embedding] | None:
        """The pooled embedding (mean of the ``cls`` and ``dist`` outputs) of each recording.

        Long recordings: one embedding per model window (``hop`` seconds apart, default half
        a window) and ``embedding`` their mean. ``tokens=True`` adds the token grids
        ``[windows, f_dim, t_dim, dim]``. Needs a single checkpoint (members of an ensemble
        may have different widths).
        """
        if len(self.members) > 1:
            raise ConfigError("embed needs a single checkpoint, not an ensemble")
        items, single = _items(audio, sample_rate)
        records = self._run(items, None, hop, "tokens" if tokens else "embed", on_error, progress)
        out = []
        for rec in records:
            rows = rec.rows[0][0]
            pooled = np.stack([r[0] for r in rows]) if tokens else np.stack(rows)  # (W, D)
            grids = np.stack([r[1] for r in rows]) if tokens else None  # (W, f, t, D)
            out.append(Embedding(rec.path, pooled.mean(axis=0), rec.duration, rec.spans[0][0], pooled, grids))
        return _result(out, single)

    def attention(
        self,
        audio: Audio,
        sample_rate: int | None = None,
        *,
        start: float = 0.0,
        method: str = "rollout",
        top_k: int = 5,
        member: int = 0,
    ) -> AttentionMap:
        """Attention of one model window (starting ``start`` seconds in) of member ``member``.

        The window is what the model sees: ``input_tdim`` frames, padded as in training
        when the recording ends earlier.
        """
        items, single = _items(audio, sample_rate)
        if not single:
            raise ConfigError("attention takes one recording")
        m = self.members[member]
        wave = _load(items[0], m.rate)
        a = min(max(0, round(start * m.rate)), max(0, len(wave) - 1))
        chunk = wave[a : a + m.window]
        x = waveform_to_input(chunk.to(self.device), m.features).unsqueeze(0)  # (1, T, F)
        with torch.inference_mode(), self._autocast():
            logits, grid = attention_grid(m.model, x, method)
            spread = grid_to_frames(grid, m.model)  # (1, T, F)
            scores = self._probs(m, logits)[0].float().cpu().numpy()
        return AttentionMap(
            items[0].path, a / m.rate, (a + len(chunk)) / m.rate, method, x[0].float().cpu().numpy(),
            grid[0].float().cpu().numpy(), spread[0].float().cpu().numpy(), _top(scores, self.labels, top_k),
            frame_sizes(m.rate)[1] / m.rate,
        )  # fmt: skip

    def plot(self, audio: Audio, out: str | os.PathLike, sample_rate: int | None = None, **kwargs) -> Path:
        """:meth:`attention` then :func:`plot_attention` into the PNG ``out``."""
        return plot_attention(self.attention(audio, sample_rate, **kwargs), out)

    # ----------------------------------------------------------------- the engine

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast)

    def _model_fn(self, m: _Member, kind: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """``m.model`` (``kind="forward"``: logits) or ``m.model.forward_tokens`` (``"tokens"``),
        through ``torch.compile`` when asked, compiled on first use."""
        fn = m.model if kind == "forward" else m.model.forward_tokens
        if not self.compile:
            return fn
        if kind not in m.compiled:
            m.compiled[kind] = torch.compile(fn, dynamic=False)
        return m.compiled[kind]

    def _probs(self, member: _Member, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return torch.sigmoid(logits) if member.model.info.multilabel else torch.softmax(logits, dim=-1)

    def _combine(self, rec: _Record, segment: int, aggregate: str) -> np.ndarray:
        """Aggregate each member's windows of ``segment`` over time, then average the members."""
        per_member = []
        for rows in rec.rows:
            stacked = np.stack(rows[segment])  # (W, C)
            per_member.append(stacked.max(axis=0) if aggregate == "max" else stacked.mean(axis=0))
        return np.mean(per_member, axis=0) if len(per_member) > 1 else per_member[0]

    def _loaded(
        self, items: list[_Item], on_error, progress: bool
    ) -> Iterator[tuple[_Item, dict[int, torch.Tensor]]]:
        """Each item decoded at every sample rate the members need; failures go to ``on_error``."""
        from tqdm.auto import tqdm

        rates = list(dict.fromkeys(m.rate for m in self.members))
        with tqdm(total=len(items), unit="file", disable=not progress, leave=False) as bar:
            for item in items:
                try:
                    waves = {rate: _load(item, rate) for rate in rates}
                except AstAudioError as err:
                    if on_error is None:
                        raise
                    on_error(err)
                else:
                    yield item, waves
                bar.update(1)

    def _run(self, items, segments_for, hop, output: str, on_error, progress) -> list[_Record]:
        """Every model window of every item through every member, in shared batches.

        ``segments_for(num_samples)`` gives the item's segments in seconds (``None``: the
        whole recording is one segment). Within a segment each member takes its own model
        windows; ``output`` is ``"probs"``, ``"embed"`` or ``"tokens"``.
        """
        records: list[_Record] = []
        pending: list[list] = [[] for _ in self.members]
        with torch.inference_mode():
            for item, waves in self._loaded(items, on_error, progress):
                first = self.members[0]
                duration = len(waves[first.rate]) / first.rate
                n = len(waves[first.rate])
                segments = segments_for(n) if segments_for else [(0.0, duration)]
                rec = _Record(
                    item.path, duration, segments,
                    [[[] for _ in segments] for _ in self.members], [[[] for _ in segments] for _ in self.members],
                )  # fmt: skip
                records.append(rec)
                for mi, m in enumerate(self.members):
                    wave = waves[m.rate]
                    for si, (s0, s1) in enumerate(segments):
                        a, b = round(s0 * m.rate), min(len(wave), round(s1 * m.rate))
                        for c0, c1 in window_spans(max(1, b - a), m.window, m.hop(hop)):
                            pending[mi].append((rec, si, wave[a + c0 : a + c1]))
                            rec.spans[mi][si].append(((a + c0) / m.rate, (a + c1) / m.rate))
                            if len(pending[mi]) >= self.batch_size:
                                self._flush(m, mi, pending[mi], output)
            for mi, m in enumerate(self.members):
                self._flush(m, mi, pending[mi], output)
        return records

    def _flush(self, m: _Member, mi: int, batch: list, output: str) -> None:
        """Features and model outputs of the pending windows of member ``m``; appended to their records."""
        if not batch:
            return
        by_length: dict[int, list[int]] = {}
        for j, (_, _, wave) in enumerate(batch):
            by_length.setdefault(len(wave), []).append(j)
        feats: list[torch.Tensor | None] = [None] * len(batch)
        for idx in by_length.values():  # windows of equal length share one fbank call
            waves = torch.stack([batch[j][2] for j in idx]).to(self.device)  # (n, S)
            x = waveform_to_input(waves, m.features)  # (n, T, F)
            for k, j in enumerate(idx):
                feats[j] = x[k]
        x = torch.stack(feats)  # (B, T, F)
        n = len(batch)
        if self.compile and n < self.batch_size:  # one static shape: zero windows, outputs dropped below
            x = torch.cat([x, x.new_zeros(self.batch_size - n, *x.shape[1:])])
        with self._autocast():
            if output == "probs":
                rows = self._probs(m, self._model_fn(m, "forward")(x)[:n]).cpu().numpy()  # (B, C)
            else:
                tokens = self._model_fn(m, "tokens")(x)[:n].float()  # (B, 2 + f*t, D)
                pooled = ((tokens[:, 0] + tokens[:, 1]) / 2).cpu().numpy()  # (B, D), as forward_features
                if output == "tokens":
                    f_dim, t_dim = m.model.config.grid
                    grids = tokens[:, 2:].reshape(n, f_dim, t_dim, -1).cpu().numpy()  # (B, f, t, D)
                    rows = list(zip(pooled, grids, strict=True))
                else:
                    rows = pooled
        for (rec, si, _), row in zip(batch, rows, strict=True):
            rec.rows[mi][si].append(row)
        batch.clear()


# --------------------------------------------------------------------------- precision


def _precision(precision: str | None, autocast: bool) -> str:
    """The precision asked for: ``precision`` (default fp32), ``autocast=True`` meaning bf16."""
    if precision is None:
        return "bf16" if autocast else "fp32"
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if autocast and precision != "bf16":
        raise ConfigError(f"autocast=True means precision 'bf16', but precision {precision!r} was asked for")
    return precision


def _quantize(model: ASTModel, *, inplace: bool) -> ASTModel:
    """``model`` with every ``nn.Linear`` dynamically quantised to int8 (on a deep copy unless ``inplace``)."""
    if not inplace:
        model = copy.deepcopy(model)
    with warnings.catch_warnings():
        # torch (2.13 here) deprecates torch.ao.quantization in favour of torchao and warns on
        # every call, and again for the quantised-tensor constructors it uses. Both still work
        # and torchao is not a dependency, so exactly these two warnings are silenced, here only.
        warnings.filterwarnings(
            "ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning
        )
        warnings.filterwarnings(
            "ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel", category=UserWarning
        )
        return torch.ao.quantization.quantize_dynamic(
            model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True
        )


# --------------------------------------------------------------------------- inputs


def _result(out: list, single: bool):
    """One result (``None`` if it failed) for a single input, else the list."""
    return (out[0] if out else None) if single else out


def _check_aggregate(aggregate: str) -> None:
    if aggregate not in AGGREGATES:
        raise ConfigError(f"unknown aggregate {aggregate!r}; choose one of {', '.join(AGGREGATES)}")


def _items(audio, sample_rate: int | None) -> tuple[list[_Item], bool]:
    """Normalise the accepted inputs to items; ``single`` says whether one result is returned."""

    def one(obj) -> _Item:
        if isinstance(obj, str | os.PathLike):
            return _Item(os.fspath(obj))
        if isinstance(obj, np.ndarray | torch.Tensor):
            if sample_rate is None:
                raise ConfigError("a waveform needs its sample_rate")
            wave = torch.as_tensor(obj).detach().cpu().float()
            if wave.dim() != 1:
                raise ConfigError(f"a waveform must be [samples], got shape {tuple(wave.shape)}")
            return _Item(None, wave, int(sample_rate))
        raise ConfigError(f"audio must be a path or a waveform, got {type(obj).__name__}")

    if isinstance(audio, np.ndarray | torch.Tensor) and audio.ndim == 2:
        return [one(row) for row in audio], False
    if isinstance(audio, list | tuple):
        return [one(obj) for obj in audio], False
    return [one(audio)], True


def _load(item: _Item, rate: int) -> torch.Tensor:
    """The item's mono waveform ``[samples]`` at ``rate``."""
    if item.path is not None:
        return load_audio(item.path, sample_rate=rate)
    wave = item.waveform
    assert wave is not None and item.sample_rate is not None
    if wave.numel() == 0:
        raise ConfigError("empty waveform (no samples)")
    if not torch.isfinite(wave).all():
        raise ConfigError("waveform contains NaN or Inf samples")
    return resample(wave, item.sample_rate, rate) if item.sample_rate != rate else wave
