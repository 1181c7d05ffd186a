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

from ..errors import ConfigError

__all__ = ["DEFAULT_HOP", "DEFAULT_WINDOW", "FrameGrid"]

DEFAULT_HOP = 0.1  # seconds between frames: onsets to a tenth of a second, inside DCASE's 200 ms collar
DEFAULT_WINDOW = 0.5  # seconds seen per frame (at most the model's input): a wider window smears onsets


@dataclass(frozen=True)
class FrameGrid:
    """Frames of ``hop`` seconds scored by windows of ``window`` seconds, at ``rate`` Hz."""

    hop: float
    window: float
    rate: int

    def __post_init__(self) -> None:
        if not (self.hop > 0 and self.window > 0):
            raise ConfigError(f"detection window and hop must be positive seconds, got {self.window} and {self.hop}")

    @property
    def hop_samples(self) -> int:
        return max(1, round(self.hop * self.rate))

    @property
    def window_samples(self) -> int:
        return max(1, round(self.window * self.rate))

    def count(self, num_samples: int) -> int:
        """Frames of a recording of ``num_samples`` (at least one)."""
        return max(1, math.ceil(num_samples / self.hop_samples))

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
