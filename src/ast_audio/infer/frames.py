"""The frame grid of event detection: one score row every ``hop`` seconds, each from a
window of ``window`` seconds centred on its frame.

Frame ``i`` covers ``[i * hop, (i + 1) * hop)``; its window is centred on the frame's
centre and cut at both ends of the recording, so a recording of ``n`` hops has ``n``
frames (the last one possibly partial). Pure integer arithmetic in samples, so the
offline path and the live path (which does not know where the recording ends until it
does) cut exactly the same windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..base.checks import check_number
from ..errors import AudioError

__all__ = ["DEFAULT_HOP", "DEFAULT_WINDOW", "MAX_FRAMES", "MAX_SECONDS", "MIN_HOP", "FrameGrid", "check_frames",
           "check_window_hop"]  # fmt: skip

DEFAULT_HOP = 0.1  # seconds between frames: onsets to a tenth of a second, inside DCASE's 200 ms collar
DEFAULT_WINDOW = 0.5  # seconds seen per frame (at most the model's input): a wider window smears onsets
MIN_HOP = 0.01  # seconds: one feature frame (the fbank's 10 ms shift); finer frames only multiply the work
MAX_SECONDS = 3600.0  # the longest window, hop or post-processing span in seconds any option takes
MAX_FRAMES = 1_000_000  # frames (or timeline windows) of one recording: 27 hours at the default hop


def check_window_hop(window: float, hop: float) -> None:
    """The one rule for the seconds of a timeline's windows (both methods), a stream's and the
    service's: finite, ``0 < window <= MAX_SECONDS``, ``MIN_HOP <= hop <= MAX_SECONDS``;
    else :class:`~ast_audio.errors.ConfigError` naming the option."""
    check_number(window, "window", above=0, high=MAX_SECONDS, unit="seconds")
    check_number(hop, "hop", above=0, high=MAX_SECONDS, unit="seconds")
    check_number(hop, "hop", low=MIN_HOP, unit="seconds")


def check_frames(count: int, path: str | None, limit: int = MAX_FRAMES) -> int:
    """``count`` frames (or windows) of the recording ``path``, or :class:`AudioError` saying
    the limit: checked before the model sees any of them."""
    if count > limit:
        raise AudioError(f"a timeline of {count} windows; at most {limit} (choose a longer hop)", path)
    return count


@dataclass(frozen=True)
class FrameGrid:
    """Frames of ``hop`` seconds scored by windows of ``window`` seconds, at ``rate`` Hz."""

    hop: float
    window: float
    rate: int

    def __post_init__(self) -> None:
        check_window_hop(self.window, self.hop)

    @property
    def hop_samples(self) -> int:
        return max(1, round(self.hop * self.rate))

    @property
    def window_samples(self) -> int:
        return max(1, round(self.window * self.rate))

    def count(self, num_samples: int) -> int:
        """Frames of a recording of ``num_samples`` (at least one)."""
        return max(1, math.ceil(num_samples / self.hop_samples))

    def frames(self, num_samples: int, path: str | None = None, limit: int = MAX_FRAMES) -> range:
        """The frame indices of a whole recording of ``num_samples``, bounded by :func:`check_frames`."""
        return range(check_frames(self.count(num_samples), path, limit))

    def first(self, i: int) -> int:
        """Where frame ``i``'s window would start if the recording had no beginning."""
        return i * self.hop_samples + self.hop_samples // 2 - self.window_samples // 2

    def needed(self, i: int) -> int:
        """Samples that must have arrived before frame ``i`` can be scored (the end unknown)."""
        return self.first(i) + self.window_samples

    def span(self, i: int, num_samples: int) -> tuple[int, int]:
        """``[a, b)`` samples of frame ``i``'s window in a recording of ``num_samples``."""
        a = self.first(i)
        return max(0, a), max(1, min(num_samples, a + self.window_samples))
