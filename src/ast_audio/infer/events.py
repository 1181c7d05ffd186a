"""Sound events from frame scores: the post-processing of sound event detection (SED).

Frame scores ``[frames, classes]`` (one row every ``hop`` seconds) become events in four
steps, each a small pure function of numpy arrays, as DCASE task 4 systems do it:

1. :func:`median_filter` smooths each class's scores over ``median`` seconds (an odd
   number of frames, edges repeated), so a one-frame dip or spike does not split or make
   an event;
2. :func:`hysteresis` switches a class on where its smoothed score reaches the ``on``
   threshold and off only where it falls below ``off`` (``off_ratio * on``), so a score
   hovering around one threshold does not flicker;
3. :func:`merge_gaps` joins two events of a class separated by less than ``min_gap``;
4. :func:`drop_short` removes events shorter than ``min_duration``.

:class:`EventTracker` does the same frame by frame for live audio and gives exactly the
same events (tested on random scores), each as soon as it can be known: a ``start`` once
the event has lasted ``min_duration``, an ``end`` once ``min_gap`` has passed without the
class coming back.

Defaults (:class:`PostProcessing`) and why: ``on`` 0.5 (the probability midpoint; a
checkpoint's calibrated per-class thresholds replace it), ``off_ratio`` 0.75 (off at
0.375 for 0.5: wide enough to ride over the dips of a window sliding off a sound),
``median`` 0.75 s (9 frames at the default 0.1 s hop; DCASE baselines filter 0.45-1 s),
``min_duration`` 0.25 s (a blip shorter than a quarter second is not reported) and
``min_gap`` 0.5 s (a sound interrupted for less than half a second is one event, the
"counted several times" complaint of overlapping windows).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..base.checks import check_number
from ..errors import ConfigError
from .frames import MAX_SECONDS
from .results import Event

__all__ = [
    "EventChange",
    "EventTracker",
    "PostProcessing",
    "calibrate_event_thresholds",
    "calibrate_thresholds",
    "detect_events",
    "drop_short",
    "hysteresis",
    "median_filter",
    "merge_gaps",
    "runs",
]


MAX_MEDIAN = 60.0  # seconds: the longest median filter (its cost is frames x its length); events are shorter
MEDIAN_ELEMENTS = 1 << 22  # scores sorted at once by the median filter (32 MB of float64)


@dataclass(frozen=True)
class PostProcessing:
    """How frame scores become events; seconds are turned into frames at the hop.

    ``threshold``: the on threshold, one for all classes or one per class; ``None`` means the
    checkpoint's calibrated thresholds, or 0.5 without them.
    """

    threshold: float | Sequence[float] | None = None
    off_ratio: float = 0.75
    median: float = 0.75
    min_duration: float = 0.25
    min_gap: float = 0.5

    def __post_init__(self) -> None:
        # finite first (nan passes every comparison below as False), then the range of each
        for name in ("off_ratio", "median", "min_duration", "min_gap"):
            check_number(getattr(self, name), name, high=MAX_MEDIAN if name == "median" else MAX_SECONDS)
        if self.threshold is not None:
            for t in np.atleast_1d(np.asarray(self.threshold, dtype=object)):
                check_number(t, "threshold", low=0, high=1)
        if not 0 < self.off_ratio <= 1:
            raise ConfigError(f"off_ratio must be in (0, 1], got {self.off_ratio}")
        if min(self.median, self.min_duration, self.min_gap) < 0:
            raise ConfigError("median, min_duration and min_gap must not be negative")

    def frames(self, hop: float) -> tuple[int, int, int]:
        """``(median, min_duration, min_gap)`` in frames of ``hop`` seconds (the median odd, >= 1)."""
        k = max(1, round(self.median / hop))
        return k + 1 - k % 2, round(self.min_duration / hop), round(self.min_gap / hop)

    def thresholds(self, classes: int, calibrated: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per-class ``(on, off)`` thresholds ``[classes]`` each."""
        chosen = self.threshold if self.threshold is not None else calibrated
        on = np.asarray(0.5 if chosen is None else chosen, dtype=np.float64)
        if on.ndim and on.shape != (classes,):
            raise ConfigError(f"{on.size} thresholds for {classes} classes")
        on = np.broadcast_to(on, (classes,)).copy()
        return on, on * self.off_ratio


def calibrate_thresholds(scores: np.ndarray, targets: np.ndarray, default: float = 0.5) -> np.ndarray:
    """Per-class thresholds ``[classes]`` that maximise each class's F1 on labelled clips.

    ``scores`` and ``targets`` are ``[clips, classes]`` (probabilities, 0/1). For each class
    the candidates are midpoints between consecutive distinct scores (so a threshold never
    sits on a clip's score); the best F1 wins, ties going to the highest threshold (fewest
    false alarms). A class without a positive clip keeps ``default``.
    """
    out = np.full(scores.shape[1], default, dtype=np.float64)
    for c in range(scores.shape[1]):
        positive = targets[:, c] > 0.5
        if not positive.any():
            continue
        values = np.unique(scores[:, c])
        candidates = np.concatenate([[values[0] / 2], (values[:-1] + values[1:]) / 2, [(values[-1] + 1) / 2]])
        best, best_f1 = default, -1.0
        for t in candidates:
            said = scores[:, c] >= t
            tp = float(np.sum(said & positive))
            f1 = 2 * tp / (said.sum() + positive.sum())
            if f1 >= best_f1:
                best, best_f1 = float(t), f1
        out[c] = best
    return out


EVENT_CANDIDATES = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05, 0.10, ... 0.95


@dataclass
class EventCalibration:
    """What :func:`calibrate_event_thresholds` found: ``thresholds`` ``[classes]``, the
    overall event F1 ``before`` (every class at ``default``) and ``after`` (at the
    thresholds), and per class ``(F1 at default, F1 at its threshold)`` by name."""

    thresholds: np.ndarray
    before: float
    after: float
    class_f1: dict[str, tuple[float, float]]


def calibrate_event_thresholds(
    recordings: Sequence[tuple[str, np.ndarray, float]],
    reference: list[dict],
    hop: float,
    labels: Sequence[str],
    post: PostProcessing = PostProcessing(),
    *,
    ignore: Sequence[int] = (),
    candidates: Sequence[float] = EVENT_CANDIDATES,
    default: float = 0.5,
) -> EventCalibration:
    """Per-class on thresholds that maximise each class's event-based F1 on labelled recordings.

    ``recordings`` are ``(file name, frame scores [frames, classes], duration)`` as the
    reference (:func:`ast_audio.infer.scoring.read_events` rows) names them. Each candidate
    threshold is applied to every class with the rest of ``post`` (median, hysteresis at
    ``off_ratio`` of it, gaps, minimum duration) and the events scored by sed_eval (collar
    200 ms, offsets max(200 ms, 20%)); a class's F1 depends on its own events only, so each
    class takes its best candidate (ties: the highest, fewest false alarms). Classes without
    a reference event, or never found at any candidate, keep ``default``.
    """
    from dataclasses import replace

    from .scoring import event_f1

    def rows(threshold) -> list[dict]:
        out = []
        for name, scores, duration in recordings:
            for e in detect_events(scores, hop, labels, replace(post, threshold=threshold), duration=duration,
                                   ignore=ignore):  # fmt: skip
                out.append({"filename": name, "onset": e.start, "offset": e.end, "event_label": e.label})
        return out

    present = {r["event_label"] for r in reference if r["event_label"]}
    best = {name: (default, 0.0) for name in labels}
    for t in candidates:
        _, per_class = event_f1(reference, rows(float(t)))
        for name, f1 in per_class.items():
            if name in present and name in best and f1 > 0 and f1 >= best[name][1]:
                best[name] = (float(t), f1)
    thresholds = np.array([best[name][0] for name in labels], dtype=np.float64)
    before, before_class = event_f1(reference, rows(default))
    after, after_class = event_f1(reference, rows(thresholds))
    class_f1 = {name: (before_class.get(name, 0.0), after_class.get(name, 0.0)) for name in labels if name in present}
    return EventCalibration(thresholds, before, after, class_f1)


def median_filter(scores: np.ndarray, k: int) -> np.ndarray:
    """Each column of ``scores`` ``[frames, classes]`` median-filtered over ``k`` (odd) frames, edges repeated."""
    if k <= 1 or len(scores) == 0:
        return scores.copy()
    h = k // 2
    padded = np.concatenate([np.repeat(scores[:1], h, 0), scores, np.repeat(scores[-1:], h, 0)])  # (T + 2h, C)
    windows = np.lib.stride_tricks.sliding_window_view(padded, k, axis=0)  # (T, C, k), a view
    rows = max(1, MEDIAN_ELEMENTS // (k * scores.shape[1]))  # np.median copies what it sorts: a bounded block at a time
    return np.concatenate([np.median(windows[a : a + rows], axis=-1) for a in range(0, len(scores), rows)])


def hysteresis(scores: np.ndarray, on: np.ndarray, off: np.ndarray) -> np.ndarray:
    """Active frames ``[frames, classes]``: on where a score reaches ``on``, off where it falls below ``off``."""
    active = np.zeros(scores.shape, dtype=bool)
    state = np.zeros(scores.shape[1], dtype=bool)
    for i, row in enumerate(scores):
        state = np.where(state, row >= off, row >= on)
        active[i] = state
    return active


def runs(active: np.ndarray) -> list[tuple[int, int, int]]:
    """``(class, first frame, one past the last)`` of each run of active frames, by class then time."""
    out = []
    for c in range(active.shape[1]):
        edges = np.diff(np.concatenate([[0], active[:, c].astype(np.int8), [0]]))
        out += [(c, int(a), int(b)) for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True)]
    return out


def merge_gaps(spans: list[tuple[int, int, int]], gap: int) -> list[tuple[int, int, int]]:
    """Runs of one class less than ``gap`` frames apart joined (``spans`` by class then time)."""
    out: list[tuple[int, int, int]] = []
    for c, a, b in spans:
        if out and out[-1][0] == c and a - out[-1][2] < gap:
            out[-1] = (c, out[-1][1], b)
        else:
            out.append((c, a, b))
    return out


def drop_short(spans: list[tuple[int, int, int]], min_frames: int) -> list[tuple[int, int, int]]:
    """Runs of at least ``min_frames`` frames."""
    return [(c, a, b) for c, a, b in spans if b - a >= min_frames]


def detect_events(
    scores: np.ndarray,
    hop: float,
    labels: Sequence[str],
    post: PostProcessing = PostProcessing(),
    *,
    duration: float | None = None,
    calibrated: Sequence[float] | None = None,
    ignore: Sequence[int] = (),
) -> list[Event]:
    """Events (seconds, sorted by onset) from frame scores ``[frames, classes]``, one row every ``hop`` s.

    Frame ``i`` covers ``[i * hop, (i + 1) * hop)``; an event ends at ``duration`` at most.
    Classes in ``ignore`` (a "nothing" class) never make events. ``peak`` is the highest
    smoothed score inside the event.
    """
    k, min_frames, gap = post.frames(hop)
    on, off = post.thresholds(scores.shape[1], calibrated)
    smooth = median_filter(scores, k)
    spans = drop_short(merge_gaps(runs(hysteresis(smooth, on, off)), gap), min_frames)
    end = duration if duration is not None else len(scores) * hop
    events = [
        Event(labels[c], c, a * hop, min(b * hop, end), float(smooth[a:b, c].max()))
        for c, a, b in spans
        if c not in ignore
    ]
    events.sort(key=lambda e: (e.start, -e.peak, e.index))
    return events


@dataclass(frozen=True)
class EventChange:
    """An event opening (``kind="start"``, ``time`` its onset) or closing (``"end"``, its
    offset), in seconds from the start of the stream; ``score`` is the highest smoothed
    score of the event so far."""

    kind: str
    label: str
    index: int
    time: float
    score: float

    def to_json(self) -> dict:
        return {"event": self.kind, "label": self.label, "time": round(self.time, 3), "score": round(self.score, 6)}


@dataclass
class _Open:
    start: int  # first active frame
    end: int  # one past the last active frame
    active: bool
    confirmed: bool
    peak: float


class EventTracker:
    """:func:`detect_events` frame by frame: :meth:`push` one row of scores ``[classes]`` at a
    time, :meth:`finish` at the end; both return the :class:`EventChange` s now known.

    The median filter needs ``median // 2`` frames of look-ahead, so changes come that many
    frames late (plus ``min_duration`` for a start and ``min_gap`` for an end).
    """

    def __init__(self, labels: Sequence[str], hop: float, post: PostProcessing = PostProcessing(), *,
                 calibrated: Sequence[float] | None = None, ignore: Sequence[int] = ()):  # fmt: skip
        self.labels, self.hop, self.ignore = list(labels), hop, set(ignore)
        self.k, self.min_frames, self.gap = post.frames(hop)
        self.on, self.off = post.thresholds(len(self.labels), calibrated)
        self.raw: list[np.ndarray] = []  # every frame so far (the median's window reads back and ahead)
        self.done = 0  # frames smoothed and tracked
        self.open: dict[int, _Open] = {}
        self.duration: float | None = None

    def push(self, scores: np.ndarray) -> list[EventChange]:
        self.raw.append(np.asarray(scores, dtype=np.float64))
        h = self.k // 2
        out: list[EventChange] = []
        while self.done + h < len(self.raw):
            out += self._step(self.done)
        return out

    def finish(self, duration: float | None = None) -> list[EventChange]:
        """The remaining frames (edges repeated, as offline) and every open event closed."""
        self.duration = duration
        out: list[EventChange] = []
        while self.done < len(self.raw):
            out += self._step(self.done)
        for c in sorted(self.open):
            out += self._close(c)
        return out

    def _smoothed(self, i: int) -> np.ndarray:
        h, last = self.k // 2, len(self.raw) - 1
        rows = [self.raw[min(max(j, 0), last)] for j in range(i - h, i + h + 1)]
        return np.median(np.stack(rows), axis=0) if self.k > 1 else rows[0]

    def _step(self, i: int) -> list[EventChange]:
        row = self._smoothed(i)
        self.done = i + 1
        out = []
        for c in range(len(self.labels)):
            v, ev = float(row[c]), self.open.get(c)
            if ev is not None and ev.active:
                if v >= self.off[c]:
                    ev.end, ev.peak = i + 1, max(ev.peak, v)
                else:
                    ev.active = False
            elif v >= self.on[c]:
                if ev is not None and i - ev.end < self.gap:  # back within the gap: the same event
                    ev.active, ev.end, ev.peak = True, i + 1, max(ev.peak, v)
                else:
                    if ev is not None:
                        out += self._close(c)
                    ev = self.open[c] = _Open(i, i + 1, True, False, v)
            if ev is not None and not ev.confirmed and ev.end - ev.start >= self.min_frames:
                ev.confirmed = True
                if c not in self.ignore:
                    out.append(EventChange("start", self.labels[c], c, ev.start * self.hop, ev.peak))
            if ev is not None and not ev.active and i + 1 - ev.end >= self.gap and c in self.open:
                out += self._close(c)
        return out

    def _close(self, c: int) -> list[EventChange]:
        ev = self.open.pop(c)
        if not ev.confirmed or c in self.ignore:
            return []
        end = ev.end * self.hop if self.duration is None else min(ev.end * self.hop, self.duration)
        return [EventChange("end", self.labels[c], c, end, ev.peak)]

