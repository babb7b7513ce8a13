"""The densities, the KL and the importance-weighted bound, alone and inside a tiny model."""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf

from hvae.model import HierarchicalVAE, build_model
from hvae.model.distributions import (
    bernoulli_log_prob,
    free_bits_kl,
    gaussian_kl,
    gaussian_kl_per_unit,
    gaussian_log_prob,
    importance_weighted_bound,
)
from hvae.model.hvae import LayerStats

TINY = {"latent_dims": [4, 3], "hidden_dim": 16, "blocks_per_layer": 1}


def _scalar(t: tf.Tensor) -> float:
    """The one value of a (1,)-shaped per-example result."""
    (value,) = t.numpy()
    return float(value)


def _np_gaussian_log_prob(z, mu, sigma) -> np.ndarray:
    return np.sum(-0.5 * np.log(2 * np.pi * sigma**2) - (z - mu) ** 2 / (2 * sigma**2), axis=-1)


# -- closed forms -------------------------------------------------------------------------------


def test_gaussian_log_prob_matches_closed_form() -> None:
    rng = np.random.default_rng(0)
    z, mu = rng.normal(size=(2, 5, 3))
    sigma = rng.uniform(0.1, 3.0, size=(5, 3))
    got = gaussian_log_prob(tf.constant(z), tf.constant(mu), tf.constant(sigma)).numpy()
    assert got.shape == (5,)
    np.testing.assert_allclose(got, _np_gaussian_log_prob(z, mu, sigma), rtol=1e-12)


def test_gaussian_log_prob_single_value() -> None:
    # N(1; 0, 2^2) in one dimension.
    got = _scalar(
        gaussian_log_prob(tf.constant([[1.0]]), tf.constant([[0.0]]), tf.constant([[2.0]]))
    )
    assert got == pytest.approx(-0.5 * math.log(2 * math.pi) - math.log(2.0) - 0.125, rel=1e-6)


def test_free_bits_clamp_each_unit_batch_mean_from_below() -> None:
    # Unit 0 averages 0.1 nats over the batch, unit 1 averages 2.0: with 0.5 free bits the
    # first counts as 0.5, the second as itself.
    kl = tf.constant([[0.0, 1.0], [0.2, 3.0]])
    assert free_bits_kl(kl, 0.5).numpy() == pytest.approx(2.5)
    assert free_bits_kl(kl, 0.0).numpy() == pytest.approx(0.1 + 2.0)


def test_free_bits_stop_the_gradient_of_units_below_the_floor() -> None:
    kl = tf.Variable([[0.0, 1.0], [0.2, 3.0]])
    with tf.GradientTape() as tape:
        loss = free_bits_kl(kl, 0.5)
    grad = tape.gradient(loss, kl).numpy()
    np.testing.assert_allclose(grad[:, 0], 0.0)
    np.testing.assert_allclose(grad[:, 1], 0.5)  # d mean / d element


def test_kl_per_unit_sums_to_the_layer_kl() -> None:
    rng = np.random.default_rng(1)
    mu_q, mu_p = (tf.constant(rng.normal(size=(4, 6))) for _ in range(2))
    s_q, s_p = (tf.constant(rng.uniform(0.1, 3.0, size=(4, 6))) for _ in range(2))
    units = gaussian_kl_per_unit(mu_q, s_q, mu_p, s_p).numpy()
    assert units.shape == (4, 6)
    np.testing.assert_allclose(units.sum(-1), gaussian_kl(mu_q, s_q, mu_p, s_p).numpy(), rtol=1e-12)


def test_kl_of_identical_distributions_is_zero() -> None:
    rng = np.random.default_rng(2)
    mu = tf.constant(rng.normal(size=(7, 5)))
    sigma = tf.constant(rng.uniform(0.01, 5.0, size=(7, 5)))
    kl = gaussian_kl(mu, sigma, mu, sigma).numpy()
    assert kl.shape == (7,)
    np.testing.assert_allclose(kl, 0.0, atol=1e-12)


def test_kl_known_value_and_asymmetry() -> None:
    # KL(N(0,1) || N(1,2^2)) = log 2 + (1 + 1) / 8 - 1/2 per dimension.
    one = tf.constant([[0.0, 0.0]], tf.float64)
    q = (one, one + 1.0)
    p = (one + 1.0, one + 2.0)
    expected = 2 * (math.log(2.0) + 2.0 / 8.0 - 0.5)
    assert _scalar(gaussian_kl(*q, *p)) == pytest.approx(expected, rel=1e-12)
    assert _scalar(gaussian_kl(*p, *q)) != pytest.approx(expected, rel=1e-3)


def test_kl_matches_monte_carlo() -> None:
    rng = np.random.default_rng(3)
    mu_q, mu_p = np.array([0.3, -1.0, 2.0]), np.array([0.0, 0.5, 1.0])
    sigma_q, sigma_p = np.array([0.5, 1.5, 1.0]), np.array([1.0, 1.0, 2.5])
    z = mu_q + sigma_q * rng.standard_normal((200_000, 3))
    samples = _np_gaussian_log_prob(z, mu_q, sigma_q) - _np_gaussian_log_prob(z, mu_p, sigma_p)
    estimate = samples.mean()
    stderr = samples.std() / math.sqrt(len(samples))
    analytic = _scalar(gaussian_kl(*(tf.constant(a[None]) for a in (mu_q, sigma_q, mu_p, sigma_p))))
    assert analytic > 0
    assert abs(estimate - analytic) < 5 * stderr, (estimate, analytic, stderr)
    assert stderr < 0.01  # the tolerance is tight enough to catch a wrong term


def test_bernoulli_log_prob_matches_direct_formula() -> None:
    rng = np.random.default_rng(4)
    logits = rng.normal(scale=4.0, size=(3, 20))
    x = (rng.random((3, 20)) < 0.5).astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-logits))
    expected = np.sum(x * np.log(p) + (1 - x) * np.log(1 - p), axis=-1)
    got = bernoulli_log_prob(tf.constant(x), tf.constant(logits)).numpy()
    assert got.shape == (3,)
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_bernoulli_log_prob_is_stable_for_large_logits() -> None:
    logits = tf.constant([[200.0, -200.0]], tf.float32)
    right = _scalar(bernoulli_log_prob(tf.constant([[1.0, 0.0]]), logits))
    wrong = _scalar(bernoulli_log_prob(tf.constant([[0.0, 1.0]]), logits))
    assert right == pytest.approx(0.0, abs=1e-6)
    assert wrong == pytest.approx(-400.0, rel=1e-6)


@pytest.mark.parametrize("value", [-1234.5, 0.0, 700.0])
def test_iw_bound_of_identical_weights_is_that_weight(value: float) -> None:
    log_w = tf.fill([3, 50], tf.constant(value, tf.float64))
    by_row = importance_weighted_bound(log_w).numpy()
    by_column = importance_weighted_bound(log_w, axis=0).numpy()
    np.testing.assert_allclose(by_row, [value] * 3, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(by_column, [value] * 50, rtol=1e-12, atol=1e-12)


def test_iw_bound_is_log_mean_exp() -> None:
    log_w = tf.constant([[math.log(1.0), math.log(3.0)], [-1000.0, -1000.0 + math.log(5.0)]])
    got = importance_weighted_bound(log_w).numpy()
    np.testing.assert_allclose(got, [math.log(2.0), -1000.0 + math.log(3.0)], rtol=1e-6)


# -- the bound inside a tiny model --------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> SimpleNamespace:
    keras.utils.set_random_seed(0)
    model = build_model(TINY)
    x = (np.random.default_rng(0).random((6, 784)) < 0.3).astype("float32")
    return SimpleNamespace(model=model, x=tf.constant(x), state=model.noise.state.numpy())


def _reset_noise(tiny: SimpleNamespace) -> None:
    tiny.model.noise.state.assign(tiny.state)


def _replicated(tiny: SimpleNamespace, fn, repeats: int) -> np.ndarray:
    """(repeats, batch) independent draws of a per-image estimate."""
    batch = tiny.x.shape[0]
    values = fn(tf.tile(tiny.x, [repeats, 1]))
    return tf.reshape(values, [repeats, batch]).numpy()


def _elbo_draws(tiny: SimpleNamespace, repeats: int) -> np.ndarray:
    def elbo(x):
        recon, kls = tiny.model.elbo_terms(x)
        return -(recon + tf.add_n(kls))

    return _replicated(tiny, elbo, repeats)


def _iw_draws(tiny: SimpleNamespace, k: int, chunk: int, repeats: int) -> np.ndarray:
    return _replicated(tiny, lambda x: tiny.model.iw_log_likelihood(x, k, chunk), repeats)


def _mean_and_stderr(draws: np.ndarray) -> tuple[float, float]:
    """Mean over images of the per-image mean, and its standard error."""
    per_image_var = draws.var(axis=0, ddof=1) / len(draws)
    return float(draws.mean()), float(np.sqrt(per_image_var.sum()) / draws.shape[1])


def test_iw_with_one_sample_averages_to_the_elbo(tiny: SimpleNamespace) -> None:
    _reset_noise(tiny)
    elbo, elbo_se = _mean_and_stderr(_elbo_draws(tiny, 400))
    iw, iw_se = _mean_and_stderr(_iw_draws(tiny, k=1, chunk=1, repeats=400))
    assert np.isfinite([elbo, iw]).all()
    assert abs(iw - elbo) < 4 * math.hypot(elbo_se, iw_se), (iw, elbo, elbo_se, iw_se)


def test_iw_bound_grows_with_k(tiny: SimpleNamespace) -> None:
    _reset_noise(tiny)
    elbo, elbo_se = _mean_and_stderr(_elbo_draws(tiny, 300))
    bounds = {
        k: _mean_and_stderr(_iw_draws(tiny, k=k, chunk=min(k, 50), repeats=repeats))
        for k, repeats in [(1, 300), (10, 100), (100, 20)]
    }
    (l1, se1), (l10, se10), (l100, se100) = bounds[1], bounds[10], bounds[100]
    # L_1 = ELBO < L_10 <= L_100 (strict where the gap is many standard errors wide).
    assert l10 > elbo + 4 * math.hypot(elbo_se, se10), bounds
    assert l10 > l1 + 4 * math.hypot(se1, se10), bounds
    assert l100 > l10 - 3 * math.hypot(se10, se100), bounds
    # More samples, less spread.
    assert se100 < se10 < se1


def test_iw_single_chunk_equals_bound_over_log_weights(tiny: SimpleNamespace) -> None:
    model, x, k = tiny.model, tiny.x, 16
    _reset_noise(tiny)
    got = model.iw_log_likelihood(x, k, chunk=k).numpy()
    _reset_noise(tiny)  # same noise state: the same posterior samples are drawn again
    features = model.encode(x)
    tiled = [tf.tile(f, [k, 1]) for f in features]
    log_w = tf.reshape(model.log_weights(tf.tile(x, [k, 1]), tiled), [k, x.shape[0]])
    expected = importance_weighted_bound(log_w, axis=0).numpy()
    assert got.shape == (6,)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # And the bound sits above the mean log-weight (Jensen), image by image.
    assert (got >= log_w.numpy().mean(axis=0) - 1e-4).all()


def test_chunked_and_single_chunk_agree_in_expectation(tiny: SimpleNamespace) -> None:
    _reset_noise(tiny)
    whole, whole_se = _mean_and_stderr(_iw_draws(tiny, k=12, chunk=12, repeats=60))
    parts, parts_se = _mean_and_stderr(_iw_draws(tiny, k=12, chunk=5, repeats=60))
    assert np.isfinite([whole, parts]).all()
    assert abs(whole - parts) < 4 * math.hypot(whole_se, parts_se), (whole, parts)


def _fake_model(all_log_w: tf.Tensor, sizes: list[int]) -> SimpleNamespace:
    """A stand-in whose chunks hand out `all_log_w`'s rows in order, noting each chunk's size."""

    def chunk_log_weights(x, parts, n, prior_layers, eps):
        start = sum(sizes)
        sizes.append(n)
        return all_log_w[start : start + n]

    fake = SimpleNamespace(_image_parts=lambda x: [x], _chunk_log_weights=chunk_log_weights)
    fake.iw_log_likelihoods = functools.partial(HierarchicalVAE.iw_log_likelihoods, fake)
    fake.iw_log_likelihood = functools.partial(HierarchicalVAE.iw_log_likelihood, fake)
    return fake


@pytest.mark.parametrize("chunk", [1, 3, 4, 10, 25])
def test_chunks_fold_into_the_exact_log_mean_exp(chunk: int) -> None:
    """The running log-sum-exp over chunks equals the bound over all k weights at once."""
    k, batch = 10, 4
    rng = np.random.default_rng(5)
    # A wide dynamic range: a naive sum of exp() would overflow or lose the small terms.
    all_log_w = tf.constant(rng.normal(scale=300.0, size=(k, batch)), tf.float32)
    sizes: list[int] = []
    fake = _fake_model(all_log_w, sizes)
    got = HierarchicalVAE.iw_log_likelihood(fake, tf.zeros((batch, 2)), k, chunk).numpy()
    expected = importance_weighted_bound(all_log_w, axis=0).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert sum(sizes) == k
    assert all(n == chunk for n in sizes[:-1]) and 0 < sizes[-1] <= chunk


@pytest.mark.parametrize(("ks", "chunk"), [((10, 3), 4), ((3, 10), 25), ((1, 7, 10), 3), ((4,), 4)])
def test_each_k_reads_the_first_k_weights_of_one_stream(ks: tuple[int, ...], chunk: int) -> None:
    """iw_log_likelihoods: the estimate at k is the bound over the first k log-weights, and
    the stream is max(ks)'s alone: the same chunks whatever the smaller ks."""
    batch = 3
    all_log_w = tf.constant(np.random.default_rng(6).normal(size=(max(ks), batch)), tf.float32)
    sizes: list[int] = []
    got = _fake_model(all_log_w, sizes).iw_log_likelihoods(tf.zeros((batch, 2)), ks, chunk)
    assert len(got) == len(ks)
    for k, value in zip(ks, got, strict=True):
        expected = importance_weighted_bound(all_log_w[:k], axis=0).numpy()
        np.testing.assert_allclose(value.numpy(), expected, rtol=1e-6)
    alone: list[int] = []
    _fake_model(all_log_w, alone).iw_log_likelihood(tf.zeros((batch, 2)), max(ks), chunk)
    assert sizes == alone and sum(sizes) == max(ks) and max(sizes) <= chunk


@pytest.mark.parametrize("prior_layers", [0, 1, 2])
def test_posterior_parts_stand_in_for_the_features(
    tiny: SimpleNamespace, prior_layers: int
) -> None:
    """The per-image parts of the posteriors' hidden layers give the same log-weights as the
    features they were computed from, at the same noise."""
    model, x = tiny.model, tiny.x
    rng = np.random.default_rng(7)
    eps = [tf.constant(rng.normal(size=(len(x), d)), tf.float32) for d in model.latent_dims]
    features = model.encode(x)
    plain = model.log_weights(x, features, prior_layers, eps=eps).numpy()
    parts = model.log_weights(
        x, prior_layers=prior_layers, eps=eps, parts=model.posterior_parts(features)
    ).numpy()
    np.testing.assert_allclose(parts, plain, rtol=1e-5, atol=1e-4)
    assert len(model.posterior_parts(features)) == model.n_layers


# -- L>k: the bound behind the OOD score LLR>k (Havtorn et al. 2021) --------------------------


def test_bound_above_k_drops_the_prior_drawn_layers() -> None:
    """log w of L>k = log p(x|z) + sum over l >= k of [log p(z_l|z_>l) - log q(z_l|x,z_>l)]:
    the k lowest layers came from their prior, so their p/q ratio is not in the weight."""
    rng = np.random.default_rng(3)

    def t(*shape):
        return tf.constant(rng.normal(size=shape), tf.float32)

    x = tf.constant((rng.random((4, 6)) < 0.5).astype("float32"))
    logits = t(4, 6)
    # Layer 0 was drawn from the prior: no posterior; layers 1 and 2 from q.
    stats = [LayerStats(t(4, 3), None, None, t(4, 3), tf.exp(t(4, 3)))]
    stats += [LayerStats(t(4, 2), t(4, 2), tf.exp(t(4, 2)), t(4, 2), tf.exp(t(4, 2)))] * 2
    calls = []

    def decode(features, prior_layers, eps=None, parts=None):
        assert eps is None and parts is None  # the model's own sampler, the features given
        calls.append(prior_layers)
        return logits, stats

    got = HierarchicalVAE.log_weights(SimpleNamespace(decode=decode), x, [x], prior_layers=1)
    expected = bernoulli_log_prob(x, logits)
    for s in stats[1:]:
        expected += gaussian_log_prob(s.z, s.p_mu, s.p_sigma)
        expected -= gaussian_log_prob(s.z, s.q_mu, s.q_sigma)
    assert calls == [1]
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-6)


@pytest.fixture(scope="module")
def small() -> SimpleNamespace:
    """Few pixels and one-unit layers: even prior sampling estimates log p(x) closely."""
    keras.utils.set_random_seed(2)
    model = build_model({"latent_dims": [1, 1], "hidden_dim": 16, "pixels": 8})
    x = (np.random.default_rng(2).random((5, 8)) < 0.5).astype("float32")
    return SimpleNamespace(model=model, x=tf.constant(x))


def test_every_bound_above_k_converges_to_the_same_log_likelihood(small) -> None:
    # With many samples, L (k=0), L>1 and L>2 (all layers from the prior) are all consistent
    # estimators of one log p(x); they differ only in their proposal.
    estimates = [
        small.model.iw_log_likelihood(small.x, 40_000, 10_000, prior_layers=k).numpy()
        for k in (0, 1, 2)
    ]
    np.testing.assert_allclose(estimates[1], estimates[0], atol=0.02)
    np.testing.assert_allclose(estimates[2], estimates[0], atol=0.02)


def test_single_sample_bound_above_k_is_below_log_likelihood(small) -> None:
    log_px = small.model.iw_log_likelihood(small.x, 40_000, 10_000).numpy()
    repeats = 2000
    one = (
        small.model.iw_log_likelihood(tf.tile(small.x, [repeats, 1]), 1, 1, prior_layers=1)
        .numpy()
        .reshape(repeats, -1)
    )
    mean, stderr = one.mean(axis=0), one.std(axis=0) / np.sqrt(repeats)
    # Jensen: E[log w] <= log E[w] = log p(x), image by image (a gap or within noise).
    assert (mean <= log_px + 4 * stderr).all(), (mean, log_px, stderr)
    assert (mean < log_px).sum() >= 4
