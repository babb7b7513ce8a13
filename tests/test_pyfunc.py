"""The pyfunc scorer that registered versions are loaded with, on a tiny saved model."""

from __future__ import annotations

import dataclasses
import itertools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from mlflow.exceptions import MlflowException

from hvae import artifacts, extras
from hvae.errors import DataError
from hvae.evaluation import anomaly, detector, label_spreading, representations
from hvae.model import build_model
from hvae.serving import pyfunc
from hvae.serving.pyfunc import HVAEScorer, _load_pyfunc

COLUMNS = ["elbo", "iw_log_likelihood", "class", "class_probability", "ood_score", "is_ood"]


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory) -> HVAEScorer:
    folder: Path = tmp_path_factory.mktemp("model")
    keras.utils.set_random_seed(0)
    # Pixels on with probability 0.1 a priori, as the detector's in-distribution images: an
    # untrained model's reconstruction terms then tell those from denser images.
    bias = [float(np.log(0.1 / 0.9))] * 784
    model = build_model({"latent_dims": [4, 3], "hidden_dim": 16}, output_bias=bias)
    model.save_weights(folder / artifacts.WEIGHTS)
    artifacts.save_config(model, folder)
    return _load_pyfunc(str(folder))


def _model_copy(factory: pytest.TempPathFactory, scorer: HVAEScorer, name: str) -> Path:
    """A new folder holding the scorer's model files, for a classifier or detector beside."""
    folder: Path = factory.mktemp(name)
    scorer.model.save_weights(folder / artifacts.WEIGHTS)
    artifacts.save_config(scorer.model, folder)
    return folder


@pytest.fixture(scope="module", params=label_spreading.FEATURES)
def classifying(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, scorer: HVAEScorer
) -> HVAEScorer:
    """The same model with a classifier spread from labels on its own features (each kind
    semisup.features can name)."""
    folder = _model_copy(tmp_path_factory, scorer, "classifying")
    images = (np.random.default_rng(2).random((200, 784)) < 0.3).astype(np.float32)
    features = representations.image_features(scorer.model, images, request.param, 64)
    mean, scale = label_spreading.standardizer(features)
    points = (features - mean) / scale
    graph = label_spreading.Graph.build(*label_spreading.nearest(points, points, 5, True))
    labels = np.arange(200) % 10
    classifier = label_spreading.fit(
        graph, points, mean, scale, np.arange(20), labels[:20], 0.9, 10
    )
    extras.save_classifier(dataclasses.replace(classifier, features=request.param), folder)
    return _load_pyfunc(str(folder))


def test_a_model_with_a_classifier_answers_its_class(
    classifying: HVAEScorer, scorer: HVAEScorer
) -> None:
    frame = _frame(30)
    scores = classifying.predict(frame, {"iw_samples": 5})
    # The scores are the model's, whatever the classifier.
    plain = scorer.predict(frame, {"iw_samples": 5})
    pd.testing.assert_frame_equal(
        scores[["elbo", "iw_log_likelihood"]], plain[["elbo", "iw_log_likelihood"]]
    )
    binary = (frame.to_numpy() > 127.5).astype(np.float32)
    # The features the classifier was fitted on, as semisup computes them.
    kind = classifying.classifier.features
    features = representations.image_features(scorer.model, binary, kind, 7)
    width = {"encoder": 16, "posterior_means": 7}[kind]  # hidden_dim; sum of latent_dims
    assert features.shape == (30, width)
    expected = classifying.classifier.predict_proba(features)
    assert scores["class"].tolist() == expected.argmax(axis=1).tolist()
    assert scores["class_probability"].to_numpy() == pytest.approx(expected.max(axis=1), rel=1e-5)
    assert ((scores["class_probability"] >= 0.1 - 1e-6) & (scores["class_probability"] <= 1)).all()


@pytest.fixture(scope="module")
def detecting(tmp_path_factory: pytest.TempPathFactory, scorer: HVAEScorer) -> HVAEScorer:
    """The same model with a typicality_recon detector (every statistic: the bounds and the
    reconstruction terms) calibrated on its own statistics: sparse images in distribution,
    dense ones out."""
    folder = _model_copy(tmp_path_factory, scorer, "detecting")
    rng = np.random.default_rng(3)
    sparse = (rng.random((300, 784)) < 0.1).astype(np.float32)
    dense = (rng.random((100, 784)) < 0.5).astype(np.float32)
    stats = [anomaly.statistics(scorer.model, x, 3, 2, 100, 3) for x in (sparse, dense)]
    chosen, _ = detector.calibrate(
        stats[0][:200], stats[0][200:], stats[1], 3, 2, 0.9, "typicality_recon"
    )
    extras.save_detector(chosen, folder)
    return _load_pyfunc(str(folder))


def test_a_model_with_a_detector_answers_its_ood_score(
    detecting: HVAEScorer, scorer: HVAEScorer
) -> None:
    rng = np.random.default_rng(4)
    pixels = np.concatenate([rng.random((13, 784)) < 0.1, rng.random((12, 784)) < 0.5])
    frame = pd.DataFrame(pixels * 255.0)
    scores = detecting.predict(frame, {"iw_samples": 5})
    plain = scorer.predict(frame, {"iw_samples": 5})
    pd.testing.assert_frame_equal(
        scores[["elbo", "iw_log_likelihood"]], plain[["elbo", "iw_log_likelihood"]]
    )
    # Each row's statistics, each from the row's own stream for it: the 2 bounds at the
    # detector's 3 samples, the 2 reconstruction terms at its 2 draws.
    model, served = detecting.model, detecting.detector
    edges = np.cumsum([0, *model.latent_dims])
    expected = []
    for row in pixels.astype(np.float32):
        x, stats = tf.constant(row[None]), []
        for column in range(4):
            draws = 3 if column < 2 else 2
            noise = pyfunc.row_noise(
                row > 0.5, draws, sum(model.latent_dims), pyfunc.ood_stream(column)
            )
            eps = [tf.constant(noise[:, None, lo:hi]) for lo, hi in itertools.pairwise(edges)]
            if column < 2:
                value = model.iw_log_likelihood(x, 3, 3, column, eps=eps)
            else:
                value = anomaly.reconstruction_term(model, x, 2, column - 2, eps=eps)
            stats.append(value.numpy()[0])
        expected.append(served(np.array([stats]))[0])
    # float32 statistics of a 20-row batch against one row: the rounding differs, slightly.
    np.testing.assert_allclose(scores["ood_score"], expected, rtol=1e-4, atol=1e-3)
    assert scores["is_ood"].tolist() == (np.array(expected) > served.threshold).tolist()
    # Dense rows are far from the sparse images the detector was fitted on.
    assert scores["is_ood"][13:].mean() > scores["is_ood"][:13].mean()
    # 3 samples x 2 bounds and 2 draws x 2 reconstruction terms count in the budget.
    assert detecting.ood_cost == 10
    rows = pyfunc.MAX_ROW_SAMPLES // (pyfunc.MAX_IW_SAMPLES + 10) + 1
    with pytest.raises(ValueError, match=r"^rows \* iw_samples \(\+ the OOD score\): expected "):
        detecting.predict(np.zeros((rows, 784), np.uint8), {"iw_samples": pyfunc.MAX_IW_SAMPLES})


@pytest.fixture(scope="module")
def neighbouring(tmp_path_factory: pytest.TempPathFactory, scorer: HVAEScorer) -> HVAEScorer:
    """The same model serving the neighbour distance: 300 sparse reference images, sparse
    images in distribution, dense ones out."""
    folder = _model_copy(tmp_path_factory, scorer, "neighbouring")
    rng = np.random.default_rng(6)
    reference = rng.random((300, 784)) < 0.1
    sparse = (rng.random((200, 784)) < 0.1).astype(np.float32)
    dense = (rng.random((100, 784)) < 0.5).astype(np.float32)
    distance = detector.NeighbourDistance.fit(
        anomaly.encoder_features(scorer.model, reference, 64), 5
    )
    features = tuple(anomaly.encoder_features(scorer.model, x, 64) for x in (sparse, dense))
    stats = [np.zeros((len(x), 4)) for x in (sparse, sparse, dense)]  # unread by this score
    chosen, _ = detector.calibrate(*stats, 3, 2, 0.9, "neighbours", distance, reference, features)
    extras.save_detector(chosen, folder)
    return _load_pyfunc(str(folder))


def test_a_model_serving_the_neighbour_distance_searches_its_reference(
    neighbouring: HVAEScorer, scorer: HVAEScorer
) -> None:
    rng = np.random.default_rng(7)
    pixels = np.concatenate([rng.random((13, 784)) < 0.1, rng.random((12, 784)) < 0.5])
    scores = neighbouring.predict(pd.DataFrame(pixels * 255.0), {"iw_samples": 5})
    # The distance rebuilt at load from the stored images equals calibrate's, and a row's
    # score is the k-th nearest reference image's distance in the encoder's features.
    served = neighbouring.detector
    reference = anomaly.encoder_features(scorer.model, served.reference_images, 64)
    expected = detector.NeighbourDistance.fit(reference, 5)(
        anomaly.encoder_features(scorer.model, pixels, 64)
    )
    np.testing.assert_allclose(scores["ood_score"], expected, rtol=1e-4, atol=1e-5)
    flagged = scores["ood_score"] > served.threshold
    assert scores["is_ood"].tolist() == flagged.astype(int).tolist()
    assert scores["is_ood"][13:].mean() > scores["is_ood"][:13].mean()
    # A row scores the same alone as in its batch.
    alone = neighbouring.predict(pd.DataFrame(pixels[20:21] * 255.0), {"iw_samples": 5})
    assert alone["ood_score"][0] == scores["ood_score"][20]
    # 300 reference images cost one importance sample's worth a row in the budget.
    assert neighbouring.ood_cost == 1


def test_a_damaged_classifier_is_one_line(tmp_path: Path) -> None:
    (tmp_path / extras.CLASSIFIER).write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"classifier.npz: cannot load the classifier"):
        extras.load_classifier(tmp_path)
    assert extras.load_classifier(tmp_path / "elsewhere") is None


def test_a_classifier_names_its_features_and_an_older_one_reads_posterior_means(
    tmp_path: Path,
) -> None:
    points = np.random.default_rng(0).random((30, 3)).astype(np.float32)
    mean, scale = label_spreading.standardizer(points)
    graph = label_spreading.Graph.build(*label_spreading.nearest(points, points, 3, True))
    fitted = label_spreading.fit(graph, points, mean, scale, np.arange(10), np.arange(10), 0.9, 5)
    encoder = dataclasses.replace(fitted, features="encoder")
    extras.save_classifier(encoder, tmp_path)
    assert extras.load_classifier(tmp_path).features == "encoder"
    # Classifiers saved before semisup.features existed have no such array.
    arrays = {k: v for k, v in encoder.to_arrays().items() if k != "features"}
    np.savez(tmp_path / extras.CLASSIFIER, **arrays)
    assert extras.load_classifier(tmp_path).features == "posterior_means"
    np.savez(tmp_path / extras.CLASSIFIER, **arrays, features=np.array("pixels"))
    with pytest.raises(
        DataError, match=r"cannot load the classifier \(features 'pixels': expected one of "
    ):
        extras.load_classifier(tmp_path)


def _frame(n: int, seed: int = 1) -> pd.DataFrame:
    pixels = np.random.default_rng(seed).integers(0, 256, (n, 784)).astype(np.float64)
    return pd.DataFrame(pixels, columns=[f"p{i}" for i in range(784)])


def test_scores_per_image(scorer: HVAEScorer) -> None:
    scores = scorer.predict(_frame(3), {"iw_samples": 20})
    assert list(scores.columns) == COLUMNS
    assert len(scores) == 3 and np.isfinite(scores[["elbo", "iw_log_likelihood"]]).all().all()
    # No classifier or detector beside this model: the columns say so instead of failing.
    assert (scores["class"] == -1).all() and scores["class_probability"].isna().all()
    assert (scores["is_ood"] == -1).all() and scores["ood_score"].isna().all()
    # The IW estimate with k=20 is (almost surely) above the one-sample ELBO draw on average.
    assert scores["iw_log_likelihood"].mean() > scores["elbo"].mean() - 5.0


def test_same_rows_same_numbers(scorer: HVAEScorer) -> None:
    frame = _frame(4)
    first = scorer.predict(frame, {"iw_samples": 10})
    scorer.predict(_frame(7), {"iw_samples": 30})  # whatever ran in between
    again = scorer.predict(frame, {"iw_samples": 10})
    pd.testing.assert_frame_equal(first, again)
    from_array = scorer.predict(frame.to_numpy(), {"iw_samples": 10})
    pd.testing.assert_frame_equal(first, from_array)


def test_default_iw_samples(scorer: HVAEScorer) -> None:
    frame = _frame(2)
    expected = scorer.predict(frame, {"iw_samples": pyfunc.DEFAULT_IW_SAMPLES})
    for params in (None, {}, {"iw_samples": None}):
        pd.testing.assert_frame_equal(scorer.predict(frame, params), expected)
    # NumPy integers are integers too (MLflow may hand them over).
    pd.testing.assert_frame_equal(
        scorer.predict(frame, {"iw_samples": np.int64(7)}), scorer.predict(frame, {"iw_samples": 7})
    )


@pytest.mark.parametrize("bad", [0, -5, 10**7, 2.5, 2.0, "10", True, [10]])
def test_iw_samples_outside_its_range_or_not_an_integer(scorer: HVAEScorer, bad: object) -> None:
    with pytest.raises(
        ValueError, match=r"^iw_samples: expected an integer from 1 to 1000, got "
    ) as e:
        scorer.predict(_frame(1), {"iw_samples": bad})
    assert "\n" not in str(e.value) and len(str(e.value)) < 120
    # An MlflowException too: the scoring server answers 400 with this message.
    assert isinstance(e.value, MlflowException) and e.value.get_http_status_code() == 400


def test_a_long_string_is_not_echoed(scorer: HVAEScorer) -> None:
    with pytest.raises(ValueError, match="iw_samples") as e:
        scorer.predict(_frame(1), {"iw_samples": "9" * 100_000})
    assert len(str(e.value)) < 120


def test_too_many_rows(scorer: HVAEScorer) -> None:
    with pytest.raises(
        ValueError, match=r"^rows: expected at most 10000 rows per request, got 10001$"
    ):
        scorer.predict(np.zeros((pyfunc.MAX_ROWS + 1, 784), np.uint8))
    rows = pyfunc.MAX_ROW_SAMPLES // pyfunc.MAX_IW_SAMPLES + 1
    with pytest.raises(ValueError, match=r"^rows \* iw_samples: expected at most 200000, got 201 "):
        scorer.predict(np.zeros((rows, 784), np.uint8), {"iw_samples": pyfunc.MAX_IW_SAMPLES})


def test_no_rows(scorer: HVAEScorer) -> None:
    scores = scorer.predict(np.zeros((0, 784)))
    assert list(scores.columns) == COLUMNS and len(scores) == 0


def test_a_row_scores_the_same_alone_or_with_others(scorer: HVAEScorer) -> None:
    """A row's scores are a function of the row: alone, at row 137 of a 250-row request
    (a later batch, other batch-mates), and on a second call, bit for bit."""
    frame = _frame(250)
    many = scorer.predict(frame, {"iw_samples": 10})
    alone = scorer.predict(frame.iloc[[137]], {"iw_samples": 10})
    np.testing.assert_array_equal(alone.to_numpy(), many.iloc[[137]].to_numpy())
    pd.testing.assert_frame_equal(scorer.predict(frame, {"iw_samples": 10}), many)
    # Two rows with the same binarized pixels (grey levels either side of 127.5) are one row.
    twin = frame.iloc[[137]].to_numpy().copy()
    twin[twin > 127.5] = 255
    twin[twin <= 127.5] = 0
    np.testing.assert_array_equal(scorer.predict(twin, {"iw_samples": 10}).to_numpy(), alone)


def test_batches_equal_pieces(scorer: HVAEScorer) -> None:
    """250 rows (13 batches, the last one padded) score as the same rows sent in pieces."""
    assert pyfunc.BATCH_ROWS < 250 and 250 % pyfunc.BATCH_ROWS
    frame = _frame(250, seed=2)
    whole = scorer.predict(frame, {"iw_samples": 5})
    pieces = [frame.iloc[a:b] for a, b in [(0, 7), (7, 130), (130, 250)]]
    joined = pd.concat([scorer.predict(p, {"iw_samples": 5}) for p in pieces], ignore_index=True)
    pd.testing.assert_frame_equal(whole, joined)


def test_concurrent_calls_equal_sequential_ones(scorer: HVAEScorer) -> None:
    requests = [(_frame(n, seed=n), {"iw_samples": k}) for n, k in [(3, 10), (45, 4), (21, 10)]]
    requests *= 3
    sequential = [scorer.predict(frame, params) for frame, params in requests]
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(lambda r: scorer.predict(*r), requests))
    for a, b in zip(sequential, concurrent, strict=True):
        pd.testing.assert_frame_equal(a, b)


def test_fewer_samples_are_a_prefix(scorer: HVAEScorer) -> None:
    """Draw j of a row does not depend on k: the ELBO draw is the same for every k."""
    frame = _frame(3)
    a, b = (scorer.predict(frame, {"iw_samples": k}) for k in (1, 30))
    pd.testing.assert_frame_equal(a[["elbo"]], b[["elbo"]])


def test_explicit_noise_replaces_the_sampler(scorer: HVAEScorer) -> None:
    """eps = 0 draws the posterior means; chunks read their own slice of the noise."""
    model = scorer.model
    x = tf.constant((_frame(4).to_numpy() > 127.5).astype("float32"))
    zeros = [tf.zeros((4, d)) for d in model.latent_dims]
    mean_logits, _ = model.decode(model.encode(x), use_mean=True)
    zero_logits, _ = model.decode(model.encode(x), eps=zeros)
    np.testing.assert_array_equal(zero_logits.numpy(), mean_logits.numpy())
    state = model.noise.state.numpy()
    rng = np.random.default_rng(0)
    eps = [tf.constant(rng.standard_normal((10, 4, d)), tf.float32) for d in model.latent_dims]
    chunked = model.iw_log_likelihood(x, 10, chunk=3, eps=eps).numpy()
    whole = model.iw_log_likelihood(x, 10, chunk=10, eps=eps).numpy()
    np.testing.assert_allclose(chunked, whole, rtol=1e-5)
    np.testing.assert_array_equal(model.noise.state.numpy(), state)  # the sampler is untouched


def test_wrong_number_of_columns(scorer: HVAEScorer) -> None:
    with pytest.raises(ValueError, match="expected 784 pixel columns"):
        scorer.predict(np.zeros((2, 100)))


def test_ragged_or_non_numeric_rows(scorer: HVAEScorer) -> None:
    with pytest.raises(ValueError, match=r"^pixels: expected rows of 784 numbers, got ragged"):
        scorer.predict([[0] * 784, [0] * 3])
    with pytest.raises(ValueError, match=r"^pixels: expected numbers \(grey levels 0-255\)$"):
        scorer.predict(pd.DataFrame([["dark"] * 784]))


def test_non_finite_pixels(scorer: HVAEScorer) -> None:
    frame = _frame(3)
    frame.iloc[2, 10] = np.nan
    with pytest.raises(ValueError, match="row 2 has NaN or inf"):
        scorer.predict(frame)


@pytest.mark.parametrize("bad", [-1.0, 255.5, 1e6])
def test_pixels_outside_0_255(scorer: HVAEScorer, bad: float) -> None:
    frame = _frame(2)
    frame.iloc[1, 5] = bad
    with pytest.raises(ValueError, match=r"grey levels in \[0, 255\]"):
        scorer.predict(frame)


def test_versions_saved_before_the_skip_state_still_load(tmp_path: Path) -> None:
    """hvae-mnist versions 1-8 hold weights without `skipped_last`; the model and the scorer
    load them with every other weight intact."""
    import h5py

    keras.utils.set_random_seed(0)
    model = build_model({"latent_dims": [4, 3], "hidden_dim": 16})
    model.initial_state.assign(np.arange(16, dtype="float32"))
    model.save_weights(tmp_path / artifacts.WEIGHTS)
    artifacts.save_config(model, tmp_path)
    with h5py.File(tmp_path / artifacts.WEIGHTS, "r+") as f:
        del f["vars/1"]  # the layout before the model had its skip state
    for loaded in (artifacts.load_model(tmp_path), _load_pyfunc(str(tmp_path)).model):
        for a, b in zip(model.weights, loaded.weights, strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    with h5py.File(tmp_path / artifacts.WEIGHTS, "r+") as f:
        del f["vars/0"]  # no initial_state either: not a file this model ever wrote
    with pytest.raises(DataError, match="cannot load weights"):
        artifacts.load_model(tmp_path)
