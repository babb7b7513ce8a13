"""OOD metrics against hand-worked cases and brute-force definitions."""

from __future__ import annotations

import numpy as np
import pytest

from hvae.evaluation import ood


def _brute_auroc(a: np.ndarray, b: np.ndarray) -> float:
    diff = b[:, None] - a[None, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def _brute_ap(a: np.ndarray, b: np.ndarray) -> float:
    """sklearn's average precision, written out: thresholds at each distinct score."""
    scores = np.r_[b, a]
    labels = np.r_[np.ones(len(b)), np.zeros(len(a))]
    total, previous_recall = 0.0, 0.0
    for t in np.unique(scores)[::-1]:
        hit = scores >= t
        recall = labels[hit].sum() / len(b)
        total += (recall - previous_recall) * labels[hit].mean()
        previous_recall = recall
    return total


def test_perfect_and_reversed_separation() -> None:
    a, b = np.array([0.0, 1.0, 2.0]), np.array([3.0, 4.0])
    assert ood.summary(a, b) == {"auroc": 1.0, "auprc": 1.0, "fpr80": 0.0}
    flipped = ood.summary(b, a)
    assert flipped["auroc"] == 0.0 and flipped["fpr80"] == 1.0


def test_all_ties_are_chance() -> None:
    a, b = np.zeros(4), np.zeros(6)
    assert ood.auroc(a, b) == 0.5
    assert ood.auprc(a, b) == pytest.approx(0.6)  # the positive fraction
    assert ood.fpr_at_tpr(a, b) == 1.0


def test_a_hand_worked_case() -> None:
    a = np.array([0.1, 0.4, 0.35, 0.8])  # in-distribution
    b = np.array([0.9, 0.5, 0.2])  # OOD
    # pairs won by OOD: 0.9 beats 4, 0.5 beats 3, 0.2 beats 1 -> 8 of 12
    assert ood.auroc(a, b) == pytest.approx(8 / 12)
    fpr, tpr = ood.roc_curve(a, b)
    np.testing.assert_allclose(fpr, [0, 0, 0.25, 0.25, 0.5, 0.75, 0.75, 1.0])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 1, 1])
    assert ood.fpr_at_tpr(a, b, 0.8) == 0.75
    assert ood.fpr_at_tpr(a, b, 0.5) == 0.25


@pytest.mark.parametrize("seed", range(5))
def test_matches_brute_force_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 6, 40).astype(float)  # few distinct values: many ties
    b = rng.integers(2, 8, 25).astype(float)
    assert ood.auroc(a, b) == pytest.approx(_brute_auroc(a, b))
    assert ood.auprc(a, b) == pytest.approx(_brute_ap(a, b))


def test_input_order_does_not_matter() -> None:
    rng = np.random.default_rng(9)
    a, b = rng.normal(size=50), rng.normal(1.0, size=30)
    assert ood.summary(a, b) == ood.summary(rng.permutation(a), rng.permutation(b))


@pytest.mark.parametrize(
    ("a", "b"), [([np.nan, 1.0], [2.0]), ([1.0], [np.inf]), ([], [1.0]), ([1.0], [])]
)
def test_bad_scores_are_refused(a, b) -> None:
    with pytest.raises(ValueError):
        ood.auroc(np.array(a), np.array(b))


def test_thinned_roc_keeps_the_ends_and_lies_on_the_full_curve() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=5000), rng.normal(0.5, size=5000)
    fpr, tpr = ood.roc_curve(a, b)
    thin_fpr, thin_tpr = ood.thinned_roc(a, b, points=101)
    assert len(fpr) > 9000 and len(thin_fpr) == 101
    assert (thin_fpr[0], thin_tpr[0]) == (0.0, 0.0) and (thin_fpr[-1], thin_tpr[-1]) == (1.0, 1.0)
    full = set(zip(fpr.tolist(), tpr.tolist(), strict=True))
    assert all(p in full for p in zip(thin_fpr.tolist(), thin_tpr.tolist(), strict=True))
    assert np.all(np.diff(thin_fpr) >= 0) and np.all(np.diff(thin_tpr) >= 0)
    # Short curves are returned whole.
    np.testing.assert_array_equal(
        ood.thinned_roc(a[:10], b[:10])[0], ood.roc_curve(a[:10], b[:10])[0]
    )
