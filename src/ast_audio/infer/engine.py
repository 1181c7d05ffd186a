"""The tagger: :class:`AudioTagger` and the engine that feeds its model windows in batches.

Every call takes one path, top to bottom (the typed state it fills is in :mod:`.state`):

1. **inputs** -> each recording decoded at every sample rate the members need (``_loaded``);
2. -> **segments** (the whole recording; or the windows of a timeline) -> each member's
   **model windows** inside each segment (``Member.model_windows``);
3. -> **batches** of model windows per member (``Batch``), shared by all recordings;
4. -> **model input** (``Member.model_input``: the one place from waveform to features)
   -> **model** (``_forward``, which :class:`Head` asks for: probabilities, pooled
   embeddings or token grids);
5. -> **per-window outputs**, collected in order in each segment's ``Windows`` accumulators;
6. -> **per-file results** (:class:`Prediction`, :class:`Timeline`, :class:`Embedding`).

Event detection (``timeline``'s default, and ``stream``) scores the frames of a
:class:`~.frames.FrameGrid` through the same model input and forward (``_frame_probs``).
Over 400 lines: the public methods and the one engine they share stay in one file, so
no second copy of the path from waveform to scores can appear.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..base import allocator, runtime
from ..base.checks import check_number
from ..base.plots import plot_attention
from ..data.labels import LabelTable
from ..errors import AstAudioError, ConfigError
from ..features.contract import InputContract
from ..model.ast import ASTModel
from .attention import window_attention
from .events import EventChange, PostProcessing, detect_events
from .frames import DEFAULT_HOP, DEFAULT_WINDOW, FrameGrid, check_frames, check_window_hop
from .inputs import Audio, Input, as_inputs, load_input, one_or_list
from .openset import OpenSet
from .results import AttentionMap, Embedding, Event, FrameScores, Prediction, Timeline, Window, top_labels
from .state import REDUCE, Batch, Head, Member, Outputs, Plan, Record, Segment, Windows, check_aggregate
from .windows import DEFAULT_WINDOWS, merge_events, window_spans

__all__ = ["AGGREGATES", "AudioTagger"]

log = logging.getLogger(__name__)

AGGREGATES = tuple(REDUCE)  # ("max", "mean")


class AudioTagger:
    """Tag, time, embed and explain recordings with one AST checkpoint or an ensemble.

    ``checkpoint`` is anything :func:`~ast_audio.checkpoints.load.load_model` accepts (a file,
    a Hugging Face folder, a published name) or an :class:`ASTModel`, or a list of these:
    an ensemble whose members' probabilities are averaged, each member's outputs matched to
    the first one's labels by name. ``device=None`` picks CUDA when available
    (:func:`ast_audio.base.runtime.pick_device`). ``batch_size`` model windows go through the
    model at once (windows of several files share batches).

    ``precision`` is how the model computes (features are always float32); ``None`` means
    ``"auto"``, or ``"bf16"`` with ``autocast=True``. After construction ``self.precision``
    is the precision in use (never ``"auto"``) and ``self.precision_reason`` why:

    - ``"auto"`` (default): the fast path of the device, chosen at run time and logged
      (:func:`ast_audio.base.runtime.auto_precision`): ``"bf16"`` on a CPU with bf16 matrix
      units (AMX or AVX512-BF16, read from ``/proc/cpuinfo``) or a CUDA device with bf16,
      ``"int8"`` on a CPU without them, ``"fp32"`` on a GPU without bf16; ``AST_AUDIO_PRECISION``
      pins it. Pass ``"fp32"`` where results must equal the reference (calibration, comparisons).
    - ``"fp32"``: float32 throughout, the reference.
    - ``"bf16"``: the model under bfloat16 autocast (``autocast=True`` is a synonym).
      Fast where the hardware has bf16 matrix units (AMX or AVX512-BF16 CPUs, recent
      GPUs); elsewhere emulated and several times slower than fp32 (warned about once).
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
    little from it.

    ``torch.compile`` first spends tens of seconds compiling (per member and per output
    kind), so it pays off on long runs only.

    ``open_set=False`` ignores a checkpoint's "none of these" decision (:mod:`.openset`), so
    results carry no ``known``; an :class:`~.openset.OpenSet` replaces it.

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
        open_set: bool | OpenSet = True,
    ):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        precision = runtime.resolve_precision(precision, autocast)
        sources = list(checkpoint) if isinstance(checkpoint, list | tuple) else [checkpoint]
        if not sources:
            raise ConfigError("AudioTagger needs at least one checkpoint")
        self.device = runtime.device_for(precision, device)
        if self.device.type == "cpu":
            allocator.tune()  # AST_AUDIO_MALLOC=reuse only: freed activations kept for reuse (allocator.py)
        precision, self.precision_reason = runtime.choose_precision(precision, self.device)  # "auto" -> fast path or pin
        self.batch_size = batch_size
        self.precision = precision
        self.autocast = precision == "bf16"
        self.compile = bool(compile)
        self.members = [Member.load(i, source, self.device, precision) for i, source in enumerate(sources)]
        first = self.members[0]
        dims = {m.name: m.model.config.label_dim for m in self.members}
        if len(set(dims.values())) > 1:
            listing = ", ".join(f"{name}: {dim}" for name, dim in dims.items())
            raise ConfigError(f"ensemble members must have the same number of labels; got {listing}")
        info = first.model.info
        self.labels: list[str] = list(
            info.labels or info.label_ids or [f"class {i}" for i in range(first.model.config.label_dim)]
        )
        if info.labels or info.label_ids:  # members' outputs in the first one's order, matched by name
            reference = LabelTable(list(info.label_ids or self.labels), self.labels, source=first.name)
            for m in self.members[1:]:
                m.align_to(reference)
        self.multilabel = info.multilabel
        # "None of these": a single-label checkpoint's calibration or none label, or the one given
        own = OpenSet.of(info.extra, self.labels, first.name) if open_set is True and not self.multilabel else None
        self.open_set = open_set if isinstance(open_set, OpenSet) else own

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
        check_aggregate(aggregate)
        inputs, single = as_inputs(audio, sample_rate)
        out = []
        for rec in self._run(inputs, Plan(Head.PROBS, hop=hop), on_error, progress):
            whole = rec.segments[0]
            scores = whole.scores(aggregate)
            top = top_labels(scores, self.labels, top_k)
            present = None
            if self.thresholds is not None:
                present = [name for name, s, t in zip(self.labels, scores, self.thresholds, strict=True) if s >= t]
            known, score = whole.known(self.open_set, scores, aggregate) if self.open_set else (None, None)
            out.append(Prediction(rec.path, top, scores, rec.duration, whole.members[0].spans, present, known, score))
        return one_or_list(out, single)

    def timeline(
        self,
        audio: Audio | Sequence[Audio],
        window: float | None = None,
        hop: float | None = None,
        *,
        sample_rate: int | None = None,
        threshold: float | Sequence[float] | None = None,
        post: PostProcessing | None = None,
        method: str = "frames",
        top_k: int = 5,
        aggregate: str = "max",
        on_error: Callable[[AstAudioError], None] | None = None,
        progress: bool = False,
    ) -> Timeline | list[Timeline] | None:
        """Sound events in time: scores every ``hop`` seconds and the events found in them.

        ``method="frames"`` (the default): one frame every ``hop`` seconds (default 0.1),
        each scored by a window of ``window`` seconds centred on it (default 0.5 s, at most
        the model's input; a window under half the model's input runs with the position
        grid cut to it, so it costs what its length costs), then the post-processing of
        :mod:`.events` (``post``, with ``threshold`` as a shortcut for its on threshold;
        no threshold: the checkpoint's calibrated ones, else 0.5). ``windows`` are the
        frames. ``background`` and the none label make no events, nor do unknown frames (:mod:`.openset`).

        ``method="windows"``: windows of ``window`` (10) seconds every ``hop`` (5) seconds
        (:data:`~.windows.DEFAULT_WINDOWS`), each scored as ``predict`` scores a clip, and
        consecutive windows where a label reaches ``threshold`` (0.5) merged into one event
        (:func:`merge_events`); ``post`` does not apply.
        """
        check_aggregate(aggregate)
        if method not in ("frames", "windows"):
            raise ConfigError(f"unknown timeline method {method!r}; choose frames or windows")
        inputs, single = as_inputs(audio, sample_rate)
        if method == "frames":
            grid = self.frame_grid(window, hop)
            post = post or PostProcessing()
            if threshold is not None:
                post = replace(post, threshold=threshold)
            out = []
            for item, waves in self._loaded(inputs, on_error, progress):
                length = len(waves[grid.rate])
                with torch.inference_mode():
                    scores, known = self._frame_probs(waves, grid.frames(length, item.path), grid, None, aggregate)
                out.append(self._frames_timeline(item.path, scores, known, grid, length / grid.rate, post, top_k))
            return one_or_list(out, single)
        window, hop = window or DEFAULT_WINDOWS[0], hop or DEFAULT_WINDOWS[1]
        check_window_hop(window, hop)
        out = []
        for rec in self._run(inputs, Plan(Head.PROBS, timeline=(window, hop)), on_error, progress):
            windows = []
            for segment in rec.segments:
                scores = segment.scores(aggregate)
                known = segment.known(self.open_set, scores, aggregate)[0] if self.open_set else None
                windows.append(Window(segment.start, segment.end, scores, top_labels(scores, self.labels, top_k), known))
            attributed = [w if w.known is not False else replace(w, scores=0 * w.scores) for w in windows]
            events = merge_events(attributed, self.labels, 0.5 if threshold is None else threshold)
            out.append(Timeline(rec.path, rec.duration, list(self.labels), windows, events))
        return one_or_list(out, single)

    def stream(
        self,
        chunks: Iterable[np.ndarray | torch.Tensor],
        sample_rate: int,
        *,
        window: float | None = None,
        hop: float | None = None,
        post: PostProcessing | None = None,
        top_k: int = 5,
        frames_per_call: int = 1,
        on_model: Callable[[Callable[[], np.ndarray]], np.ndarray] | None = None,
    ) -> Iterator[FrameScores | EventChange]:
        """Live tagging: audio blocks of any size in, as they arrive; out, in time order, a
        :class:`FrameScores` every ``hop`` seconds and an :class:`EventChange` whenever an
        event opens or closes (see :mod:`.stream`). The frames, windows and post-processing
        are :meth:`timeline`'s, so a recording streamed gives the events ``timeline`` finds
        in it (within one hop). ``frames_per_call`` frames go through the model together
        (more throughput for large models on a CPU, ``frames_per_call - 1`` hops more latency).
        ``on_model(fn)`` runs each model call ``fn()`` and returns its scores (to keep the model
        on a thread of the caller's, as the service's batching queue does).
        """
        from .stream import stream_events

        check_number(frames_per_call, "frames_per_call", low=1, integer=True)
        grid, post = self.frame_grid(window, hop), post or PostProcessing()
        return stream_events(self, chunks, sample_rate, grid, post, top_k, frames_per_call, on_model)

    @property
    def rate(self) -> int:
        """The sample rate the tagger takes audio at: the first member's (waveforms handed in
        without a ``sample_rate``, live input, the service's uploads, timelines' segments)."""
        return self.members[0].rate

    @property
    def thresholds(self) -> list[float] | None:
        """Per-class thresholds calibrated for the (first) checkpoint (its input contract), or ``None``."""
        thresholds = self.members[0].features.thresholds
        return None if thresholds is None else list(thresholds)

    @property
    def ignored(self) -> list[int]:
        """Classes that never make events: those named ``background`` and the open set's none label."""
        none = self.open_set.none_index if self.open_set else None
        return [i for i, name in enumerate(self.labels) if name.strip().lower() == "background" or i == none]

    def frame_grid(self, window: float | None = None, hop: float | None = None) -> FrameGrid:
        """The detection frames at :attr:`rate`: the one place their defaults are settled
        (``timeline``, ``stream``, the CLI and the service all come here). ``None`` means
        :data:`~.frames.DEFAULT_WINDOW` (at most the model's input) and :data:`~.frames.DEFAULT_HOP`."""
        m = self.members[0]
        if window is None:
            window = min(DEFAULT_WINDOW, m.window / m.rate)
        return FrameGrid(DEFAULT_HOP if hop is None else hop, window, self.rate)

    def frame_events(
        self, scores: np.ndarray, hop: float, duration: float, post: PostProcessing | None = None,
        known: np.ndarray | None = None,
    ) -> list[Event]:
        """The events of detection-frame scores ``[frames, C]`` (one row every ``hop`` seconds)
        under ``post`` (default :class:`PostProcessing`), with the checkpoint's calibrated
        thresholds and without the ignored classes: what ``timeline`` does with its frames.
        Frames that ``known`` ``[frames]`` marks unknown are attributed to no class."""
        if known is not None:
            scores = scores * known[:, None]  # (frames, C)
        return detect_events(scores, hop, self.labels, post or PostProcessing(), duration=duration,
                             calibrated=self.thresholds, ignore=self.ignored)  # fmt: skip

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
        inputs, single = as_inputs(audio, sample_rate)
        plan = Plan(Head.TOKENS if tokens else Head.EMBEDDING, hop=hop)
        out = []
        for rec in self._run(inputs, plan, on_error, progress):
            windows = rec.segments[0].members[0]
            pooled = np.stack(windows.pooled)  # (W, D)
            grids = np.stack(windows.tokens) if tokens else None  # (W, f, t, D)
            out.append(Embedding(rec.path, pooled.mean(axis=0), rec.duration, windows.spans, pooled, grids))
        return one_or_list(out, single)

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
        return window_attention(self, audio, sample_rate, start, method, top_k, self.members[member])

    def plot(self, audio: Audio, out: str | os.PathLike, sample_rate: int | None = None, **kwargs) -> Path:
        """:meth:`attention` then :func:`~ast_audio.base.plots.plot_attention` into the PNG ``out``."""
        return plot_attention(self.attention(audio, sample_rate, **kwargs), out)

    # ----------------------------------------------------------------- the engine

    def _run(self, inputs: list[Input], plan: Plan, on_error, progress: bool) -> list[Record]:
        """Every model window of every input through every member, in shared batches."""
        batches = [Batch(m) for m in self.members]
        records: list[Record] = []
        with torch.inference_mode():
            for item, waves in self._loaded(inputs, on_error, progress):
                num_samples = len(waves[self.rate])
                segments = [
                    Segment(s0, s1, [Windows() for _ in self.members])
                    for s0, s1 in self._segments(num_samples, plan, item.path)
                ]
                records.append(Record(item.path, num_samples / self.rate, segments))
                for segment in segments:
                    for batch, windows in zip(batches, segment.members, strict=True):
                        m, wave = batch.member, waves[batch.member.rate]
                        for a, b in m.model_windows(len(wave), segment.start, segment.end, plan.hop):
                            windows.spans.append((a / m.rate, b / m.rate))
                            batch.add(wave[a:b], windows)
                            if len(batch.waves) >= self.batch_size:
                                self._flush(batch, plan.head)
            for batch in batches:
                self._flush(batch, plan.head)
        return records

    def _segments(self, num_samples: int, plan: Plan, path: str | None) -> list[tuple[float, float]]:
        """``[start, end)`` seconds of the segments of a recording (at :attr:`rate`)."""
        rate = self.rate
        if plan.timeline is None:
            return [(0.0, num_samples / rate)]
        window, hop = plan.timeline
        spans = window_spans(num_samples, max(1, round(window * rate)), max(1, round(hop * rate)))
        check_frames(len(spans), path)
        return [(a / rate, b / rate) for a, b in spans]

    def _loaded(
        self, inputs: list[Input], on_error, progress: bool
    ) -> Iterator[tuple[Input, dict[int, torch.Tensor]]]:
        """Each input decoded at every sample rate the members need; failures go to ``on_error``."""
        from tqdm.auto import tqdm

        rates = list(dict.fromkeys(m.rate for m in self.members))
        with tqdm(total=len(inputs), unit="file", disable=not progress, leave=False) as bar:
            for item in inputs:
                try:
                    waves = {rate: load_input(item, rate) for rate in rates}
                except AstAudioError as err:
                    if on_error is None:
                        raise
                    on_error(err)
                else:
                    yield item, waves
                bar.update(1)

    def _flush(self, batch: Batch, head: Head) -> None:
        """The pending windows of ``batch`` through the model; each output to its accumulator."""
        if not batch.waves:
            return
        out = self._forward(batch.member, self._model_input(batch.member, batch.waves), head)
        for j, windows in enumerate(batch.into):
            windows.add(out, j)
        batch.clear()

    def _model_input(self, m: Member, waves: Sequence, contract: InputContract | None = None) -> torch.Tensor:
        """Model input ``[B, T, F]`` of waveforms ``[samples]`` on the tagger's device (:meth:`Member.model_input`)."""
        return m.model_input(waves, self.device, contract)

    def _forward(self, m: Member, x: torch.Tensor, head: Head) -> Outputs:
        """What ``head`` asks of member ``m`` for model input ``x`` ``[n, T, F]``, as numpy arrays."""
        n = len(x)
        if self.compile and n < self.batch_size:  # one static shape: zero windows, outputs dropped below
            x = torch.cat([x, x.new_zeros(self.batch_size - n, *x.shape[1:])])
        fn = m.function(head, self.compile, x.shape[1])
        with self._autocast():
            if head is Head.PROBS:
                logits = fn(x)[:n]  # (n, C)
                return Outputs(probs=m.probs(logits).cpu().numpy(), logits=logits.float().cpu().numpy())
            tokens = fn(x)[:n].float()  # (n, 2 + f*t, D)
            pooled = m.model.pool(tokens).cpu().numpy()  # (n, D), as forward_features (cls or mean pooling)
            if head is Head.EMBEDDING:
                return Outputs(pooled=pooled)
            f_dim, t_dim = m.model.config.grid
            return Outputs(pooled=pooled, tokens=tokens[:, 2:].reshape(n, f_dim, t_dim, -1).cpu().numpy())

    def _frame_probs(
        self, waves: dict[int, torch.Tensor], frames: Sequence[int], grid: FrameGrid, total: int | None,
        aggregate: str = "max",
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Scores ``[len(frames), C]`` of detection frames (members averaged) and whether each
        frame is known (``None`` without an open set); ``total`` is the recording's length in
        samples at the grid's rate, ``None`` while it is still arriving."""
        per_member, known = [], None
        for m in self.members:
            scale = m.rate / grid.rate
            g = FrameGrid(grid.hop, grid.window, m.rate)
            n = len(waves[m.rate]) if total is None else round(total * scale)
            contract = m.detect_contract(g.window_samples)
            subs, owner = [], []
            for k, i in enumerate(frames):
                a, b = g.span(i, n)
                for c0, c1 in window_spans(b - a, contract.samples, max(1, contract.samples // 2)):
                    subs.append(waves[m.rate][a + c0 : a + c1])
                    owner.append(k)
            outs = [self._forward(m, self._model_input(m, subs[j : j + self.batch_size], contract), Head.PROBS)
                    for j in range(0, len(subs), self.batch_size)] or [Outputs(np.zeros((0, len(self.labels))))]
            probs = np.concatenate([o.probs for o in outs])  # (subs, C)
            owner_arr = np.asarray(owner)
            per_member.append(np.stack([REDUCE[aggregate](probs[owner_arr == k], axis=0) for k in range(len(frames))]))
            if self.open_set is not None and m is self.members[0] and subs:
                sub_known = self.open_set.window_scores(np.concatenate([o.logits for o in outs]))  # (subs,)
                known = np.array([REDUCE[aggregate](sub_known[owner_arr == k]) for k in range(len(frames))])
        scores = np.mean(per_member, axis=0) if len(per_member) > 1 else per_member[0]
        return scores, None if known is None else self.open_set.known(known, scores.argmax(axis=1))

    def _frames_timeline(self, path, scores: np.ndarray, known, grid: FrameGrid, duration: float, post, top_k: int):
        windows = [
            Window(i * grid.hop, min((i + 1) * grid.hop, duration), row, top_labels(row, self.labels, top_k),
                   None if known is None else bool(known[i]))
            for i, row in enumerate(scores)
        ]  # fmt: skip
        events = self.frame_events(scores, grid.hop, duration, post, known)
        return Timeline(path, duration, list(self.labels), windows, events)

    def _autocast(self):
        return runtime.autocast(self.device, self.precision)
