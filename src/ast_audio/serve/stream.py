"""Live tagging for ``WS /api/stream``: audio chunks in, scores and events out.

:func:`live_updates` is **the seam** between the service and the library's streaming.
Until :mod:`ast_audio.infer` has ``AudioTagger.stream(chunks, sample_rate)`` (scores every
hop, event starts and ends), it keeps a rolling window itself: the last model window of
audio (``input_tdim`` frames, zero-padded at the start of a stream as in training) is
scored every ``hop`` seconds, and a label starts an event when its score reaches
``threshold`` and ends it in the first window where it falls below. When
``AudioTagger.stream`` exists, this function's body becomes a loop over it that turns its
updates into the same messages; the WebSocket handler and the page stay as they are.
One thing to keep when switching: the service runs this generator on a thread of its own
and scores each window through its batching queue (``predict``), so the model is only
ever used on the queue's worker thread; ``AudioTagger.stream``'s model calls must go there
too (``Batcher.on_model_thread``), or use a tagger of their own.

Within one update, events that end come before events that start.

Messages (JSON objects; times in seconds since the stream began):

- ``{"type": "scores", "start", "end", "labels": [{"rank", "label", "score"}...]}`` every hop;
- ``{"type": "event", "state": "start", "label", "start", "score"}`` when a label starts;
- ``{"type": "event", "state": "end", "label", "start", "end", "peak"}`` when it ends (open
  events end with the stream).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np

from ..infer import AudioTagger, Prediction
from ..infer.results import labels_json

__all__ = ["live_updates"]


def live_updates(
    tagger: AudioTagger,
    chunks: Iterable[np.ndarray],
    sample_rate: int,
    *,
    hop: float = 0.5,
    threshold: float = 0.5,
    top_k: int = 3,
    predict: Callable[[np.ndarray, int], Prediction] | None = None,
) -> Iterator[dict]:
    """Messages (see the module notes) for mono float32 ``chunks`` at ``sample_rate``.

    ``predict(window, sample_rate)`` scores one window (default: ``tagger.predict``; the
    service passes one that goes through its batching queue).
    """
    predict = predict or (lambda wave, rate: tagger.predict(wave, sample_rate=rate, top_k=0))
    member = tagger.members[0]
    window = max(1, round(member.window / member.rate * sample_rate))
    step = max(1, round(hop * sample_rate))
    buffer = np.zeros(0, dtype=np.float32)
    received, next_at = 0, step
    active: dict[int, list[float]] = {}  # label index -> [start, last end, peak]
    for chunk in chunks:
        buffer = np.concatenate([buffer, np.asarray(chunk, dtype=np.float32)])[-window:]
        received += len(chunk)
        if received < next_at:
            continue
        next_at = (received // step + 1) * step
        end = received / sample_rate
        start = max(0.0, end - window / sample_rate)
        scores = predict(buffer, sample_rate).scores
        order = np.argsort(-scores, kind="stable")[:top_k]
        labels = [(tagger.labels[i], float(scores[i])) for i in order]
        yield {"type": "scores", "start": round(start, 3), "end": round(end, 3), "labels": labels_json(labels)}
        above = {i: score for i, score in enumerate(scores.tolist()) if score >= threshold}
        for i in [i for i in active if i not in above]:  # ends first, then starts
            yield _ended(tagger.labels[i], *active.pop(i))
        for i, score in above.items():
            if i in active:
                active[i][1:] = [end, max(active[i][2], score)]
            else:
                active[i] = [start, end, score]
                yield {"type": "event", "state": "start", "label": tagger.labels[i], "start": round(start, 3),
                       "score": round(score, 6)}  # fmt: skip
    for i, (start, end, peak) in sorted(active.items()):
        yield _ended(tagger.labels[i], start, end, peak)


def _ended(label: str, start: float, end: float, peak: float) -> dict:
    return {"type": "event", "state": "end", "label": label, "start": round(start, 3), "end": round(end, 3),
            "peak": round(peak, 6)}  # fmt: skip
