"""Sound event detection scored by the field's own libraries (``ast-audio evaluate-events``).

Reads DCASE event tables (``filename<TAB>onset<TAB>offset<TAB>event_label``, a header
row, seconds) and scores the predictions against the reference with:

- **sed_eval** (Mesaros, Heittola and Virtanen 2016): event-based F1 and error rate with
  a collar (DCASE task 4: 200 ms on the onset, ``max(200 ms, 20% of the event)`` on the
  offset) and segment-based F1 and error rate in 1-s segments;
- **sed_scores_eval** (Ebbers, Serizel and Haeb-Umbach 2022): the polyphonic sound
  detection score (PSDS, Bilen et al. 2020) in DCASE's first scenario (DTC = GTC = 0.7,
  ``alpha_ct`` = ``alpha_st`` = 0, ``max_efpr`` 100 per hour; CTTC 0.3 only enters
  through ``alpha_ct``, so with 0 it is not passed, which the library requires).

PSDS is computed two ways:

- from **score tables** (``--scores DIR``: what ``predict --timeline --scores-dir DIR``
  writes, one ``<file stem>.tsv`` per recording with ``onset, offset`` and one score
  column per class, a row per detection frame): PSDS over every threshold, the area
  under the exact PSD-ROC, which is what PSDS is meant to measure;
- without score tables, from **event tables**: each table becomes a score of 1 inside
  its events and 0 outside, so PSDS is that of a single operating point (several
  tables: their mean, so threshold k/n means "found by k of the n tables", which is
  the tables themselves where their events nest, as a threshold sweep's do). This
  underrates a system compared with its score tables and is printed as such.

psds_eval (the first implementation, last released 2021) is not used: it fails on
numpy 2 and pandas 3. sed_scores_eval's Cython code needs writable arrays and pandas 3
hands out read-only ones from float64 frames, so the score columns are given to it as
float32 (it converts them to a new float64 array).

Both libraries are optional dependencies (``pip install ast-audio[events]``). dcase_util,
which sed_eval (and so sed_scores_eval) imports, still imports ``pkg_resources`` at load
time, and setuptools 81 removed it; when it is missing, an empty stand-in is in
``sys.modules`` only while they load (the functions that would use it are never called
here).
"""

from __future__ import annotations

import csv
import importlib.util
import os
import sys
import types
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError

__all__ = ["EventScores", "psds_of_scores", "read_events", "read_score_tables", "score_events", "write_score_table"]

COLLAR = 0.2  # seconds, onset and offset
OFFSET_SHARE = 0.2  # of the reference event's length, for the offset collar
SEGMENT = 1.0  # seconds
PSDS = dict(dtc_threshold=0.7, gtc_threshold=0.7, alpha_ct=0.0, alpha_st=0.0, max_efpr=100.0)  # DCASE scenario 1


@dataclass
class EventScores:
    """Overall figures (micro averages over every event, as sed_eval reports them); the
    sed_eval figures are ``None`` when only score tables were given. ``psds_from`` says what
    PSDS was computed from: ``"scores"`` (every threshold) or ``"events"`` (the operating
    point of the event tables)."""

    event_f1: float | None
    event_precision: float | None
    event_recall: float | None
    event_error_rate: float | None
    segment_f1: float | None
    segment_error_rate: float | None
    psds: float
    psds_from: str
    reference_events: int
    predicted_events: int | None
    class_wise_event_f1: dict[str, float]
    class_wise_psds: dict[str, float]

    def to_json(self) -> dict:
        def r(v):
            if isinstance(v, dict):
                return {k: r(x) for k, x in v.items()}
            return round(v, 6) if isinstance(v, float) else v

        return {k: r(v) for k, v in asdict(self).items()}


def read_events(path: str | os.PathLike) -> list[dict]:
    """A DCASE event table: ``[{"filename", "onset", "offset", "event_label"}]`` (a row without
    a label, a file with no events, is kept as a file name with no event)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", str(path))
    rows = []
    with open(path, newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        for n, row in enumerate(reader, 1):
            if not row or (n == 1 and row[:2] == ["filename", "onset"]):
                continue
            if len(row) not in (1, 4):
                raise DataError(f"line {n}: expected filename, onset, offset, event_label separated by tabs", str(path))
            if len(row) == 1:
                rows.append({"filename": row[0], "onset": None, "offset": None, "event_label": None})
                continue
            try:
                onset, offset = float(row[1]), float(row[2])
            except ValueError:
                raise DataError(f"line {n}: onset and offset must be seconds, got {row[1]!r}, {row[2]!r}", str(path)) from None
            if not 0 <= onset <= offset:
                raise DataError(f"line {n}: onset {onset} after offset {offset} (or negative)", str(path))
            rows.append({"filename": row[0], "onset": onset, "offset": offset, "event_label": row[3]})
    return rows


@dataclass
class ScoreTable:
    """Scores of one recording: ``times`` ``[frames + 1]`` (frame ``i`` is ``[times[i], times[i+1])``
    seconds), ``scores`` ``[frames, classes]``, ``labels`` the classes' names."""

    times: np.ndarray
    scores: np.ndarray
    labels: list[str]

    @property
    def duration(self) -> float:
        return float(self.times[-1])


def write_score_table(path: str | os.PathLike, starts: Sequence[float], ends: Sequence[float], scores: np.ndarray,
                      labels: Sequence[str]) -> None:  # fmt: skip
    """One recording's frame scores as sed_scores_eval reads them: a TSV with ``onset``,
    ``offset`` (seconds, 6 decimals: one frame's offset is the next one's onset) and one
    column per label (6 decimals). Frames of no length (a last frame cut at the end) are left out."""
    from ..base.fileio import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh, delimiter="\t", lineterminator="\n")
            w.writerow(["onset", "offset", *labels])
            for a, b, row in zip(starts, ends, scores, strict=True):
                if f"{a:.6f}" != f"{b:.6f}":
                    w.writerow([f"{a:.6f}", f"{b:.6f}", *(f"{float(x):.6f}" for x in row)])

    atomic_write(Path(path), write)


def read_score_tables(folder: str | os.PathLike) -> dict[str, ScoreTable]:
    """Every ``<stem>.tsv`` of ``folder`` (what :func:`write_score_table` writes), by stem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("not a folder of score tables", str(folder))
    out: dict[str, ScoreTable] = {}
    for path in sorted(folder.glob("*.tsv")):
        with open(path, newline="") as fh:
            rows = [r for r in csv.reader(fh, delimiter="\t") if r]
        if not rows or rows[0][:2] != ["onset", "offset"] or len(rows[0]) < 3:
            raise DataError("a score table starts with onset<TAB>offset<TAB>one column per class", str(path))
        labels = rows[0][2:]
        if len(rows) < 2 or any(len(r) != len(rows[0]) for r in rows[1:]):
            raise DataError(f"expected rows of {len(rows[0])} columns after the header", str(path))
        try:
            values = np.array([[float(x) for x in r] for r in rows[1:]], dtype=np.float64)
        except ValueError as err:
            raise DataError(f"not a number: {err}", str(path)) from None
        starts, ends = values[:, 0], values[:, 1]
        if not (np.all(ends > starts) and np.all(starts[1:] == ends[:-1])):
            raise DataError("frames must follow each other: each onset the previous offset, each offset after its onset", str(path))
        if out and labels != next(iter(out.values())).labels:
            raise DataError("its classes differ from the other tables'", str(path))
        out[path.stem] = ScoreTable(np.concatenate([starts, ends[-1:]]), values[:, 2:], labels)
    if not out:
        raise DataError("no score tables (*.tsv) in it", str(folder))
    return out


def missing_event_packages() -> list[str]:
    """The packages of the ``events`` extra (sed_eval, sed_scores_eval) this install lacks: event
    F1, PSDS and the calibration of event thresholds need them. Cheap (no import), so a command
    that will need them can ask before it does any work."""
    return [n for n in ("sed_eval", "sed_scores_eval") if importlib.util.find_spec(n) is None]


def _load(*names: str):
    """The named modules of sed_eval / sed_scores_eval, or a clear error naming what to install."""
    missing = missing_event_packages()
    if missing:
        raise ConfigError(f"evaluate-events needs {' and '.join(missing)}: pip install 'ast-audio[events]'")
    stand_in = importlib.util.find_spec("pkg_resources") is None
    if stand_in:
        sys.modules["pkg_resources"] = types.ModuleType("pkg_resources")
    try:
        return [importlib.import_module(n) for n in names]
    finally:
        if stand_in:
            del sys.modules["pkg_resources"]


def _stem(filename: str) -> str:
    return filename.rsplit(".", 1)[0]  # sed_scores_eval's audio ids: the file name without its extension


def psds_of_scores(
    tables: dict[str, ScoreTable], reference: list[dict], durations: dict[str, float] | None = None
) -> tuple[float, dict[str, float]]:
    """``(PSDS, PSDS per class)`` of score tables (by file stem) against reference events
    (:func:`read_events` rows), DCASE scenario 1, by sed_scores_eval. Every file of the
    reference needs a table and every table a file; ``durations`` (by stem) default to the
    tables' ends. Classes with no reference event have no true positive rate, so they are
    left out (their false alarms do not count; alpha_ct is 0 anyway); a reference class
    the tables do not score is an error."""
    import pandas as pd

    (psds_module,) = _load("sed_scores_eval.intersection_based.psds")
    truth: dict[str, list] = {}
    for r in reference:
        events = truth.setdefault(_stem(r["filename"]), [])
        if r["event_label"]:
            events.append([r["onset"], r["offset"], r["event_label"]])
    missing, extra = sorted(set(truth) - set(tables)), sorted(set(tables) - set(truth))
    if missing or extra:
        raise DataError("score tables and reference name different files: "
                        + (f"no table for {', '.join(missing[:3])}" if missing else f"not in the reference: {', '.join(extra[:3])}"))  # fmt: skip
    for stem, events in truth.items():  # sed_scores_eval wants the events of a class not to touch or overlap
        truth[stem] = _merged(events)
    scored = next(iter(tables.values())).labels
    present = {e[2] for events in truth.values() for e in events}
    unscored = sorted(present - set(scored))
    if unscored:
        raise DataError(f"the reference has events of classes the score tables do not score: {', '.join(unscored[:3])}")
    frames = {}
    for stem, t in tables.items():
        frame = pd.DataFrame({"onset": t.times[:-1], "offset": t.times[1:]})
        for c, name in enumerate(t.labels):
            if name not in present:
                continue
            frame[name] = t.scores[:, c].astype(np.float32)  # float32: see the module notes (pandas 3)
        frames[stem] = frame
    lengths = {s: (durations or {}).get(s, t.duration) for s, t in tables.items()}
    value, per_class, *_ = psds_module.psds(frames, truth, lengths, **PSDS)
    return float(value), {k: float(v) for k, v in per_class.items()}


def _merged(events: list) -> list:
    """Events of one class that touch or overlap joined (as one sound, which is how they sound)."""
    out: list = []
    for onset, offset, label in sorted(events, key=lambda e: (e[2], e[0])):
        last = next((e for e in reversed(out) if e[2] == label), None)
        if last is not None and onset <= last[1]:
            last[1] = max(last[1], offset)
        else:
            out.append([onset, offset, label])
    return out


def _event_score_tables(tables: list[list[dict]], ref: list[dict], lengths: dict[str, float]) -> dict[str, ScoreTable]:
    """Event tables as score tables: 1 inside a table's events, 0 outside, averaged over the tables."""
    labels = sorted({r["event_label"] for rows in [ref, *tables] for r in rows if r["event_label"]})
    files = sorted({r["filename"] for r in ref})
    out = {}
    for name in files:
        mine = [[r for r in rows if r["filename"] == name and r["event_label"]] for rows in tables]
        end = max([lengths.get(name, 0.0)] + [r["offset"] for rows in mine for r in rows])
        cuts = sorted({0.0, end} | {t for rows in mine for r in rows for t in (r["onset"], r["offset"]) if t < end})
        if end <= 0:
            raise DataError(f"{name} has no events and no duration: give its duration (--durations)")
        times = np.array(cuts)
        mids = (times[:-1] + times[1:]) / 2
        scores = np.zeros((len(mids), len(labels)))
        for rows in mine:
            for r in rows:
                scores[(mids > r["onset"]) & (mids < r["offset"]), labels.index(r["event_label"])] += 1 / len(tables)
        out[_stem(name)] = ScoreTable(times, scores, labels)
    return out


def _durations(path: str | os.PathLike | None, reference: list[dict], predictions: list[list[dict]]) -> dict[str, float]:
    if path is not None:
        rows = [r for r in csv.reader(open(path, newline=""), delimiter="\t") if r and r[0] != "filename"]
        try:
            return {r[0]: float(r[1]) for r in rows}
        except (IndexError, ValueError):
            raise DataError("expected filename<TAB>duration rows", str(path)) from None
    out: dict[str, float] = {}
    for row in reference + [r for rows in predictions for r in rows]:
        out[row["filename"]] = max(out.get(row["filename"], 0.0), row["offset"] or 0.0)
    return out


def score_events(
    reference: str | os.PathLike,
    predictions: str | os.PathLike | list[str | os.PathLike] | None = None,
    *,
    scores: str | os.PathLike | None = None,
    durations: str | os.PathLike | None = None,
) -> EventScores:
    """Score ``predictions`` (a DCASE table; several: the first is scored by sed_eval, all
    make PSDS's operating points) and/or ``scores`` (a folder of score tables: PSDS over all
    thresholds) against ``reference``. ``durations``: ``filename<TAB>duration`` (what
    ``ast-audio synth --scenes`` writes); without it a file lasts until its last event (or
    its score table's end). Files of the reference that a prediction table does not name
    have no predicted events."""
    tables = [] if predictions is None else [predictions] if isinstance(predictions, str | os.PathLike) else list(predictions)
    if not tables and scores is None:
        raise ConfigError("give predicted events (--pred) or score tables (--scores)")
    ref = read_events(reference)
    preds = [read_events(p) for p in tables]
    files = sorted({r["filename"] for r in ref})
    for table, rows in zip(tables, preds, strict=True):
        unknown = sorted({r["filename"] for r in rows} - set(files))
        if unknown:
            raise DataError(f"predictions for files not in the reference: {', '.join(unknown[:3])}", str(table))
    lengths = _durations(durations, ref, preds)
    if scores is not None:
        score_tables = read_score_tables(scores)
        stems = {_stem(f): length for f, length in lengths.items()} if durations is not None else None
        psds, per_class_psds = psds_of_scores(score_tables, ref, stems)
    else:
        psds, per_class_psds = psds_of_scores(_event_score_tables(preds, ref, lengths), ref,
                                              {_stem(f): x for f, x in lengths.items()})  # fmt: skip
    figures: dict = dict(event_f1=None, event_precision=None, event_recall=None, event_error_rate=None,
                         segment_f1=None, segment_error_rate=None, predicted_events=None, class_wise_event_f1={})  # fmt: skip
    if preds:
        figures = _sed_eval(ref, preds[0], files)
    return EventScores(psds=psds, psds_from="scores" if scores is not None else "events",
                       reference_events=sum(1 for r in ref if r["event_label"]), class_wise_psds=per_class_psds,
                       **figures)  # fmt: skip


def event_f1(reference: list[dict], predicted: list[dict]) -> tuple[float, dict[str, float]]:
    """sed_eval's event-based F1 (DCASE collars), overall and per class, from :func:`read_events` rows."""
    got = _sed_eval(reference, predicted, sorted({r["filename"] for r in reference}))
    return got["event_f1"], got["class_wise_event_f1"]


def _sed_eval(ref: list[dict], pred: list[dict], files: list[str]) -> dict:
    sed_eval, dcase_util = _load("sed_eval", "dcase_util")
    labels = sorted({r["event_label"] for r in ref if r["event_label"]} | {r["event_label"] for r in pred if r["event_label"]})
    if not labels:
        raise DataError("no events in the reference or the predictions")

    def events(rows, name):
        return dcase_util.containers.MetaDataContainer(
            [dict(r) for r in rows if r["filename"] == name and r["event_label"]]
        )

    event_metrics = sed_eval.sound_event.EventBasedMetrics(
        event_label_list=labels, t_collar=COLLAR, percentage_of_length=OFFSET_SHARE
    )
    segment_metrics = sed_eval.sound_event.SegmentBasedMetrics(event_label_list=labels, time_resolution=SEGMENT)
    for name in files:
        r, p = events(ref, name), events(pred, name)
        event_metrics.evaluate(reference_event_list=r, estimated_event_list=p)
        segment_metrics.evaluate(reference_event_list=r, estimated_event_list=p)
    ev, seg = event_metrics.results_overall_metrics(), segment_metrics.results_overall_metrics()
    classwise = event_metrics.results_class_wise_metrics()

    def number(x) -> float:
        return float(x) if x == x else 0.0  # sed_eval gives NaN where nothing was predicted

    return dict(
        event_f1=number(ev["f_measure"]["f_measure"]), event_precision=number(ev["f_measure"]["precision"]),
        event_recall=number(ev["f_measure"]["recall"]), event_error_rate=number(ev["error_rate"]["error_rate"]),
        segment_f1=number(seg["f_measure"]["f_measure"]), segment_error_rate=number(seg["error_rate"]["error_rate"]),
        predicted_events=sum(1 for r in pred if r["event_label"]),
        class_wise_event_f1={k: number(v["f_measure"]["f_measure"]) for k, v in classwise.items()},
    )  # fmt: skip

