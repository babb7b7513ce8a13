"""Out-of-distribution detection metrics from per-image anomaly scores.

Convention: a higher score means "more anomalous", and the OOD images are the positives.
Pure NumPy, no model: evaluate computes the scores, this module only ranks them.
"""

from __future__ import annotations

import numpy as np


def roc_curve(in_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates) at every distinct threshold, from (0, 0).

    Tied scores move both rates in one step, so ties never earn credit by input order.
    """
    scores = np.concatenate([ood_scores, in_scores]).astype(np.float64)
    if not np.all(np.isfinite(scores)):
        raise ValueError("anomaly scores must be finite")
    if len(in_scores) == 0 or len(ood_scores) == 0:
        raise ValueError("need at least one in-distribution and one OOD score")
    labels = np.concatenate([np.ones(len(ood_scores)), np.zeros(len(in_scores))])
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    # The last index of each run of equal scores: one ROC point per distinct threshold.
    ends = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
    tp = np.cumsum(labels)[ends]
    fp = np.cumsum(1 - labels)[ends]
    return np.r_[0.0, fp / len(in_scores)], np.r_[0.0, tp / len(ood_scores)]


def auroc(in_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """Area under the ROC curve: P(score_ood > score_in) + P(tie) / 2."""
    fpr, tpr = roc_curve(in_scores, ood_scores)
    return float(np.trapezoid(tpr, fpr))


def auprc(in_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """Average precision with OOD as the positive class: sum over thresholds of
    (recall gain) x precision, the step-wise area (no optimistic interpolation)."""
    fpr, tpr = roc_curve(in_scores, ood_scores)
    tp = tpr * len(ood_scores)
    fp = fpr * len(in_scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 1.0)
    return float(np.sum(np.diff(tpr) * precision[1:]))


def fpr_at_tpr(in_scores: np.ndarray, ood_scores: np.ndarray, tpr_level: float = 0.8) -> float:
    """The lowest false positive rate at which at least `tpr_level` of OOD images are caught."""
    fpr, tpr = roc_curve(in_scores, ood_scores)
    return float(fpr[np.argmax(tpr >= tpr_level)])


def thinned_roc(
    in_scores: np.ndarray, ood_scores: np.ndarray, points: int = 1001
) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve with at most `points` points (first and last kept), for plotting:
    20 000 scores give up to 20 001 distinct thresholds, far more than a plot can show."""
    fpr, tpr = roc_curve(in_scores, ood_scores)
    if len(fpr) <= points:
        return fpr, tpr
    keep = np.unique(np.linspace(0, len(fpr) - 1, points).round().astype(int))
    return fpr[keep], tpr[keep]


def summary(in_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    return {
        "auroc": auroc(in_scores, ood_scores),
        "auprc": auprc(in_scores, ood_scores),
        "fpr80": fpr_at_tpr(in_scores, ood_scores, 0.8),
    }
