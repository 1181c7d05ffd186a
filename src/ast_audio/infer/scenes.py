"""Sound events on recordings with reference events: event thresholds calibrated on scenes
(``ast-audio calibrate --scenes``, ``make demo``) and the frame score tables PSDS is
computed from (``predict --timeline --scores-dir``)."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import DataError
from .events import PostProcessing, calibrate_event_thresholds, median_filter
from .scoring import read_events, write_score_table

__all__ = ["calibrate_on_scenes", "write_timeline_scores"]


def calibrate_on_scenes(tagger, folder, *, post=None, window=None, hop=None):
    """Event thresholds of ``tagger``'s model on the scenes of ``folder`` (``synth --scenes``'s
    layout: ``audio/``, ``reference.tsv``, ``durations.tsv`` optional): see
    :func:`ast_audio.infer.events.calibrate_event_thresholds`."""
    folder = Path(folder)
    reference = read_events(folder / "reference.tsv")
    unknown = sorted({r["event_label"] for r in reference if r["event_label"]} - set(tagger.labels))
    if unknown:  # by name, as everywhere labels meet a checkpoint: a class it does not know would get no threshold
        known = ", ".join(tagger.labels[:8]) + (f", ... ({len(tagger.labels)} in all)" if len(tagger.labels) > 8 else "")
        raise DataError(f"event label {unknown[0]!r} is not one of the model's labels ({known})", str(folder / "reference.tsv"))
    names = sorted({r["filename"] for r in reference})
    files = [folder / "audio" / n for n in names]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DataError(f"the reference names {len(missing)} files not in audio/, e.g. {missing[0]}", str(folder))
    lengths = {}
    if (folder / "durations.tsv").is_file():
        with open(folder / "durations.tsv", newline="") as fh:
            try:
                lengths = {r[0]: float(r[1]) for r in csv.reader(fh, delimiter="\t") if r and r[0] != "filename"}
            except (IndexError, ValueError):
                raise DataError("expected filename<TAB>duration rows", str(folder / "durations.tsv")) from None
    post = post or PostProcessing()
    grid = tagger.frame_grid(window, hop)
    recordings = [
        (name, tl.scores, lengths.get(name, tl.duration))
        for name, tl in zip(names, tagger.timeline([str(f) for f in files], window, hop, post=post), strict=True)
    ]
    return calibrate_event_thresholds(recordings, reference, grid.hop, tagger.labels, post, ignore=tagger.ignored)


def write_timeline_scores(timeline, folder, ignore: Sequence[int] = (), post=None) -> Path:
    """A frame-detection :class:`~ast_audio.infer.Timeline`'s scores as ``folder/<file stem>.tsv``
    (:func:`write_score_table`), classes in ``ignore`` (a "nothing" class) left out.

    The scores are median-filtered as ``post`` (a :class:`~ast_audio.infer.events.PostProcessing`,
    default its defaults) filters them before its thresholds: PSDS then sweeps a threshold
    over the scores the detection really thresholds, as DCASE systems' score tables do. Raw
    frame scores, thresholded with no filter, break each event into fragments, each one a
    false alarm (on the demo model's benchmark scenes PSDS 0.17 raw, see BENCHMARKS.md)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    keep = [c for c in range(len(timeline.labels)) if c not in set(ignore)]
    w = timeline.windows
    hop = (w[1].start - w[0].start) if len(w) > 1 else (w[0].end - w[0].start)
    scores = median_filter(timeline.scores, (post or PostProcessing()).frames(hop)[0])
    out = folder / f"{os.path.basename(timeline.path or 'stream').rsplit('.', 1)[0]}.tsv"
    write_score_table(out, [x.start for x in w], [x.end for x in w], scores[:, keep],
                      [timeline.labels[c] for c in keep])  # fmt: skip
    return out
