"""Label spreading (hvae.evaluation.label_spreading): the neighbour search, the spreading
step against a dense reference, and the inductive classifier."""

from __future__ import annotations

import numpy as np
import pytest

from hvae import extras
from hvae.evaluation import label_spreading as ls


def _blobs(n_per_class: int = 30, classes: int = 10, seed: int = 0):
    """Well-separated Gaussian clusters in 5 dimensions, one per class."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 20.0, (classes, 5))
    labels = np.repeat(np.arange(classes), n_per_class)
    return (centres[labels] + rng.normal(0.0, 1.0, (len(labels), 5))).astype(np.float32), labels


def test_nearest_matches_brute_force_across_chunks(monkeypatch) -> None:
    monkeypatch.setattr(ls, "SEARCH_CHUNK", 7)  # several chunks, the last one short
    points = np.random.default_rng(1).normal(size=(40, 3)).astype(np.float32)
    idx, dist = ls.nearest(points, points, 4, exclude_self=True)
    full = ((points[:, None] - points[None]) ** 2).sum(-1)
    np.fill_diagonal(full, np.inf)
    expected = np.sort(full, axis=1)[:, :4]
    assert np.sort(dist, axis=1) == pytest.approx(expected, abs=1e-4)
    assert not (idx == np.arange(40)[:, None]).any()  # never its own neighbour
    assert np.take_along_axis(full, idx, 1) == pytest.approx(dist, abs=1e-4)


def test_nearest_refuses_more_neighbours_than_points() -> None:
    points = np.zeros((5, 2), np.float32)
    with pytest.raises(ValueError, match="k = 5 neighbours among 5 points"):
        ls.nearest(points, points, 5, exclude_self=True)
    ls.nearest(points[:1], points, 5)  # without self-exclusion every point may be one


def test_spreading_step_is_zhou_et_al_on_the_symmetrised_graph() -> None:
    points, labels = _blobs(6, 3)
    graph = ls.Graph.build(*ls.nearest(points, points, 3, exclude_self=True))
    n = len(points)
    w = np.zeros((n, n))
    for i in range(n):
        w[i, graph.idx[i]] += graph.weights[i]
    w = w + w.T
    d = 1.0 / np.sqrt(w.sum(1))
    s = d[:, None] * w * d[None, :]
    labelled = np.array([0, 6, 12])
    y = np.zeros((n, ls.CLASSES))
    y[labelled, labels[labelled]] = 1.0
    f = y
    for _ in range(5):
        f = 0.9 * s @ f + 0.1 * y
    expected = f / f.sum(1, keepdims=True)
    assert graph.spread(labelled, labels[labelled], 0.9, 5) == pytest.approx(expected, abs=1e-9)


def test_one_label_per_cluster_labels_every_cluster() -> None:
    points, labels = _blobs()
    mean, scale = ls.standardizer(points)
    standard = (points - mean) / scale
    graph = ls.Graph.build(*ls.nearest(standard, standard, 5, exclude_self=True))
    labelled = np.arange(0, len(points), 30)  # the first point of each class
    classifier = ls.fit(graph, standard, mean, scale, labelled, labels[labelled], 0.99, 50)
    assert (classifier.probabilities.argmax(1) == labels).all()
    fresh, fresh_labels = _blobs(seed=0)  # the same clusters, new draws
    fresh = fresh + np.random.default_rng(5).normal(0.0, 0.1, fresh.shape).astype(np.float32)
    proba = classifier.predict_proba(fresh)
    assert proba.sum(1) == pytest.approx(1.0) and (proba.argmax(1) == fresh_labels).all()


def test_a_point_no_label_reaches_is_uniform() -> None:
    # Two clusters far apart; only the first one has a label.
    points = np.concatenate([np.zeros((5, 2)), np.full((5, 2), 1e3)]).astype(np.float32)
    points += np.random.default_rng(0).normal(0, 0.01, points.shape).astype(np.float32)
    graph = ls.Graph.build(*ls.nearest(points, points, 2, exclude_self=True))
    proba = graph.spread(np.array([0]), np.array([3]), 0.99, 10)
    assert (proba[:5].argmax(1) == 3).all()
    assert proba[5:] == pytest.approx(np.full((5, ls.CLASSES), 0.1))


def test_evaluate_reports_every_budget_and_keeps_the_served_draw() -> None:
    points, labels = _blobs(40)
    test, test_labels = _blobs(10, seed=0)
    results = ls.evaluate((points, labels), (test, test_labels), [10, 50], 3, 5, 0.99, 20, 50, 7)
    assert set(results.metrics) == {
        "semisup_error_n10", "semisup_error_n10_std", "semisup_error_n50",
        "semisup_error_n50_std", "semisup_draws", "semisup_graph_images",
    }  # fmt: skip
    assert results.metrics["semisup_error_n10"] == 0.0  # separable clusters
    assert results.predicted.tolist() == test_labels.tolist()
    assert results.served.probabilities.shape == (400, ls.CLASSES)
    assert results.served.features == "posterior_means"  # unless told what the arrays are
    told = ls.evaluate((points, labels), (test, test_labels), [10], 1, 5, 0.99, 2, 10, 7,
                       features="encoder")  # fmt: skip
    assert told.served.features == "encoder"
    with pytest.raises(ValueError, match="serve = 20: not one of the budgets"):
        ls.evaluate((points, labels), (test, test_labels), [10], 1, 5, 0.99, 2, 20, 7)


def test_the_classifier_round_trips_through_its_file(tmp_path) -> None:
    points, labels = _blobs(5)
    mean, scale = ls.standardizer(points)
    standard = (points - mean) / scale
    graph = ls.Graph.build(*ls.nearest(standard, standard, 3, exclude_self=True))
    classifier = ls.fit(graph, standard, mean, scale, np.arange(0, 50, 5), labels[::5], 0.9, 5)
    extras.save_classifier(classifier, tmp_path)
    loaded = extras.load_classifier(tmp_path)
    assert loaded is not None and loaded.k == 3 and loaded.width == classifier.width
    assert loaded.predict_proba(points) == pytest.approx(classifier.predict_proba(points))


def test_an_outlier_far_from_everything_neither_poisons_the_graph_nor_loses_its_vote() -> None:
    """Its weights underflow to zero (bench.semisup_methods on raw pixels once made every
    probability NaN this way)."""
    points, labels = _blobs(10)
    points = np.concatenate([points, np.full((1, 5), 1e6, np.float32)])
    graph = ls.Graph.build(*ls.nearest(points, points, 3, exclude_self=True))
    labelled = np.arange(0, 100, 10)
    proba = graph.spread(labelled, labels[labelled], 0.99, 20)
    assert np.isfinite(proba).all()
    assert (proba[:100].argmax(1) == labels).all()
    assert proba[100] == pytest.approx(np.full(ls.CLASSES, 0.1))  # isolated, unlabelled
    mean, scale = np.zeros(5, np.float32), np.ones(5, np.float32)
    classifier = ls.fit(graph, points, mean, scale, labelled, labels[labelled], 0.99, 20)
    # Every weight of a query this far underflows even in float64; it still takes the vote
    # of its nearest training images.
    far = points[:1] + 1e3
    proba = classifier.predict_proba(far)
    nearest = np.argmin(((points[:100].astype(np.float64) - far) ** 2).sum(1))
    assert np.isfinite(proba).all() and proba.argmax() == labels[nearest]
