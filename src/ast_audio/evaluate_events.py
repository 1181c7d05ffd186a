"""Sound event detection scored by the field's own libraries (``ast-audio evaluate-events``).

Reads DCASE event tables (``filename<TAB>onset<TAB>offset<TAB>event_label``, a header
row, seconds) and scores the predictions against the reference with:

- **sed_eval** (Mesaros, Heittola and Virtanen 2016): event-based F1 and error rate with
  a collar (DCASE task 4: 200 ms on the onset, ``max(200 ms, 20% of the event)`` on the
  offset) and segment-based F1 and error rate in 1-s segments;
- **psds_eval** (Bilen et al. 2020): the polyphonic sound detection score in DCASE's
  first scenario (DTC = GTC = 0.7, CTTC 0.3, ``alpha_ct`` = ``alpha_st`` = 0,
  ``max_efpr`` 100 per hour), every prediction table one operating point.

psds_eval 0.5.3 (its last release, 2021) installs but was written for pandas 1 and
numpy 1: it calls ``DataFrame.fillna(method=...)`` (removed in pandas 3; mapped to
``ffill()`` here while it runs) and converts arrays of several elements with ``int()``
(an error in numpy 2, hit when its ROC has ties). Where it fails, ``psds`` is ``None``
with a one-line warning saying why, and the sed_eval figures stand. sed_scores_eval
(DCASE's newer implementation) fails on pandas 3 as well (read-only arrays), so it is
no way out either.

Both are optional dependencies (``pip install sed_eval psds_eval``). dcase_util, which
sed_eval imports, still imports ``pkg_resources`` at load time, and setuptools 81 removed
it; when it is missing, an empty stand-in is in ``sys.modules`` only while sed_eval loads
(the functions that would use it are never called here).
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import os
import sys
import types
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import ConfigError, DataError

__all__ = ["EventScores", "read_events", "score_events"]

log = logging.getLogger(__name__)

COLLAR = 0.2  # seconds, onset and offset
OFFSET_SHARE = 0.2  # of the reference event's length, for the offset collar
SEGMENT = 1.0  # seconds


@dataclass
class EventScores:
    """Overall figures (micro averages over every event, as sed_eval reports them)."""

    event_f1: float
    event_precision: float
    event_recall: float
    event_error_rate: float
    segment_f1: float
    segment_error_rate: float
    psds: float | None  # None where psds_eval could not compute it (see the module notes)
    reference_events: int
    predicted_events: int
    class_wise_event_f1: dict[str, float]

    def to_json(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


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


def _libraries():
    """``(sed_eval, dcase_util, sed_scores_eval)``, or a clear error naming what to install."""
    missing = [name for name in ("sed_eval", "psds_eval") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"evaluate-events needs {' and '.join(missing)}: pip install {' '.join(missing)}")
    stand_in = importlib.util.find_spec("pkg_resources") is None
    if stand_in:
        sys.modules["pkg_resources"] = types.ModuleType("pkg_resources")
    try:
        import dcase_util
        import sed_eval
    finally:
        if stand_in:
            del sys.modules["pkg_resources"]
    from psds_eval import PSDSEval

    return sed_eval, dcase_util, PSDSEval


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
    predictions: str | os.PathLike | list[str | os.PathLike],
    *,
    durations: str | os.PathLike | None = None,
) -> EventScores:
    """Score ``predictions`` (a DCASE table; several: the first is scored, the others must
    name known files too) against ``reference``. ``durations``: ``filename<TAB>duration``
    (what ``ast-audio synth --scenes`` writes); without it a file lasts until its last event.
    Files of the reference that a prediction table does not name have no predicted events."""
    sed_eval, dcase_util, PSDSEval = _libraries()

    tables = [predictions] if isinstance(predictions, str | os.PathLike) else list(predictions)
    if not tables:
        raise ConfigError("no prediction table given")
    ref = read_events(reference)
    preds = [read_events(p) for p in tables]
    files = sorted({r["filename"] for r in ref})
    labels = sorted({r["event_label"] for r in ref if r["event_label"]} | {r["event_label"] for r in preds[0] if r["event_label"]})
    if not labels:
        raise DataError("no events in the reference or the predictions", str(reference))
    unknown = sorted({r["filename"] for r in preds[0]} - set(files))
    if unknown:
        raise DataError(f"predictions for files not in the reference: {', '.join(unknown[:3])}", str(tables[0]))

    def events(rows, name):
        return dcase_util.containers.MetaDataContainer(
            [dict(r) for r in rows if r["filename"] == name and r["event_label"]]
        )

    event_metrics = sed_eval.sound_event.EventBasedMetrics(
        event_label_list=labels, t_collar=COLLAR, percentage_of_length=OFFSET_SHARE
    )
    segment_metrics = sed_eval.sound_event.SegmentBasedMetrics(event_label_list=labels, time_resolution=SEGMENT)
    for name in files:
        r, p = events(ref, name), events(preds[0], name)
        event_metrics.evaluate(reference_event_list=r, estimated_event_list=p)
        segment_metrics.evaluate(reference_event_list=r, estimated_event_list=p)
    ev, seg = event_metrics.results_overall_metrics(), segment_metrics.results_overall_metrics()
    classwise = event_metrics.results_class_wise_metrics()

    lengths = _durations(durations, ref, preds)
    psds = _psds(PSDSEval, ref, preds, files, lengths)

    def number(x) -> float:
        return float(x) if x == x else 0.0  # sed_eval gives NaN where nothing was predicted

    return EventScores(
        event_f1=number(ev["f_measure"]["f_measure"]), event_precision=number(ev["f_measure"]["precision"]),
        event_recall=number(ev["f_measure"]["recall"]), event_error_rate=number(ev["error_rate"]["error_rate"]),
        segment_f1=number(seg["f_measure"]["f_measure"]), segment_error_rate=number(seg["error_rate"]["error_rate"]),
        psds=psds, reference_events=sum(1 for r in ref if r["event_label"]),
        predicted_events=sum(1 for r in preds[0] if r["event_label"]),
        class_wise_event_f1={k: number(v["f_measure"]["f_measure"]) for k, v in classwise.items()},
    )  # fmt: skip


@contextmanager
def _pandas3_fillna():
    """``DataFrame.fillna(method="ffill")`` (removed in pandas 3) as ``ffill()``, while inside."""
    import pandas as pd

    original = pd.DataFrame.fillna

    def fillna(self, value=None, *, method=None, **kwargs):
        return self.ffill() if method in ("ffill", "pad") else original(self, value, **kwargs)

    pd.DataFrame.fillna = fillna
    try:
        yield
    finally:
        pd.DataFrame.fillna = original


def _psds(PSDSEval, ref: list[dict], preds: list[list[dict]], files: list[str], lengths: dict[str, float]) -> float | None:
    """PSDS (DCASE scenario 1) by psds_eval, every table an operating point; ``None`` where it fails."""
    import pandas as pd

    columns = ["filename", "onset", "offset", "event_label"]
    truth = pd.DataFrame([r for r in ref if r["event_label"]], columns=columns)
    metadata = pd.DataFrame({"filename": files, "duration": [lengths.get(f, 0.0) for f in files]})
    try:
        with _pandas3_fillna():
            evaluator = PSDSEval(dtc_threshold=0.7, gtc_threshold=0.7, cttc_threshold=0.3, ground_truth=truth,
                                 metadata=metadata)  # fmt: skip
            for rows in preds:
                evaluator.add_operating_point(pd.DataFrame([r for r in rows if r["event_label"]], columns=columns))
            return float(evaluator.psds(alpha_ct=0.0, alpha_st=0.0, max_efpr=100).value)
    except (TypeError, ValueError) as err:  # its numpy 1 / pandas 1 code on a newer stack, or its own refusal
        log.warning("PSDS not computed: psds_eval failed (numpy %s, pandas %s): %s",
                    __import__("numpy").__version__, pd.__version__, err)  # fmt: skip
        return None
