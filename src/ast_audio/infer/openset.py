"""Open-set recognition: a single-label model saying that a sound is none of its classes.

A softmax model always names one of its classes, even for a sound it never heard. Two
cues let it answer "unknown" instead:

- a **knownness score** per model window, high for sounds like the training classes:
  ``"max_prob"``, the largest softmax probability (Hendrycks & Gimpel 2017), or
  ``"energy"``, the log-sum-exp of the logits (the negative free energy of Liu et al.
  2020, temperature 1), which keeps the logits' scale that the softmax throws away;
- a **threshold** on it, chosen on validation clips of the known classes so that a share
  ``tpr`` of them (default 0.95) stays known (:func:`choose_threshold`); everything under
  it is "unknown". Only known sounds are needed to calibrate, and the share of known clips
  kept is guaranteed on those clips, whatever the unknown sounds will be.

A checkpoint carries the calibration in ``info.extra["open_set"]`` (``{"score", "threshold",
"tpr", "clips"}``, written by ``ast-audio calibrate --open-set``). A checkpoint whose
training data had a "none of these" class names it in ``info.extra["none_label"]``; a top
prediction of that class is "unknown" as well (:class:`OpenSet`). Pure numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

__all__ = ["DEFAULT_SCORE", "DEFAULT_TPR", "SCORES", "UNKNOWN", "OpenSet", "auroc", "calibrate", "calibration",
           "choose_threshold", "knownness", "probe"]  # fmt: skip

SCORES = ("energy", "max_prob")
# bench/openset.py, tiny ASTs from scratch on unseen synthetic classes: max_prob's AUROC was as high as
# energy's on average and steadier (energy fell below chance on one split)
DEFAULT_SCORE = "max_prob"
DEFAULT_TPR = 0.95  # share of known validation clips kept known: one known clip in twenty may read "unknown"
UNKNOWN = "unknown"  # the label of a sound that is none of the classes


def knownness(logits: np.ndarray, score: str) -> np.ndarray:
    """The knownness ``[n]`` of logits ``[n, C]`` (higher: more like the training classes)."""
    logits = np.asarray(logits, dtype=np.float64)
    if score not in SCORES:
        raise ConfigError(f"unknown open-set score {score!r}; choose one of {', '.join(SCORES)}")
    top = logits.max(axis=-1, keepdims=True)  # (n, 1), for a stable log-sum-exp
    lse = (top + np.log(np.exp(logits - top).sum(axis=-1, keepdims=True)))[..., 0]  # (n,)
    if score == "energy":
        return lse
    return np.exp(top[..., 0] - lse)  # the largest softmax probability


def choose_threshold(scores: np.ndarray, tpr: float = DEFAULT_TPR) -> float:
    """The highest threshold that keeps at least ``tpr`` of ``scores`` (known clips) at or above it.

    With ``n`` scores sorted ascending it is the ``floor((1 - tpr) * n)``-th one, so at most
    ``(1 - tpr) * n`` scores fall under it; ties keep more."""
    if not 0 < tpr <= 1:
        raise ConfigError(f"the open-set true-positive rate must be in (0, 1], got {tpr}")
    scores = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if scores.size == 0 or not np.isfinite(scores).all():
        raise ConfigError("open-set calibration needs finite scores of at least one known clip")
    below = math.floor((1 - tpr) * scores.size + 1e-9)  # clips allowed under the threshold
    return float(scores[min(below, scores.size - 1)])


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """The area under the ROC curve of telling ``known`` scores from ``unknown`` ones: the chance
    that a known clip scores above an unknown one (ties count half). 1 separates perfectly, 0.5 is chance."""
    known, unknown = np.asarray(known, dtype=np.float64).ravel(), np.asarray(unknown, dtype=np.float64).ravel()
    if known.size == 0 or unknown.size == 0:
        raise ConfigError("AUROC needs at least one known and one unknown score")
    below = np.searchsorted(np.sort(unknown), known, side="left")  # unknown scores under each known one
    ties = np.searchsorted(np.sort(unknown), known, side="right") - below
    return float((below + ties / 2).sum() / (known.size * unknown.size))


def calibration(scores: np.ndarray, score: str = DEFAULT_SCORE, tpr: float = DEFAULT_TPR) -> dict:
    """What ``info.extra["open_set"]`` records, from the knownness ``scores`` of validation clips of
    the known classes: the score, the threshold, the target rate, the clips and the share they keep."""
    threshold = choose_threshold(scores, tpr)
    kept = float(np.mean(np.asarray(scores) >= threshold))
    return {"score": score, "threshold": threshold, "tpr": tpr, "clips": int(np.size(scores)), "kept": round(kept, 6)}


def known_clips(datafile, none_label: str | None) -> list:
    """The clips of ``datafile`` (a :class:`~ast_audio.data.datafiles.Datafile`) that set an
    open-set threshold: those of the known classes, the none label's clips left out."""
    names = datafile.labels.names
    return [e.wav for e in datafile.entries if all(names[i] != none_label for i in e.labels)]


def calibrate(tagger, audio: list, score: str = DEFAULT_SCORE, tpr: float = DEFAULT_TPR) -> dict:
    """The ``info.extra["open_set"]`` record of the tagger's (first) checkpoint from ``audio``
    (paths or waveforms at its rate) of its known classes: what ``calibrate --open-set`` and the
    recipes store. ``tagger`` is an :class:`~ast_audio.infer.AudioTagger`, best in fp32 (the
    reference); its own open set is put back afterwards."""
    own, tagger.open_set = tagger.open_set, probe(score)
    try:
        scores = [p.open_set_score for p in tagger.predict(list(audio), sample_rate=tagger.rate, top_k=1)]
    finally:
        tagger.open_set = own
    return calibration(scores, score, tpr)


def probe(score: str = DEFAULT_SCORE) -> OpenSet:
    """An open set that calls everything known and reports the knownness ``score`` of each clip:
    what calibration runs the tagger with (``AudioTagger(..., open_set=probe(score))``)."""
    if score not in SCORES:
        raise ConfigError(f"unknown open-set score {score!r}; choose one of {', '.join(SCORES)}")
    return OpenSet(score, -math.inf)


@dataclass(frozen=True)
class OpenSet:
    """A checkpoint's "none of these" decision: the knownness ``score`` and its ``threshold``
    (``None``: not calibrated, only the none label decides), and the index of its none
    label (``None``: no such class)."""

    score: str = DEFAULT_SCORE
    threshold: float | None = None
    tpr: float | None = None
    none_index: int | None = None

    @classmethod
    def of(cls, extra: dict, labels: list[str], source: object = None) -> OpenSet | None:
        """The decision a checkpoint's ``info.extra`` records for its ``labels``; ``None`` when
        it records neither a calibration nor a none label. ``source`` names the checkpoint in errors."""
        where = f"{source}: " if source is not None else ""
        none_label, data = extra.get("none_label"), extra.get("open_set")
        none_index = None
        if none_label is not None:
            if none_label not in labels:
                raise ConfigError(f"{where}none_label {none_label!r} is not one of the checkpoint's labels")
            none_index = labels.index(none_label)
        if data is None:
            return None if none_index is None else cls(none_index=none_index)
        try:
            score, threshold = str(data["score"]), float(data["threshold"])
            tpr = None if data.get("tpr") is None else float(data["tpr"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{where}open_set metadata needs a score and a numeric threshold, got {data!r}") from None
        if score not in SCORES or not math.isfinite(threshold):
            raise ConfigError(f"{where}open_set metadata: score must be one of {', '.join(SCORES)} and the threshold "
                              f"finite, got {score!r} and {threshold}")  # fmt: skip
        return cls(score, threshold, tpr, none_index)

    def window_scores(self, logits: np.ndarray) -> np.ndarray:
        """Knownness ``[n]`` of the logits ``[n, C]`` of ``n`` model windows."""
        return knownness(logits, self.score)

    def reason(self, known: bool, score: float | None) -> str:
        """Why a clip got its answer, in words: its knownness against the threshold, and the none label."""
        said = []
        if score is not None and self.threshold is not None:
            said.append(f"{self.score} {score:.4f} {'>=' if score >= self.threshold else '<'} threshold {self.threshold:.4f}")
        if not known and (score is None or self.threshold is None or score >= self.threshold):
            said.append("the none label is on top")
        return "; ".join(said) or "the top label is not the none label"

    def known(self, score: np.ndarray | float, top: np.ndarray | int) -> np.ndarray:
        """Whether each clip or frame is one of the classes, from its aggregated knownness and its top class."""
        known = np.ones(np.shape(top), dtype=bool)
        if self.threshold is not None:
            known &= np.asarray(score) >= self.threshold
        if self.none_index is not None:
            known &= np.asarray(top) != self.none_index
        return known
