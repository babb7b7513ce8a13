"""Per-layer probes, traversals, the kept-upper-layers figure and the LLR>k scores."""

from __future__ import annotations

from types import SimpleNamespace

import keras
import numpy as np
import pytest

from hvae.evaluation import anomaly, representations
from hvae.model import build_model


@pytest.fixture(scope="module")
def tiny() -> SimpleNamespace:
    keras.utils.set_random_seed(4)
    model = build_model({"latent_dims": [6, 4, 2], "hidden_dim": 16})
    rng = np.random.default_rng(4)
    images = (rng.random((40, 28, 28)) < 0.3).astype(np.uint8)
    return SimpleNamespace(model=model, images=images)


def test_posterior_means_per_layer_in_batches(tiny) -> None:
    means = representations.posterior_means(tiny.model, tiny.images, batch_size=16)
    assert [m.shape for m in means] == [(40, 6), (40, 4), (40, 2)]
    whole = representations.posterior_means(tiny.model, tiny.images, batch_size=40)
    for a, b in zip(means, whole, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_classifier_features_of_each_kind_in_batches(tiny) -> None:
    flat = tiny.images.reshape(40, -1).astype(np.float32)
    counted: list[int] = []
    encoder = representations.image_features(tiny.model, tiny.images, "encoder", 16, counted.append)
    assert counted == [16, 16, 8]
    np.testing.assert_allclose(encoder, tiny.model.encode(flat)[-1].numpy(), atol=1e-5)
    assert encoder.shape == (40, 16)  # hidden_dim
    means = representations.image_features(tiny.model, tiny.images, "posterior_means", 16)
    by_layer = representations.posterior_means(tiny.model, tiny.images, batch_size=40)
    np.testing.assert_allclose(means, np.concatenate(by_layer, axis=1), atol=1e-5)
    with pytest.raises(ValueError, match="features 'pixels': expected one of encoder, "):
        representations.image_features(tiny.model, tiny.images, "pixels", 16)


def _class_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Class c lights up row block c: linearly separable in pixel space."""
    images = (rng.random((len(labels), 28, 28)) < 0.05).astype(np.uint8)
    for i, c in enumerate(labels):
        images[i, 2 * c : 2 * c + 2, :] = 1
    return images


def test_probe_accuracies_per_layer_and_budget(tiny) -> None:
    rng = np.random.default_rng(5)
    train_y = np.repeat(np.arange(10), 30)
    test_y = np.repeat(np.arange(10), 10)
    train = (_class_images(train_y, rng), train_y)
    test = (_class_images(test_y, rng), test_y)
    got = representations.probe_accuracies(
        tiny.model, train, test, budgets=[20, 100], repeats=2, seed=0, batch_size=64
    )
    for n in (20, 100):
        for f in ("z1", "z2", "z3", "all", "pixels"):
            assert 0.0 <= got[f"probe_{f}_n{n}"] <= 1.0
            assert got[f"probe_{f}_n{n}_std"] >= 0.0
        # The pixel baseline separates these classes perfectly.
        assert got[f"probe_pixels_n{n}"] == 1.0
    assert len(got) == 2 * 5 * 2


def test_traversal_moves_one_unit(tiny) -> None:
    means = representations.posterior_means(tiny.model, tiny.images[:1], batch_size=1)
    base = [m[0] for m in means]
    spread = [np.ones_like(b) for b in base]
    grid = representations.traversal(tiny.model, base, spread, layer=1, units=[0, 3], steps=5)
    assert grid.shape == (2, 5, 784)
    assert grid.min() >= 0.0 and grid.max() <= 1.0
    # The middle step has offset 0: both rows show the base image, identically.
    np.testing.assert_allclose(grid[0, 2], grid[1, 2], atol=1e-6)
    assert not np.allclose(grid[0, 0], grid[0, 4], atol=1e-4)


def test_keeping_upper_layers_redraws_only_the_lower_ones(tiny) -> None:
    means = representations.posterior_means(tiny.model, tiny.images[:3], batch_size=3)
    everything_kept = representations.keep_upper_layers(tiny.model, means, layer=0, draws=4)
    assert everything_kept.shape == (3, 4, 784)
    # z1..zL all fixed: every draw is the same picture.
    np.testing.assert_allclose(everything_kept[:, 0], everything_kept[:, 3], atol=1e-6)
    lower_redrawn = representations.keep_upper_layers(tiny.model, means, layer=2, draws=4)
    assert not np.allclose(lower_redrawn[:, 0], lower_redrawn[:, 3], atol=1e-4)


def test_bound_matrix_holds_every_bound_the_hierarchy_allows(tiny) -> None:
    matrix = anomaly.bound_matrix(tiny.model, tiny.images, samples=3, batch_size=16, chunk=2)
    assert matrix.shape == (40, 3) and np.isfinite(matrix).all()
    # Each column is a different bound (L, L>1, L>2), not one estimate repeated.
    assert not np.allclose(matrix[:, 0], matrix[:, 1]) and not np.allclose(
        matrix[:, 1], matrix[:, 2]
    )
    np.testing.assert_array_equal(anomaly.likelihood_score(np.array([-80.0])), [80.0])


def test_reconstruction_terms_take_the_lower_layers_at_their_prior_means(tiny) -> None:
    import tensorflow as tf

    from hvae.model.distributions import bernoulli_log_prob

    keras.utils.set_random_seed(5)
    terms = anomaly.reconstruction_matrix(tiny.model, tiny.images, draws=4, batch_size=16)
    assert terms.shape == (40, 3) and np.isfinite(terms).all()
    assert not np.allclose(terms[:, 0], terms[:, 1]) and not np.allclose(terms[:, 1], terms[:, 2])
    # R_2 of one image, by hand: z3 from q given noise, z2 and z1 the means of their priors.
    x = tf.constant(tiny.images[:1].reshape(1, -1).astype(np.float32))
    eps = [tf.random.normal((4, 1, d)) for d in (6, 4, 2)]
    features = tiny.model.encode(tf.tile(x, [4, 1]))
    s = tf.tile(tiny.model.initial_state[None], [4, 1])
    top = tiny.model.top_down
    mu, sigma = top[2].posterior(tf.concat([s, features[2]], -1))
    s = top[2].advance(s, mu + sigma * eps[2][:, 0])
    for i in (1, 0):
        s = top[i].advance(s, top[i].prior_params(s)[0])
    logits = tiny.model.to_logits(keras.activations.get(tiny.model.activation)(s))
    by_hand = tf.reduce_mean(bernoulli_log_prob(tf.tile(x, [4, 1]), logits)).numpy()
    term = anomaly.reconstruction_term(tiny.model, x, 4, 2, eps=eps).numpy()
    np.testing.assert_allclose(term, [by_hand], rtol=1e-5)
    # statistics: the bounds, then these terms.
    stats = anomaly.statistics(tiny.model, tiny.images, 2, 4, 16, 2)
    assert stats.shape == (40, 6)


def test_every_pass_reports_each_image_once_to_its_progress(tiny) -> None:
    """The stages' progress lines count images: each pass over the set adds up to its size,
    batch by batch (the last batch short)."""
    from hvae.evaluation import bounds

    seen: list[int] = []
    bounds.iw_log_likelihood(tiny.model, tiny.images, 3, 16, 3, advance=seen.append)
    assert seen == [16, 16, 8]
    seen.clear()
    bounds.elbo_and_kl(tiny.model, tiny.images, 16, advance=seen.append)
    assert sum(seen) == 40
    seen.clear()
    anomaly.bound_matrix(tiny.model, tiny.images, 2, 40, 2, advance=seen.append)
    assert seen == [40, 40, 40]  # L = 3 bounds: L(x), L>1 and L>2
    seen.clear()
    anomaly.statistics(tiny.model, tiny.images, 2, 2, 40, 2, advance=seen.append)
    assert seen == [40] * 6  # and R_0, R_1, R_2
    seen.clear()
    representations.posterior_means(tiny.model, tiny.images, 32, advance=seen.append)
    assert seen == [32, 8]
