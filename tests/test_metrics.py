"""Our NumPy metrics against scikit-learn (what the original used)."""

import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn import metrics as skm

from ast_audio.train.metrics import (
    average_precision,
    calculate_stats,
    d_prime,
    precision_recall_curve,
    roc_auc,
)


def random_case(seed, n=500, classes=6, ties=False):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, classes)) < 0.2).astype(np.float64)
    scores = rng.random((n, classes)) + targets * rng.random((n, classes))
    if ties:
        scores = np.round(scores, 1)  # many tied scores
    return scores, targets


@pytest.mark.parametrize("seed, ties", [(0, False), (1, True), (2, False), (3, True)])
def test_ap_auc_pr_curve_match_sklearn(seed, ties):
    scores, targets = random_case(seed, ties=ties)
    for k in range(targets.shape[1]):
        y, s = targets[:, k], scores[:, k]
        assert average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
        assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
        precision, recall = precision_recall_curve(y, s)
        sk_p, sk_r, _ = skm.precision_recall_curve(y, s)
        # ours stops where full recall is first reached (scikit-learn <= 1.0): a tail of today's curve
        np.testing.assert_allclose(precision, sk_p[len(sk_p) - len(precision) :])
        np.testing.assert_allclose(recall, sk_r[len(sk_r) - len(recall) :])
        assert recall[0] == 1.0 and recall[-1] == 0.0 and precision[-1] == 1.0


def test_stats_match_the_original_formulas():
    scores, targets = random_case(5, n=2500, classes=4)
    stats = calculate_stats(scores, targets)
    assert stats.mAP == pytest.approx(np.mean([skm.average_precision_score(targets[:, k], scores[:, k]) for k in range(4)]))
    assert stats.mAUC == pytest.approx(skm.roc_auc_score(targets, scores, average="macro"))
    assert stats.d_prime == pytest.approx(norm.ppf(stats.mAUC) * math.sqrt(2.0))
    assert stats.acc == pytest.approx(skm.accuracy_score(targets.argmax(1), scores.argmax(1)))
    # the middle point of the curve subsampled every 1000 points
    for k in range(4):
        p, r = precision_recall_curve(targets[:, k], scores[:, k])
        kept = p[::1000]
        assert stats.mid_precision[k] == kept[len(kept) // 2] and stats.mid_recall[k] == r[::1000][len(kept) // 2]
    assert stats.main("mAP") == stats.mAP and stats.main("acc") == stats.acc


def test_classes_without_positives_are_left_out_and_counted():
    scores, targets = random_case(7, n=100, classes=3)
    targets[:, 1] = 0
    stats = calculate_stats(scores, targets)
    assert math.isnan(stats.ap[1]) and math.isnan(stats.auc[1]) and stats.skipped_classes == 1
    assert stats.mAP == pytest.approx(np.mean([stats.ap[0], stats.ap[2]]))


def test_d_prime_edges():
    assert d_prime(0.5) == 0.0
    assert d_prime(0.9) == pytest.approx(math.sqrt(2) * norm.ppf(0.9))
    assert d_prime(1.0) == math.inf
