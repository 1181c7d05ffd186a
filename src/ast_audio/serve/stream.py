"""Live tagging for ``WS /api/stream``: audio chunks in, scores and events out.

:func:`live_updates` is the seam between the service and the library's streaming: a loop
over :meth:`AudioTagger.stream` (the detection frames, windows and post-processing of
``timeline``, so a recording streamed gets the events ``timeline`` finds in it) that turns
its updates into the page's messages. ``hop`` is the stream's (default the tagger's
detection hop, :meth:`AudioTagger.frame_grid`), ``threshold`` the post-processing's on
threshold (default: the checkpoint's calibrated thresholds, else 0.5). The service runs
the generator on a thread of its own and passes ``on_model``, which runs each model call on
its batching queue's worker thread (``Batcher.on_model_thread``), so the model is never
used by two threads at once.

Messages (JSON objects; times in seconds since the stream began), in time order:

- ``{"type": "scores", "start", "end", "labels": [{"rank", "label", "score"}...]}`` every
  hop: the scores of the detection frame ``[start, end)`` (its window centred on it);
- ``{"type": "event", "state": "start", "label", "start", "score"}`` when a label starts;
- ``{"type": "event", "state": "end", "label", "start", "end", "peak"}`` when it ends (open
  events end with the stream); ``score`` and ``peak`` are the highest smoothed scores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np

from ..infer.engine import AudioTagger
from ..infer.events import PostProcessing
from ..infer.results import FrameScores

__all__ = ["live_updates"]


def live_updates(
    tagger: AudioTagger,
    chunks: Iterable[np.ndarray],
    sample_rate: int,
    *,
    hop: float | None = None,
    threshold: float | None = None,
    top_k: int = 3,
    on_model: Callable[[Callable[[], np.ndarray]], np.ndarray] | None = None,
) -> Iterator[dict]:
    """Messages (see the module notes) for mono float32 ``chunks`` at ``sample_rate``.

    ``on_model(fn)`` runs each model call ``fn()`` (default: on this thread).
    """
    starts: dict[int, float] = {}  # label index -> start of its open event
    updates = tagger.stream(chunks, sample_rate, hop=hop, post=PostProcessing(threshold), top_k=top_k,
                            on_model=on_model)  # fmt: skip
    for update in updates:
        if isinstance(update, FrameScores):
            yield {"type": "scores", **update.to_json()}
        elif update.kind == "start":
            starts[update.index] = update.time
            yield {"type": "event", "state": "start", "label": update.label, "start": round(update.time, 3),
                   "score": round(update.score, 6)}  # fmt: skip
        else:
            yield {"type": "event", "state": "end", "label": update.label, "start": round(starts.pop(update.index), 3),
                   "end": round(update.time, 3), "peak": round(update.score, 6)}  # fmt: skip
