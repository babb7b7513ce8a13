"""The softmax-regression probe: gradients, convergence, label budgets."""

from __future__ import annotations

import numpy as np
import pytest

from hvae.evaluation.linear_probe import balanced_subset, fit_softmax, loss_and_grads


def _blobs(n: int, seed: int, spread: float = 1.0):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(scale=3.0, size=(10, 16))
    labels = rng.integers(0, 10, n)
    return centres[labels] + spread * rng.normal(size=(n, 16)), labels


def test_gradients_match_finite_differences() -> None:
    rng = np.random.default_rng(1)
    x, labels = rng.normal(size=(20, 5)), rng.integers(0, 3, 20)
    onehot = np.eye(3)[labels]
    w, b = rng.normal(size=(5, 3)), rng.normal(size=3)
    _, gw, gb = loss_and_grads(w, b, x, onehot, l2=0.1)
    eps = 1e-6
    for i, j in [(0, 0), (2, 1), (4, 2)]:
        dw = np.zeros_like(w)
        dw[i, j] = eps
        numeric = (
            loss_and_grads(w + dw, b, x, onehot, 0.1)[0]
            - loss_and_grads(w - dw, b, x, onehot, 0.1)[0]
        ) / (2 * eps)
        assert gw[i, j] == pytest.approx(numeric, rel=1e-5)
    db = np.zeros(3)
    db[1] = eps
    numeric = (
        loss_and_grads(w, b + db, x, onehot, 0.1)[0] - loss_and_grads(w, b - db, x, onehot, 0.1)[0]
    ) / (2 * eps)
    assert gb[1] == pytest.approx(numeric, rel=1e-5)


def test_separable_classes_are_learned_from_100_labels() -> None:
    x, y = _blobs(100, seed=2)
    test_x, test_y = _blobs(2000, seed=3)
    assert fit_softmax(x, y).accuracy(test_x, test_y) > 0.95


def test_noise_features_give_chance_accuracy() -> None:
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(1000, 8)), rng.integers(0, 10, 1000)
    test_x, test_y = rng.normal(size=(5000, 8)), rng.integers(0, 10, 5000)
    assert 0.05 < fit_softmax(x, y).accuracy(test_x, test_y) < 0.15


def test_a_constant_feature_does_no_harm() -> None:
    x, y = _blobs(200, seed=5)
    x = np.c_[x, np.ones(len(x))]
    test_x, test_y = _blobs(1000, seed=6)
    probe = fit_softmax(x, y)
    assert np.all(np.isfinite(probe.weights))
    assert probe.accuracy(np.c_[test_x, np.ones(len(test_x))], test_y) > 0.9


def test_balanced_subset() -> None:
    labels = np.repeat(np.arange(10), 30)
    picked = balanced_subset(labels, 100, seed=0)
    assert len(picked) == len(set(picked)) == 100
    assert np.all(np.bincount(labels[picked]) == 10)
    np.testing.assert_array_equal(picked, balanced_subset(labels, 100, seed=0))
    assert not np.array_equal(picked, balanced_subset(labels, 100, seed=1))
    with pytest.raises(ValueError, match="multiple of 10"):
        balanced_subset(labels, 105, seed=0)
    with pytest.raises(ValueError, match="class 0 has 30 examples, need 40"):
        balanced_subset(labels, 400, seed=0)
