"""The served OOD detector: candidate scores, typicality, the validation choice, the file."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from hvae import extras
from hvae.errors import ConfigError, DataError
from hvae.evaluation import detector


def _stats(n: int, seed: int, shift: float = 0.0, recon_gap: float = 0.0) -> np.ndarray:
    """(n, 6) statistics shaped like a 3-layer model's: the bounds L >= L>1 >= L>2, strongly
    correlated, then the reconstruction terms R_0 >= R_1 >= R_2 near them; `recon_gap`
    widens R_0 - R_1 alone (an image the lowest layer explains unusually well)."""
    rng = np.random.default_rng(seed)
    base = -90.0 + 5.0 * rng.standard_normal(n) + shift
    gap1 = 20.0 + 3.0 * rng.standard_normal(n)
    gap2 = 40.0 + 4.0 * rng.standard_normal(n)
    r0 = base + 10.0 + rng.standard_normal(n)
    r1 = r0 - 15.0 - 2.0 * rng.standard_normal(n) - recon_gap
    r2 = r1 - 30.0 - 3.0 * rng.standard_normal(n)
    return np.stack([base, base - gap1, base - gap1 - gap2, r0, r1, r2], axis=1)


def test_scores_are_the_likelihood_every_ratio_and_both_typicalities() -> None:
    stats = np.array(
        [[-80.0, -95.0, -130.0, -70.0, -75.0, -90.0], [-100.0, -101.0, -104.0, -90, -99, -99]]
    )
    scores = detector.scores(stats)
    assert sorted(scores) == ["likelihood", "llr_k1", "llr_k2", "recon_k1", "recon_k2"]
    np.testing.assert_array_equal(scores["likelihood"], [80.0, 100.0])
    np.testing.assert_array_equal(scores["llr_k1"], [15.0, 1.0])
    np.testing.assert_array_equal(scores["llr_k2"], [50.0, 4.0])
    np.testing.assert_array_equal(scores["recon_k1"], [5.0, 9.0])
    np.testing.assert_array_equal(scores["recon_k2"], [20.0, 9.0])
    names = detector.score_names(3)
    assert names == [
        "likelihood",
        "llr_k1",
        "llr_k2",
        "recon_k1",
        "recon_k2",
        "typicality",
        "typicality_recon",
    ]
    assert [detector.score_label(s) for s in names] == [
        "likelihood",
        "LLR>1",
        "LLR>2",
        "recon>1",
        "recon>2",
        "typicality",
        "typicality_recon",
    ]
    fits = detector.fit_typicalities(_stats(500, 0))
    with_fits = detector.scores(_stats(5, 1), fits)
    # typicality reads the bounds only; typicality_recon every statistic.
    np.testing.assert_array_equal(with_fits["typicality"], fits["typicality"](_stats(5, 1)[:, :3]))
    assert fits["typicality"].center.shape == (3,) and fits["typicality_recon"].center.shape == (6,)


def test_typicality_is_two_sided_and_blind_to_linear_maps_of_the_bounds() -> None:
    fit = _stats(4000, 0)[:, :3]
    typicality = detector.Typicality.fit(fit)
    centre = fit.mean(0, keepdims=True)
    # Twice as likely as the training images, or half as: both are atypical.
    step = np.array([[30.0, 30.0, 30.0]])  # 6 standard deviations of L
    higher, lower = centre + step, centre - step
    reference = typicality(_stats(1000, 1)[:, :3])
    assert typicality(higher)[0] == pytest.approx(typicality(lower)[0], rel=1e-6)
    assert typicality(higher)[0] > 3 * np.quantile(reference, 0.99)
    # A vector whose lowest layer adds less than usual (LLR>1 small), at a typical L.
    odd = centre + np.array([[0.0, 15.0, 15.0]])
    assert typicality(odd)[0] > np.quantile(reference, 0.99)
    # The Mahalanobis distance of the LLRs equals that of the bounds they are made of.
    transform = np.array([[1.0, 1.0, 1.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])
    test = _stats(50, 2, shift=10.0)[:, :3]
    mapped = detector.Typicality.fit(fit @ transform)
    np.testing.assert_allclose(mapped(test @ transform), typicality(test), rtol=1e-4)


def test_typicality_needs_more_images_than_statistics() -> None:
    with pytest.raises(ValueError, match=r"need more images than statistics"):
        detector.Typicality.fit(np.zeros((4, 3)))


def test_calibrate_chooses_on_validation_and_sets_the_threshold_there() -> None:
    fit, valid = _stats(2000, 0), _stats(2000, 1)
    # OOD images *more* likely than the training data (MNIST under a Fashion-MNIST model):
    # the likelihood score ranks them below every typical image, typicality above.
    ood_valid = _stats(2000, 2, shift=40.0)
    chosen, metrics = detector.calibrate(fit, valid, ood_valid, samples=7, draws=3, tpr=0.95)
    assert chosen.score == "typicality"
    assert metrics["likelihood_auroc"] < 0.01 and metrics["typicality_auroc"] > 0.99
    for name in detector.score_names(3):
        assert {f"{name}_auroc", f"{name}_auprc", f"{name}_fpr80"} <= metrics.keys()
    assert (chosen.samples, chosen.draws, chosen.columns) == (7, 3, [0, 1, 2])
    assert chosen.cost == 3 * 7
    accepted = np.mean(chosen(valid) <= chosen.threshold)
    assert accepted == pytest.approx(0.95, abs=0.001) and accepted >= 0.95
    assert metrics["chosen_tpr"] == accepted
    assert metrics["chosen_ood_flagged"] == np.mean(chosen(ood_valid) > chosen.threshold) > 0.99
    # Less likely OOD images: the plain likelihood separates them as well, and wins the tie.
    chosen, _ = detector.calibrate(fit, valid, _stats(2000, 3, shift=-80.0), 7, 3, 0.95)
    assert chosen.score == "likelihood" and chosen.columns == [0] and chosen.cost == 7


def test_only_the_reconstruction_terms_tell_some_images_apart() -> None:
    """OOD images with typical bounds whose lowest layer explains them far better than usual
    at its prior mean: the reconstruction ratio and typicality_recon see them, the bounds'
    scores do not."""
    fit, valid = _stats(2000, 0), _stats(2000, 1)
    ood_valid = _stats(2000, 2, recon_gap=-12.0)
    chosen, metrics = detector.calibrate(fit, valid, ood_valid, 5, 4, 0.95)
    assert metrics["typicality_auroc"] < 0.6 and metrics["llr_k1_auroc"] < 0.6
    assert metrics["recon_k1_auroc"] < 0.01  # one-sided: the ratio is *smaller* for them
    assert metrics["typicality_recon_auroc"] > 0.99
    assert chosen.score == "typicality_recon" and chosen.columns == list(range(6))
    assert chosen.cost == 3 * 5 + 3 * 4


def test_a_named_score_is_served_whatever_validation_says() -> None:
    fit, valid, ood_valid = _stats(500, 0), _stats(500, 1), _stats(500, 2, shift=40.0)
    chosen, _ = detector.calibrate(fit, valid, ood_valid, 3, 2, 0.9, score="llr_k2")
    assert chosen.score == "llr_k2" and chosen.columns == [0, 2]
    assert chosen.threshold == pytest.approx(np.quantile(valid[:, 0] - valid[:, 2], 0.9), abs=0.5)
    chosen, _ = detector.calibrate(fit, valid, ood_valid, 3, 2, 0.9, score="recon_k1")
    assert chosen.columns == [3, 4] and chosen.cost == 2 * 2
    with pytest.raises(ValueError, match=r"OOD score 'llr_k3': expected one of likelihood, "):
        detector.calibrate(fit, valid, ood_valid, 3, 2, 0.9, score="llr_k3")
    with pytest.raises(ValueError, match=r"OOD score 'recon_k0': expected one of likelihood, "):
        detector.calibrate(fit, valid, ood_valid, 3, 2, 0.9, score="recon_k0")


def test_the_detector_file_round_trips_and_a_damaged_one_is_one_line(tmp_path: Path) -> None:
    chosen, _ = detector.calibrate(
        _stats(300, 0), _stats(300, 1), _stats(300, 2, 9.0), 5, 2, 0.95, "typicality_recon"
    )
    extras.save_detector(chosen, tmp_path)
    loaded = extras.load_detector(tmp_path)
    test = _stats(20, 4)
    np.testing.assert_array_equal(loaded(test), chosen(test))
    assert (loaded.score, loaded.threshold, loaded.samples, loaded.draws) == (
        chosen.score,
        chosen.threshold,
        chosen.samples,
        chosen.draws,
    )
    assert extras.load_detector(tmp_path / "elsewhere") is None
    data = json.loads((tmp_path / extras.DETECTOR).read_text())
    for damage in (
        lambda d: d.pop("threshold"),
        lambda d: d.pop("draws"),
        lambda d: d.update(score="llr_k9"),
        lambda d: d["typicality"]["typicality"].update(center=[0.0]),
        lambda d: d["typicality"]["typicality_recon"].update(scale=[1.0] * 3),
        lambda d: d["typicality"].pop("typicality_recon"),
        lambda d: d.update(samples=0),
        lambda d: d.update(draws=0),
    ):
        broken = json.loads(json.dumps(data))
        damage(broken)
        (tmp_path / extras.DETECTOR).write_text(json.dumps(broken))
        with pytest.raises(DataError, match=r"ood_detector.json: cannot load the OOD detector"):
            extras.load_detector(tmp_path)
    (tmp_path / extras.DETECTOR).write_text("{not json")
    with pytest.raises(DataError, match=r"^\S*ood_detector.json: cannot load the OOD detector"):
        extras.load_detector(tmp_path)


@pytest.mark.parametrize("layers", [2, 4])
def test_config_accepts_exactly_the_detector_scores(layers: int) -> None:
    from hvae.config import load_raw, parse_params

    raw = load_raw(Path(__file__).resolve().parents[1] / "params.yaml")
    raw["model"]["latent_dims"] = [8] * layers
    for score in ["auto", *detector.score_names(layers)]:
        raw["calibrate"]["score"] = score
        assert parse_params(raw, "params.yaml").calibrate.score == score
    for score in (f"llr_k{layers}", f"recon_k{layers}", "typicality_bounds"):
        raw["calibrate"]["score"] = score
        with pytest.raises(ConfigError, match=r"calibrate\.score: must be one of auto, "):
            parse_params(raw, "params.yaml")


def _features(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """(n, 8) features of two clusters; `shift` moves every point off them."""
    rng = np.random.default_rng(seed)
    centres = np.array([[3.0] * 4 + [0.0] * 4, [0.0] * 4 + [3.0] * 4])
    return centres[rng.integers(0, 2, n)] + rng.standard_normal((n, 8)) + shift


def test_the_neighbour_distance_is_the_kth_nearest_on_the_standardized_sphere() -> None:
    reference, queries = _features(300, 0), _features(7, 1)
    distance = detector.NeighbourDistance.fit(reference, 5)
    # By hand: standardize by the reference's mean and std, scale to unit length, then the
    # 5th smallest squared distance to the reference.
    mean, std = reference.mean(0), reference.std(0)

    def sphere(x: np.ndarray) -> np.ndarray:
        z = (x - mean) / std
        return z / np.linalg.norm(z, axis=1, keepdims=True)

    squared = ((sphere(queries)[:, None, :] - sphere(reference)[None]) ** 2).sum(-1)
    np.testing.assert_allclose(distance(queries), np.sort(squared, 1)[:, 4], rtol=1e-4, atol=1e-5)
    # Only a feature vector's direction counts, and a constant feature is harmless.
    np.testing.assert_allclose(distance(queries), distance(mean + 3.0 * (queries - mean)), 1e-4)
    with_constant = detector.NeighbourDistance.fit(np.c_[reference, np.ones(300)], 5)
    assert np.isfinite(with_constant(np.c_[queries, np.ones(7)])).all()
    assert distance(np.zeros((0, 8))).shape == (0,)
    with pytest.raises(ValueError, match=r"need at least k = 301 reference images"):
        detector.NeighbourDistance.fit(reference, 301)


def test_calibrate_offers_the_neighbour_distance_only_with_a_reference() -> None:
    fit, valid = _stats(300, 0), _stats(300, 1)
    # OOD images whose statistics look typical but whose features lie between the clusters.
    ood_valid = _stats(300, 2)
    reference_images = np.random.default_rng(5).random((400, 784)) < 0.2
    features = (_features(300, 1), _features(300, 2) * np.tile([1.0, -1.0], 4))
    distance = detector.NeighbourDistance.fit(_features(400, 3), 10)
    chosen, metrics = detector.calibrate(
        fit, valid, ood_valid, 3, 2, 0.95, "auto", distance, reference_images, features
    )
    assert metrics["neighbours_auroc"] > 0.95 > metrics["typicality_recon_auroc"]
    assert chosen.score == "neighbours" and chosen.columns == []
    assert (chosen.neighbours, len(chosen.reference_images)) == (10, 400)
    # 400 reference images search at about one importance sample (REFERENCE_PER_SAMPLE 500).
    assert chosen.cost == 1
    in_scores = chosen(np.full((300, 6), np.nan), features[0])
    assert chosen.threshold == pytest.approx(np.quantile(in_scores, 0.95, method="higher"))
    with pytest.raises(ValueError, match=r"neighbours: needs the fitted distance and the"):
        chosen(valid)
    # Without a reference the candidate does not exist.
    _, metrics = detector.calibrate(fit, valid, ood_valid, 3, 2, 0.95)
    assert "neighbours_auroc" not in metrics
    with pytest.raises(ValueError, match=r"OOD score 'neighbours': no reference images to search"):
        detector.calibrate(fit, valid, ood_valid, 3, 2, 0.95, "neighbours")
    with pytest.raises(ValueError, match=r"needs its reference images and the validation features"):
        detector.calibrate(fit, valid, ood_valid, 3, 2, 0.95, "auto", distance)


def test_the_reference_images_round_trip_at_one_bit_a_pixel(tmp_path: Path) -> None:
    reference_images = np.random.default_rng(5).random((123, 784)) < 0.2
    distance = detector.NeighbourDistance.fit(_features(123, 3), 7)
    features = (_features(50, 1), _features(50, 2, 2.0))
    stats = (_stats(300, 0), _stats(50, 1), _stats(50, 2, 9.0))
    chosen, _ = detector.calibrate(
        *stats, 3, 2, 0.9, "neighbours", distance, reference_images, features
    )
    extras.save_detector(chosen, tmp_path)
    assert (tmp_path / extras.REFERENCE).stat().st_size < 123 * 784 / 8 + 2000
    loaded = extras.load_detector(tmp_path)
    np.testing.assert_array_equal(loaded.reference_images, reference_images)
    assert (loaded.score, loaded.neighbours) == ("neighbours", 7)
    assert loaded.threshold == chosen.threshold
    # The fitted distance is rebuilt from the images and the weights (anomaly.with_neighbours).
    assert loaded.distance is None
    data = json.loads((tmp_path / extras.DETECTOR).read_text())
    assert (data["reference_images"], data["neighbours"]) == (123, 7)
    # A detector without a reference writes an empty npz and reads back without one, and a
    # file written before the neighbour distance (no such keys) still loads.
    plain, _ = detector.calibrate(*stats, 3, 2, 0.9, "typicality")
    other = tmp_path / "plain"
    extras.save_detector(plain, other)
    assert extras.load_detector(other).reference_images is None
    old = {k: v for k, v in plain.to_dict().items() if k not in ("neighbours", "reference_images")}
    (other / extras.DETECTOR).write_text(json.dumps(old))
    (other / extras.REFERENCE).unlink()
    assert extras.load_detector(other).neighbours == 0

    # Damage: each a one-line DataError naming the file, nothing half-loaded.
    for damage, named in (
        (lambda d: d.update(reference_images=124), r"ood_detector.json with ood_reference.npz"),
        (lambda d: d.update(neighbours=0), r"ood_detector.json with ood_reference.npz"),
        (lambda d: d.update(neighbours=124), r"ood_detector.json with ood_reference.npz"),
        (lambda d: d.update(reference_images=10**9), r"ood_detector.json with ood_reference.npz"),
    ):
        broken = json.loads(json.dumps(data))
        damage(broken)
        (tmp_path / extras.DETECTOR).write_text(json.dumps(broken))
        with pytest.raises(DataError, match=rf"^\S*{named}: cannot load the OOD detector") as info:
            extras.load_detector(tmp_path)
        assert "\n" not in str(info.value)
    (tmp_path / extras.DETECTOR).write_text(json.dumps(data))
    (tmp_path / extras.REFERENCE).write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"^\S*ood_reference.npz: cannot load the reference images"):
        extras.load_detector(tmp_path)
    # A compressed npz that would unpack to more than any reference: refused from its header.
    with (tmp_path / extras.REFERENCE).open("wb") as f:
        huge = np.zeros(extras.REFERENCE_BYTES + 1, np.uint8)
        np.savez_compressed(f, reference=huge, pixels=np.array(784))
    assert (tmp_path / extras.REFERENCE).stat().st_size < extras.REFERENCE_BYTES // 100
    with pytest.raises(
        DataError, match=r"^\S*ood_reference.npz: cannot load the reference images \(reference: "
    ) as info:
        extras.load_detector(tmp_path)
    assert f"above {extras.REFERENCE_BYTES})" in str(info.value)
    (tmp_path / extras.REFERENCE).unlink()
    with pytest.raises(DataError, match=r"^\S*ood_reference.npz: not found \(run `hvae calibrate"):
        extras.load_detector(tmp_path)
    with pytest.raises(ValueError, match=r"score neighbours: no reference images"):
        dataclasses.replace(plain, score="neighbours")
