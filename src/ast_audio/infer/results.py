"""What :class:`~ast_audio.infer.AudioTagger` returns, and how results become JSON and CSV.

Plain dataclasses of numpy arrays and floats (seconds). ``to_json()`` gives the objects
``ast-audio predict --format json`` prints (scores rounded to 6 digits, times to 3);
``csv_rows()`` the rows under ``CSV_HEADER`` of ``--format csv``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .openset import UNKNOWN

__all__ = ["AttentionMap", "Embedding", "Event", "FrameScores", "Prediction", "Timeline", "Window", "top_labels"]


def top_labels(scores: np.ndarray, names: Sequence[str], k: int) -> list[tuple[str, float]]:
    """The ``k`` highest ``(name, score)`` pairs, highest first (ties in label order)."""
    order = np.argsort(-scores, kind="stable")[: max(0, k)]
    return [(names[i], float(scores[i])) for i in order]


def labels_json(labels: list[tuple[str, float]]) -> list[dict]:
    return [{"rank": r, "label": name, "score": round(score, 6)} for r, (name, score) in enumerate(labels, 1)]


def open_set_label(known: bool | None, labels: list[tuple[str, float]]) -> str | None:
    if known is False:
        return UNKNOWN
    return labels[0][0] if labels else None


def open_set_json(known: bool | None, labels: list[tuple[str, float]], score: float | None = None) -> dict:
    """The open-set fields of a result's JSON: none without an open-set decision."""
    if known is None:
        return {}
    out = {"known": known, "label": open_set_label(known, labels)}
    return out if score is None else out | {"open_set_score": round(score, 6)}


@dataclass
class Prediction:
    """Scores of one recording: ``labels`` are the top-k ``(name, probability)`` pairs,
    ``scores`` all probabilities ``[label_dim]``, ``spans`` the model windows (seconds)
    that were aggregated (of the first member, for an ensemble); ``present``, for a
    checkpoint with calibrated thresholds, the labels whose score reaches theirs (yes/no
    per class). ``known``, for a checkpoint with an open-set decision (:mod:`.openset`),
    says whether the recording is one of the classes at all (``False``: ``label`` is
    ``"unknown"``), ``open_set_score`` is its knownness (``None`` where only a none label decides)."""

    path: str | None
    labels: list[tuple[str, float]]
    scores: np.ndarray
    duration: float
    spans: list[tuple[float, float]] = field(default_factory=list)
    present: list[str] | None = None  # labels at or above their calibrated threshold (None: not calibrated)
    known: bool | None = None  # one of the classes (None: the checkpoint has no open-set decision)
    open_set_score: float | None = None

    CSV_HEADER = ("path", "rank", "label", "score")

    @classmethod
    def csv_header(cls, open_set: bool) -> tuple[str, ...]:
        """The CSV header of a tagger's predictions: a ``known`` column when it has an open-set decision."""
        return (*cls.CSV_HEADER, "known") if open_set else cls.CSV_HEADER

    @property
    def label(self) -> str | None:
        """The answer: the top label, or ``"unknown"`` for a recording that is none of the classes."""
        return open_set_label(self.known, self.labels)

    def to_json(self) -> dict:
        out = {"path": self.path, "duration": round(self.duration, 3), "windows": len(self.spans),
               "labels": labels_json(self.labels)}  # fmt: skip
        if self.present is not None:
            out["present"] = self.present
        return out | open_set_json(self.known, self.labels, self.open_set_score)

    def csv_rows(self) -> list[list]:
        known = [] if self.known is None else [str(self.known).lower()]
        return [[self.path, rank, name, f"{score:.6f}", *known] for rank, (name, score) in enumerate(self.labels, 1)]


@dataclass
class Window:
    """One timeline window: ``[start, end)`` seconds, its probabilities and top-k labels;
    ``known`` as :class:`Prediction`'s (an unknown window makes no event)."""

    start: float
    end: float
    scores: np.ndarray
    labels: list[tuple[str, float]] = field(default_factory=list)
    known: bool | None = None

    def to_json(self) -> dict:
        out = {"start": round(self.start, 3), "end": round(self.end, 3), "labels": labels_json(self.labels)}
        return out | open_set_json(self.known, self.labels)


@dataclass
class Event:
    """A label above threshold in consecutive windows: from the first one's start to the
    last one's end, with the highest score it reached."""

    label: str
    index: int
    start: float
    end: float
    peak: float

    def to_json(self) -> dict:
        start, end = round(self.start, 3), round(self.end, 3)
        return {"label": self.label, "start": start, "end": end, "peak": round(self.peak, 6),
                "onset": start, "offset": end}  # fmt: skip


@dataclass
class Timeline:
    """Window scores of one recording and the events merged from them."""

    path: str | None
    duration: float
    labels: list[str]
    windows: list[Window]
    events: list[Event]

    CSV_HEADER = ("path", "label", "start", "end", "peak", "onset", "offset")  # one row per event

    @property
    def scores(self) -> np.ndarray:
        """All window scores ``[windows, label_dim]``."""
        return np.stack([w.scores for w in self.windows])

    @property
    def known(self) -> np.ndarray | None:
        """Whether each window is one of the classes ``[windows]`` (``None``: no open-set decision)."""
        if not self.windows or self.windows[0].known is None:
            return None
        return np.array([bool(w.known) for w in self.windows])

    def to_json(self) -> dict:
        return {"path": self.path, "duration": round(self.duration, 3),
                "windows": [w.to_json() for w in self.windows], "events": [e.to_json() for e in self.events]}  # fmt: skip

    def csv_rows(self) -> list[list]:
        return [[self.path, e.label, f"{e.start:.3f}", f"{e.end:.3f}", f"{e.peak:.6f}", f"{e.start:.3f}", f"{e.end:.3f}"]
                for e in self.events]  # fmt: skip

    TSV_HEADER = ("filename", "onset", "offset", "event_label")  # DCASE

    def tsv_rows(self) -> list[list]:
        """The events as DCASE rows: ``filename, onset, offset, event_label`` (seconds, 3 decimals)."""
        name = os.path.basename(self.path) if self.path else ""
        return [[name, f"{e.start:.3f}", f"{e.end:.3f}", e.label] for e in self.events]


@dataclass
class FrameScores(Window):
    """What :meth:`AudioTagger.stream` yields every hop: the scores ``[label_dim]`` of the
    frame ``[start, end)`` seconds from the start of the stream, and its top-k labels (a
    :class:`Window` by shape, its own type so a stream's frames tell from its events)."""


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
