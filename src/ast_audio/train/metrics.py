"""Evaluation metrics of the original recipes: per-class AP and AUC, mAP, mAUC, d-prime,
accuracy, the "average precision / recall" columns of ``result.csv``, and the counts of
decisions (per-class precision, recall and F1, balanced accuracy, confusion matrix).

NumPy only (no scikit-learn at run time); the tests check every function against
scikit-learn, which the original used. Per class, AP is the step-wise area under the
precision-recall curve (no interpolation) and AUC the trapezoidal area under the ROC
curve, with tied scores forming one threshold.

A class with no positive (or no negative) example in the evaluation set has no AP/AUC:
it is reported as NaN and left out of mAP/mAUC, and :class:`Stats` counts how many were
left out (the original crashed on such sets; AudioSet, ESC-50 and Speech Commands
evaluation sets contain every class).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

# The original kept every 1000th point of each precision-recall curve and reported, per
# class, the point in the middle of what it kept; "avg precision / recall" are the means.
PR_CURVE_STEP = 1000


def _curve(target: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative true and false positives at each distinct score threshold (descending)."""
    order = np.argsort(-score, kind="mergesort")
    score, target = score[order], target[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(score)), target.size - 1]
    tps = np.cumsum(target)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    return tps.astype(np.float64), fps.astype(np.float64), score[last_of_tie]


def average_precision(target: np.ndarray, score: np.ndarray) -> float:
    """Step-wise area under the precision-recall curve; NaN without positives."""
    target = np.asarray(target, dtype=np.float64).ravel() > 0.5
    tps, fps, _ = _curve(target, np.asarray(score, dtype=np.float64).ravel())
    if tps.size == 0 or tps[-1] == 0:
        return math.nan
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(target: np.ndarray, score: np.ndarray) -> float:
    """Trapezoidal area under the ROC curve; NaN unless both classes are present."""
    target = np.asarray(target, dtype=np.float64).ravel() > 0.5
    tps, fps, _ = _curve(target, np.asarray(score, dtype=np.float64).ravel())
    if tps.size == 0 or tps[-1] == 0 or fps[-1] == 0:
        return math.nan
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return float(np.trapezoid(tpr, fpr)) if hasattr(np, "trapezoid") else float(np.trapz(tpr, fpr))


def precision_recall_curve(target: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall by decreasing recall, ending at ``(1, 0)``.

    The curve stops at the first threshold that reaches full recall, as scikit-learn did
    up to version 1.0 (the version family the original used); later versions keep the
    points below it too, which only moves the "middle point" statistic.
    """
    target = np.asarray(target, dtype=np.float64).ravel() > 0.5
    tps, fps, _ = _curve(target, np.asarray(score, dtype=np.float64).ravel())
    if tps.size == 0 or tps[-1] == 0:
        return np.array([1.0]), np.array([0.0])
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    last = int(np.searchsorted(tps, tps[-1]))
    return np.r_[precision[last::-1], 1.0], np.r_[recall[last::-1], 0.0]


def f1_thresholds(scores: np.ndarray, targets: np.ndarray, default: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the score threshold (predict the class when ``score >= threshold``) with the
    best F1 on ``(scores, targets)`` (ties: the highest threshold), and that F1. A class without
    a positive gets ``default`` and F1 NaN."""
    thresholds = np.full(scores.shape[1], default, dtype=np.float64)
    f1 = np.full(scores.shape[1], np.nan)
    for k in range(scores.shape[1]):
        target, score = targets[:, k] > 0, scores[:, k]
        if not target.any():
            continue
        tps, fps, at = _curve(target.astype(np.float64), score)  # at each distinct score, descending
        f1s = 2 * tps / (tps + fps + target.sum())
        best = int(np.argmax(f1s))
        thresholds[k], f1[k] = at[best], f1s[best]
    return thresholds, f1


def d_prime(auc: float) -> float:
    """``sqrt(2) * Phi^-1(auc)``: the sensitivity index equivalent to an AUC."""
    if not 0.0 < auc < 1.0:
        return math.inf if auc >= 1.0 else -math.inf if auc <= 0.0 else math.nan
    return math.sqrt(2.0) * NormalDist().inv_cdf(auc)


@dataclass
class Stats:
    """Scores of predictions ``[clips, classes]`` against targets ``[clips, classes]``."""

    ap: np.ndarray  # per class, NaN where undefined
    auc: np.ndarray
    acc: float  # argmax agreement
    mid_precision: np.ndarray  # per class, the original's middle point of the kept PR curve
    mid_recall: np.ndarray
    skipped_classes: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def mAP(self) -> float:  # noqa: N802 (the field's name everywhere)
        return _nanmean(self.ap)

    @property
    def mAUC(self) -> float:  # noqa: N802
        return _nanmean(self.auc)

    @property
    def d_prime(self) -> float:
        return d_prime(self.mAUC)

    @property
    def average_precision(self) -> float:
        return _nanmean(self.mid_precision)

    @property
    def average_recall(self) -> float:
        return _nanmean(self.mid_recall)

    def main(self, metric: str) -> float:
        if metric == "mAP":
            return self.mAP
        if metric == "acc":
            return self.acc
        raise ValueError(f"unknown metric {metric!r}; use 'mAP' or 'acc'")


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(values)
    return float(values[ok].mean()) if ok.any() else math.nan


def calculate_stats(predictions: np.ndarray, targets: np.ndarray) -> Stats:
    """Per-class AP/AUC, the middle PR points, and accuracy, as the original computed them."""
    predictions = np.asarray(predictions, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    if predictions.shape != targets.shape or predictions.ndim != 2:
        raise ValueError(f"predictions {predictions.shape} and targets {targets.shape} must both be [clips, classes]")
    n_classes = targets.shape[1]
    ap = np.full(n_classes, np.nan)
    auc = np.full(n_classes, np.nan)
    mid_p = np.full(n_classes, np.nan)
    mid_r = np.full(n_classes, np.nan)
    for k in range(n_classes):
        ap[k] = average_precision(targets[:, k], predictions[:, k])
        auc[k] = roc_auc(targets[:, k], predictions[:, k])
        if not math.isnan(ap[k]):
            precision, recall = precision_recall_curve(targets[:, k], predictions[:, k])
            kept_p, kept_r = precision[::PR_CURVE_STEP], recall[::PR_CURVE_STEP]
            mid_p[k], mid_r[k] = kept_p[len(kept_p) // 2], kept_r[len(kept_r) // 2]
    acc = float(np.mean(predictions.argmax(1) == targets.argmax(1))) if len(targets) else math.nan
    skipped = int(np.sum(np.isnan(ap) | np.isnan(auc)))
    return Stats(ap=ap, auc=auc, acc=acc, mid_precision=mid_p, mid_recall=mid_r, skipped_classes=skipped)


# --------------------------------------------------------------------------- decisions and their counts


def decisions(scores: np.ndarray, top1: bool, thresholds: np.ndarray | float = 0.5) -> np.ndarray:
    """``[clips, classes]`` booleans: the label each clip is given. ``top1`` (a single-label
    model): the highest score; otherwise every class whose score reaches its threshold."""
    scores = np.asarray(scores, dtype=np.float64)
    if top1:
        out = np.zeros(scores.shape, dtype=bool)
        if scores.size:
            out[np.arange(len(scores)), scores.argmax(1)] = True
        return out
    return scores >= np.asarray(thresholds, dtype=np.float64)


@dataclass
class ClassCounts:
    """Per class, the decisions against the truth: true and false positives, misses, support."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    support: np.ndarray  # clips that carry the class

    @classmethod
    def of(cls, predicted: np.ndarray, targets: np.ndarray) -> ClassCounts:
        predicted, truth = np.asarray(predicted, dtype=bool), np.asarray(targets) > 0.5
        return cls(tp=(predicted & truth).sum(0), fp=(predicted & ~truth).sum(0), fn=(~predicted & truth).sum(0),
                   support=truth.sum(0))  # fmt: skip

    @property
    def precision(self) -> np.ndarray:
        """``tp / (tp + fp)``; NaN for a class never predicted."""
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> np.ndarray:
        """``tp / support``; NaN for a class with no clip."""
        return _ratio(self.tp, self.support)

    @property
    def f1(self) -> np.ndarray:
        """``2 tp / (2 tp + fp + fn)``; NaN for a class neither present nor predicted."""
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def macro_f1(self) -> float:
        """Mean F1 over the classes present or predicted (scikit-learn's ``average="macro"``
        for single-label decisions)."""
        return _nanmean(self.f1)

    @property
    def micro_f1(self) -> float:
        """F1 of all decisions pooled; equals the accuracy for single-label decisions."""
        tp, wrong = self.tp.sum(), self.fp.sum() + self.fn.sum()
        return float(2 * tp / (2 * tp + wrong)) if 2 * tp + wrong else math.nan

    @property
    def balanced_accuracy(self) -> float:
        """Mean recall over the classes present (scikit-learn's ``balanced_accuracy_score``)."""
        return _nanmean(self.recall)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """``matrix[true, predicted]`` counts of single-label class indices."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(truth, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return matrix
