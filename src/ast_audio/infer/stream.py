"""Live tagging: :meth:`AudioTagger.stream` over audio blocks as they arrive.

Blocks of any size (numpy or torch, ``[samples]`` or ``[samples, channels]``, float in
[-1, 1] or int16) at ``sample_rate`` are averaged to mono, resampled chunk by chunk to each
member's rate (soxr's streaming resampler) and appended to a buffer. A frame of the
detection grid (:class:`~.frames.FrameGrid`) is scored as soon as the whole of its
centred window has arrived, so a frame's scores come ``window / 2 + hop / 2`` seconds of
audio after its start; the post-processing (:class:`~.events.EventTracker`) then adds
its own look-ahead (the median filter's half width) before an event opens or closes.
When the blocks end, the last frames are scored with their windows cut at the end and
every open event is closed, exactly as offline.

What it yields, in time order:

- :class:`~.results.FrameScores` (``start``, ``end``, ``scores [label_dim]``, top-k
  ``labels``, ``known`` with an open-set decision) for every frame; an unknown frame
  counts as no class for the events;
- :class:`~.events.EventChange` (``kind`` ``"start"``/``"end"``, ``label``, ``index``,
  ``time`` in seconds from the first sample, ``score``) when an event opens or closes;
  ``to_json()`` is the line ``ast-audio listen`` prints.

``frames_per_call`` frames are scored together (one batch): a large model on a CPU reads
all its weights for every forward of a few tokens, so several short windows in one call
cost little more than one (bench/events.py measures it), at the price of
``frames_per_call - 1`` hops of latency.

Audio older than every window still to come is dropped, so memory stays bounded.

``on_model(fn)``, when given, runs each model call ``fn()`` (and returns its scores): a
caller that must keep the model on a thread of its own (the service's batching queue) makes
it run there; everything else stays on the thread iterating the stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from ..errors import ConfigError
from .events import EventChange, EventTracker, PostProcessing
from .frames import FrameGrid
from .results import FrameScores, top_labels

__all__ = ["as_block", "stream_events"]


def as_block(chunk: np.ndarray | torch.Tensor) -> np.ndarray:
    """One block as mono float32 ``[samples]`` (int16 scaled to [-1, 1], channels averaged)."""
    block = chunk.detach().cpu().numpy() if isinstance(chunk, torch.Tensor) else np.asarray(chunk)
    if block.dtype == np.int16:
        block = block.astype(np.float32) / 32768.0
    block = block.astype(np.float32, copy=False)
    if block.ndim == 2:
        block = block.mean(axis=1)
    if block.ndim != 1:
        raise ConfigError(f"an audio block must be [samples] or [samples, channels], got shape {block.shape}")
    if not np.isfinite(block).all():
        raise ConfigError("audio block contains NaN or Inf samples")
    return block


class _Buffer:
    """One member rate's samples: resampled as they come, the oldest dropped when no longer needed."""

    def __init__(self, in_rate: int, rate: int):
        import soxr

        self.resampler = None if in_rate == rate else soxr.ResampleStream(in_rate, rate, 1, dtype="float32", quality="HQ")
        self.data = np.zeros(0, dtype=np.float32)
        self.offset = 0  # samples dropped from the front
        self.total = 0  # samples received so far

    def add(self, block: np.ndarray, last: bool = False) -> None:
        if self.resampler is not None:
            block = self.resampler.resample_chunk(block, last=last)
        self.data = np.concatenate([self.data, block.astype(np.float32, copy=False)])
        self.total += len(block)

    def view(self, keep_from: int) -> torch.Tensor:
        """The samples from absolute index ``keep_from`` on, older ones dropped."""
        cut = max(0, keep_from - self.offset)
        if cut:
            self.data, self.offset = self.data[cut:], self.offset + cut
        return torch.from_numpy(self.data)


def stream_events(tagger, chunks: Iterable, sample_rate: int, grid: FrameGrid, post: PostProcessing,
                  top_k: int = 5, frames_per_call: int = 1,
                  on_model: Callable[[Callable[[], np.ndarray]], np.ndarray] | None = None,
                  ) -> Iterator[FrameScores | EventChange]:  # fmt: skip
    """The generator behind :meth:`AudioTagger.stream` (``tagger`` is the tagger)."""
    if sample_rate is None or sample_rate <= 0:
        raise ConfigError(f"stream needs the blocks' positive sample_rate, got {sample_rate}")
    rates = list(dict.fromkeys(m.rate for m in tagger.members))
    buffers = {rate: _Buffer(int(sample_rate), rate) for rate in rates}
    tracker = EventTracker(tagger.labels, grid.hop, post, calibrated=tagger.thresholds, ignore=tagger.ignored)
    grids = {rate: FrameGrid(grid.hop, grid.window, rate) for rate in rates}
    state = {"next": 0}

    def score(frames: list[int], total: int | None) -> Iterator[FrameScores | EventChange]:
        if not frames:
            return
        # Each buffer from the earliest sample these frames need, re-based so spans index it.
        waves, shifted = {}, {}
        for rate, buf in buffers.items():
            start = max(0, grids[rate].first(frames[0]))
            waves[rate] = buf.view(start)
            shifted[rate] = buf.offset

        def forward() -> tuple:  # inference mode is per thread: entered where the model runs
            with torch.inference_mode():  # and not held across the yields (the caller's code runs between them)
                return _shifted_probs(tagger, waves, shifted, frames, grid, total)

        probs, known = forward() if on_model is None else on_model(forward)
        for k, (i, row) in enumerate(zip(frames, probs, strict=True)):
            end = (i + 1) * grid.hop if total is None else min((i + 1) * grid.hop, total / grid.rate)
            is_known = None if known is None else bool(known[k])
            yield FrameScores(i * grid.hop, end, row, top_labels(row, tagger.labels, top_k), is_known)
            yield from tracker.push(row if is_known is not False else 0 * row)  # an unknown frame: no class

    for chunk in chunks:
        block = as_block(chunk)
        for buf in buffers.values():
            buf.add(block)
        ready = []
        while all(buffers[r].total >= grids[r].needed(state["next"] + len(ready)) for r in rates):
            ready.append(state["next"] + len(ready))
        if len(ready) < frames_per_call:
            continue  # wait for a group: one forward of several windows costs about what one costs
        state["next"] += len(ready)
        yield from score(ready, None)
    for buf in buffers.values():
        buf.add(np.zeros(0, dtype=np.float32), last=True)
    total = buffers[grid.rate].total
    if total == 0:
        return
    yield from score(list(range(state["next"], grid.count(total))), total)
    yield from tracker.finish(total / grid.rate)


def _shifted_probs(tagger, waves, offsets, frames, grid, total):
    """The tagger's frame scores on buffers whose first sample is absolute sample ``offsets[rate]``."""
    return tagger._frame_probs({rate: _Offset(w, offsets[rate]) for rate, w in waves.items()}, frames, grid, total)


class _Offset:
    """A waveform whose index 0 is absolute sample ``offset``: slicing takes absolute indices."""

    def __init__(self, wave: torch.Tensor, offset: int):
        self.wave, self.offset = wave, offset

    def __len__(self) -> int:
        return self.offset + len(self.wave)

    def __getitem__(self, s: slice) -> torch.Tensor:
        return self.wave[s.start - self.offset : s.stop - self.offset]
