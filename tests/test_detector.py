"""The served OOD detector: candidate scores, typicality, the validation choice, the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hvae import artifacts
from hvae.errors import DataError
from hvae.evaluation import detector


def _bounds(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """(n, 3) bound vectors shaped like a model's: L >= L>1 >= L>2, strongly correlated."""
    rng = np.random.default_rng(seed)
    base = -90.0 + 5.0 * rng.standard_normal(n) + shift
    gap1 = 20.0 + 3.0 * rng.standard_normal(n)
    gap2 = 40.0 + 4.0 * rng.standard_normal(n)
    return np.stack([base, base - gap1, base - gap1 - gap2], axis=1)


def test_scores_are_the_likelihood_and_every_llr() -> None:
    bounds = np.array([[-80.0, -95.0, -130.0], [-100.0, -101.0, -104.0]])
    scores = detector.scores(bounds)
    assert sorted(scores) == ["likelihood", "llr_k1", "llr_k2"]
    np.testing.assert_array_equal(scores["likelihood"], [80.0, 100.0])
    np.testing.assert_array_equal(scores["llr_k1"], [15.0, 1.0])
    np.testing.assert_array_equal(scores["llr_k2"], [50.0, 4.0])
    assert detector.score_names(3) == ["likelihood", "llr_k1", "llr_k2", "typicality"]
    assert [detector.score_label(s) for s in detector.score_names(3)] == [
        "likelihood",
        "LLR>1",
        "LLR>2",
        "typicality",
    ]


def test_typicality_is_two_sided_and_blind_to_linear_maps_of_the_bounds() -> None:
    fit = _bounds(4000, 0)
    typicality = detector.Typicality.fit(fit)
    centre = fit.mean(0, keepdims=True)
    # Twice as likely as the training images, or half as: both are atypical.
    step = np.array([[30.0, 30.0, 30.0]])  # 6 standard deviations of L
    higher, lower = centre + step, centre - step
    assert typicality(higher)[0] == pytest.approx(typicality(lower)[0], rel=1e-6)
    assert typicality(higher)[0] > 3 * np.quantile(typicality(_bounds(1000, 1)), 0.99)
    # A vector whose lowest layer adds less than usual (LLR>1 small), at a typical L.
    odd = centre + np.array([[0.0, 15.0, 15.0]])
    assert typicality(odd)[0] > np.quantile(typicality(_bounds(1000, 1)), 0.99)
    # The Mahalanobis distance of the LLRs equals that of the bounds they are made of.
    transform = np.array([[1.0, 1.0, 1.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])
    test = _bounds(50, 2, shift=10.0)
    mapped = detector.Typicality.fit(fit @ transform)
    np.testing.assert_allclose(mapped(test @ transform), typicality(test), rtol=1e-4)


def test_typicality_needs_more_images_than_bounds() -> None:
    with pytest.raises(ValueError, match=r"need more images than bounds"):
        detector.Typicality.fit(np.zeros((4, 3)))


def test_calibrate_chooses_on_validation_and_sets_the_threshold_there() -> None:
    fit, valid = _bounds(2000, 0), _bounds(2000, 1)
    # OOD images *more* likely than the training data (MNIST under a Fashion-MNIST model):
    # the likelihood score ranks them below every typical image, typicality above.
    ood_valid = _bounds(2000, 2, shift=40.0)
    chosen, metrics = detector.calibrate(fit, valid, ood_valid, samples=7, tpr=0.95)
    assert chosen.score == "typicality"
    assert metrics["likelihood_auroc"] < 0.01 and metrics["typicality_auroc"] > 0.99
    for name in detector.score_names(3):
        assert {f"{name}_auroc", f"{name}_auprc", f"{name}_fpr80"} <= metrics.keys()
    assert chosen.samples == 7 and chosen.layers == [0, 1, 2]
    accepted = np.mean(chosen(valid) <= chosen.threshold)
    assert accepted == pytest.approx(0.95, abs=0.001) and accepted >= 0.95
    assert metrics["chosen_tpr"] == accepted
    assert metrics["chosen_ood_flagged"] == np.mean(chosen(ood_valid) > chosen.threshold) > 0.99
    # Less likely OOD images: the plain likelihood separates them as well, and wins the tie.
    chosen, _ = detector.calibrate(fit, valid, _bounds(2000, 3, shift=-80.0), 7, 0.95)
    assert chosen.score == "likelihood" and chosen.layers == [0]


def test_a_named_score_is_served_whatever_validation_says() -> None:
    fit, valid, ood_valid = _bounds(500, 0), _bounds(500, 1), _bounds(500, 2, shift=40.0)
    chosen, _ = detector.calibrate(fit, valid, ood_valid, 3, 0.9, score="llr_k2")
    assert chosen.score == "llr_k2" and chosen.layers == [0, 2]
    assert chosen.threshold == pytest.approx(np.quantile(valid[:, 0] - valid[:, 2], 0.9), abs=0.5)
    with pytest.raises(ValueError, match=r"OOD score 'llr_k3': expected one of likelihood, "):
        detector.calibrate(fit, valid, ood_valid, 3, 0.9, score="llr_k3")


def test_the_detector_file_round_trips_and_a_damaged_one_is_one_line(tmp_path: Path) -> None:
    chosen, _ = detector.calibrate(_bounds(300, 0), _bounds(300, 1), _bounds(300, 2, 9.0), 5, 0.95)
    artifacts.save_detector(chosen, tmp_path)
    loaded = artifacts.load_detector(tmp_path)
    test = _bounds(20, 4)
    np.testing.assert_array_equal(loaded(test), chosen(test))
    assert (loaded.score, loaded.threshold, loaded.samples) == (
        chosen.score,
        chosen.threshold,
        chosen.samples,
    )
    assert artifacts.load_detector(tmp_path / "elsewhere") is None
    data = json.loads((tmp_path / artifacts.DETECTOR).read_text())
    for damage in (
        lambda d: d.pop("threshold"),
        lambda d: d.update(score="llr_k9"),
        lambda d: d["typicality"].update(center=[0.0]),
        lambda d: d.update(samples=0),
    ):
        broken = json.loads(json.dumps(data))
        damage(broken)
        (tmp_path / artifacts.DETECTOR).write_text(json.dumps(broken))
        with pytest.raises(DataError, match=r"ood_detector.json: cannot load the OOD detector"):
            artifacts.load_detector(tmp_path)
    (tmp_path / artifacts.DETECTOR).write_text("{not json")
    with pytest.raises(DataError, match=r"^\S*ood_detector.json: cannot load the OOD detector"):
        artifacts.load_detector(tmp_path)
