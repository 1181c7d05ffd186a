"""Window spans over a recording, and events merged from consecutive windows.

Pure functions of sample counts and scores (no model, no audio), shared by the model
windows of a clip and the windows of a timeline.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError
from .results import Event, Window

__all__ = ["DEFAULT_WINDOWS", "merge_events", "window_spans"]

DEFAULT_WINDOWS = (10.0, 5.0)  # (window, hop) seconds of ``timeline(method="windows")``: AudioSet's clip length, half overlapping


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
