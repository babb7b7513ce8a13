"""HierarchicalVAE on a tiny configuration: shapes, the top-down pass, and a few train steps."""

from __future__ import annotations

from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf

from hvae.model import HierarchicalVAE, build_model

TINY = {"latent_dims": [4, 3], "hidden_dim": 16, "blocks_per_layer": 1}
BATCH = 5


@pytest.fixture(scope="module")
def tiny() -> SimpleNamespace:
    keras.utils.set_random_seed(1)
    model = build_model(TINY)
    x = (np.random.default_rng(1).random((BATCH, 784)) < 0.3).astype("float32")
    return SimpleNamespace(model=model, x=tf.constant(x))


def test_build_creates_every_weight(tiny: SimpleNamespace) -> None:
    model = tiny.model
    assert isinstance(model, HierarchicalVAE)
    assert model.built and model.n_layers == 2
    assert model.kl_names == ["kl_z1", "kl_z2"]
    assert model.count_params() > 0
    assert model(tiny.x).shape == (BATCH, 784)
    # The same config builds a model with identically shaped weights.
    twin = build_model(model.get_config())
    assert [w.shape for w in twin.weights] == [w.shape for w in model.weights]


def test_activation_is_part_of_the_config() -> None:
    keras.utils.set_random_seed(2)
    relu = build_model({**TINY, "activation": "relu"})
    assert relu.get_config()["activation"] == "relu"
    assert relu.stem.activation is keras.activations.relu
    assert build_model(relu.get_config()).stem.activation is keras.activations.relu
    # model.json files written before the knob existed have no key: those models used swish.
    assert build_model(TINY).stem.activation is keras.activations.swish
    x = tf.constant((np.random.default_rng(2).random((BATCH, 784)) < 0.3).astype("float32"))
    swish = build_model(TINY)
    swish.set_weights(relu.get_weights())
    assert not np.allclose(relu.reconstruct(x).numpy(), swish.reconstruct(x).numpy())


def test_output_bias_starts_at_the_given_logits() -> None:
    bias = np.linspace(-3.0, 3.0, 784).astype("float32")
    model = build_model(TINY, output_bias=bias)
    np.testing.assert_allclose(model.to_logits.bias.numpy(), bias)


def test_elbo_terms(tiny: SimpleNamespace) -> None:
    recon, kls = tiny.model.elbo_terms(tiny.x)
    assert recon.shape == (BATCH,)
    assert len(kls) == 2
    for kl in kls:
        assert kl.shape == (BATCH,)
        assert np.isfinite(kl.numpy()).all()
        assert (kl.numpy() >= -1e-5).all()
    assert np.isfinite(recon.numpy()).all()
    # -log p(x|z) of 784 Bernoulli pixels is positive (and far from 0 for an untrained model).
    assert (recon.numpy() > 0).all()


def test_decode_with_all_layers_from_the_prior(tiny: SimpleNamespace) -> None:
    model = tiny.model
    features = model.encode(tiny.x)
    logits, stats = model.decode(features, prior_layers=model.n_layers)
    assert logits.shape == (BATCH, 784)
    assert len(stats) == 2
    for layer, s in zip(model.latent_dims, stats, strict=True):
        assert s.q_mu is None and s.q_sigma is None
        assert s.z.shape == (BATCH, layer)
        assert s.p_mu.shape == s.p_sigma.shape == (BATCH, layer)
    # The top prior is the fixed N(0, I).
    np.testing.assert_array_equal(stats[-1].p_mu.numpy(), 0.0)
    np.testing.assert_array_equal(stats[-1].p_sigma.numpy(), 1.0)


def test_decode_prior_layers_splits_the_hierarchy(tiny: SimpleNamespace) -> None:
    model = tiny.model
    _, stats = model.decode(model.encode(tiny.x), prior_layers=1)
    assert stats[0].q_mu is None  # z_1 from p(z_1 | z_2)
    assert stats[1].q_mu is not None and stats[1].q_mu.shape == (BATCH, 3)
    _, stats = model.decode(model.encode(tiny.x))
    assert all(s.q_mu is not None for s in stats)
    assert all((s.q_sigma.numpy() >= model.min_sigma).all() for s in stats)


def test_fixed_top_layer_is_kept_exactly(tiny: SimpleNamespace) -> None:
    model = tiny.model
    top = model.n_layers - 1
    z_top = tf.constant(np.random.default_rng(2).normal(size=(BATCH, 3)).astype("float32"))
    for features in (None, model.encode(tiny.x)):
        _, stats = model.decode(features, batch_size=BATCH, fixed={top: z_top})
        np.testing.assert_array_equal(stats[top].z.numpy(), z_top.numpy())
        assert not np.array_equal(stats[0].z.numpy(), stats[0].p_mu.numpy())  # still sampled
    # With the top fixed and means below it, the pass is deterministic.
    first, _ = model.decode(batch_size=BATCH, fixed={top: z_top}, use_mean=True)
    second, _ = model.decode(batch_size=BATCH, fixed={top: z_top}, use_mean=True)
    np.testing.assert_array_equal(first.numpy(), second.numpy())


def test_use_mean_takes_the_means(tiny: SimpleNamespace) -> None:
    _, stats = tiny.model.decode(tiny.model.encode(tiny.x), use_mean=True)
    for s in stats:
        np.testing.assert_array_equal(s.z.numpy(), s.q_mu.numpy())


def test_generate(tiny: SimpleNamespace) -> None:
    probs = tiny.model.generate(7).numpy()
    assert probs.shape == (7, 784)
    assert ((probs >= 0.0) & (probs <= 1.0)).all()
    assert not np.array_equal(probs[0], probs[1])  # distinct prior draws
    cold = tiny.model.generate(3, temperature=0.0, fixed={1: tf.zeros((3, 3))}).numpy()
    np.testing.assert_allclose(cold[0], cold[1], rtol=1e-6)


def test_posterior_means(tiny: SimpleNamespace) -> None:
    means = tiny.model.posterior_means(tiny.x)
    assert [m.shape for m in means] == [(BATCH, 4), (BATCH, 3)]
    again = tiny.model.posterior_means(tiny.x)
    for a, b in zip(means, again, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_reconstruct_is_deterministic_probabilities(tiny: SimpleNamespace) -> None:
    first = tiny.model.reconstruct(tiny.x).numpy()
    assert first.shape == (BATCH, 784)
    assert ((first >= 0.0) & (first <= 1.0)).all()
    np.testing.assert_array_equal(first, tiny.model.reconstruct(tiny.x).numpy())


# -- training -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained() -> SimpleNamespace:
    """Two epochs of one 8-image batch each, with a 10-step KL warm-up."""
    keras.utils.set_random_seed(2)
    model = build_model({**TINY, "kl_warmup_steps": 10})
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    before = [w.numpy().copy() for w in model.trainable_weights]
    images = np.random.default_rng(2).random((8, 784)).astype("float32")
    history = model.fit(images, batch_size=8, epochs=2, shuffle=False, verbose=0)
    return SimpleNamespace(model=model, before=before, history=history.history)


def test_fit_reports_every_metric(trained: SimpleNamespace) -> None:
    expected = {"loss", "elbo", "recon", "kl", "kl_z1", "kl_z2", "beta", "grad_norm", "skip_rate"}
    assert set(trained.history) == expected
    for name, values in trained.history.items():
        assert len(values) == 2, name
        assert np.isfinite(values).all(), name


def test_fit_metrics_are_consistent(trained: SimpleNamespace) -> None:
    h = {name: np.array(values) for name, values in trained.history.items()}
    np.testing.assert_allclose(h["kl"], h["kl_z1"] + h["kl_z2"], rtol=1e-5)
    np.testing.assert_allclose(h["elbo"], -(h["recon"] + h["kl"]), rtol=1e-5)
    np.testing.assert_allclose(h["loss"], h["recon"] + h["beta"] * h["kl"], rtol=1e-5)
    assert (h["kl_z1"] >= 0).all() and (h["kl_z2"] >= 0).all()


def test_beta_warms_up_linearly(trained: SimpleNamespace) -> None:
    # Step 1 trains with beta = 1/10, step 2 with 2/10 (one step per epoch here).
    np.testing.assert_allclose(trained.history["beta"], [0.1, 0.2], rtol=1e-6)
    assert int(trained.model.optimizer.iterations) == 2
    np.testing.assert_allclose(float(trained.model.beta()), 0.3, rtol=1e-6)


def test_fit_updates_the_weights(trained: SimpleNamespace) -> None:
    after = trained.model.trainable_weights
    changed = [not np.array_equal(b, a.numpy()) for b, a in zip(trained.before, after, strict=True)]
    assert sum(changed) > 0.9 * len(changed)


def test_no_update_is_skipped_in_a_healthy_run(trained: SimpleNamespace) -> None:
    assert trained.history["skip_rate"] == [0.0, 0.0]
    assert all(n > 0 for n in trained.history["grad_norm"])


def _fit_once(images: np.ndarray, **config) -> tuple[HierarchicalVAE, list, dict]:
    keras.utils.set_random_seed(3)
    model = build_model({**TINY, **config})
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(images, batch_size=len(images), epochs=1, verbose=0).history
    return model, before, history


def _unchanged(model: HierarchicalVAE, before: list) -> bool:
    return all(
        np.array_equal(b, a.numpy()) for b, a in zip(before, model.trainable_weights, strict=True)
    )


def test_a_huge_gradient_skips_the_update_and_is_counted() -> None:
    images = np.random.default_rng(4).random((8, 784)).astype("float32")
    model, before, history = _fit_once(images, skip_grad_norm=1e-6)
    assert history["skip_rate"] == [1.0]
    assert _unchanged(model, before)
    assert int(model.optimizer.iterations) == 0


def test_a_second_huge_gradient_in_a_row_is_applied_clipped() -> None:
    """Skipping never stalls training: after a skip the model is unchanged, so a threshold
    every batch exceeds would otherwise skip every later update too."""
    images = np.random.default_rng(4).random((8, 784)).astype("float32")
    keras.utils.set_random_seed(3)
    model = build_model({**TINY, "skip_grad_norm": 1e-6, "grad_clip_norm": 1e-7})
    model.compile(optimizer=keras.optimizers.SGD(1.0))
    before = [w.numpy().copy() for w in model.trainable_weights]
    # One batch per step, four steps: skip, apply, skip, apply.
    history = model.fit(images, batch_size=8, epochs=4, verbose=0).history
    assert history["skip_rate"] == [1.0, 0.0, 1.0, 0.0]
    assert int(model.optimizer.iterations) == 2
    moved = [a.numpy() - b for b, a in zip(before, model.trainable_weights, strict=True)]
    # Two applied SGD(1.0) steps, each clipped to norm 1e-7.
    assert float(np.sqrt(sum(np.sum(d**2) for d in moved))) <= 2e-7 * (1 + 1e-3)
    assert not _unchanged(model, before)


def test_a_non_finite_gradient_skips_the_update() -> None:
    images = np.random.default_rng(5).random((8, 784)).astype("float32")
    model, _, history = _fit_once(images)
    assert history["skip_rate"] == [0.0]
    # Dynamic binarization turns even a NaN pixel into 0 or 1, so poison a weight instead.
    model.to_logits.bias.assign(np.full(784, np.nan, "float32"))
    snapshot = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(images, batch_size=8, epochs=1, verbose=0).history
    assert history["skip_rate"] == [1.0]
    assert all(
        np.array_equal(b, a.numpy(), equal_nan=True)
        for b, a in zip(snapshot, model.trainable_weights, strict=True)
    )


def test_free_bits_change_the_loss_but_not_the_reported_bound() -> None:
    images = np.random.default_rng(6).random((8, 784)).astype("float32")
    _, _, plain = _fit_once(images)
    _, _, floored = _fit_once(images, free_bits=5.0)
    # Same seed, same first batch: the bound before the update is identical...
    assert floored["elbo"] == pytest.approx(plain["elbo"], rel=1e-6)
    # ...but with 5 nats per unit the training loss is larger than recon + KL.
    assert floored["loss"][0] > floored["recon"][0] + floored["kl"][0] + 1.0


def _iw_loss_and_log_weights(iw_samples: int, beta: float, free_bits: float = 0.0):
    """The model's IW training loss, and the log-weights of the same draws from log_weights."""
    keras.utils.set_random_seed(8)
    model = build_model({**TINY, "iw_samples": iw_samples, "free_bits": free_bits})
    # Distinct images, so a mix-up of draw and image rows would change the bound.
    x = tf.constant((np.random.default_rng(8).random((BATCH, 784)) < 0.3).astype("float32"))
    state = model.noise.state.numpy()
    loss, recon, kl_units = model._iw_loss(x, tf.constant(beta))
    model.noise.state.assign(state)  # replay the same draws
    features = [tf.tile(f, [iw_samples, 1]) for f in model.encode(x)]
    log_w = model.log_weights(tf.tile(x, [iw_samples, 1]), features=features).numpy()
    return float(loss), recon.numpy(), kl_units, log_w.reshape(iw_samples, BATCH)


def test_the_iw_loss_is_the_negative_iwae_bound_of_its_draws() -> None:
    loss, recon, kl_units, log_w = _iw_loss_and_log_weights(iw_samples=3, beta=1.0)
    # Draw s of image b is row s * batch + b; the bound averages k weights per image.
    top = log_w.max(axis=0)
    bound = top + np.log(np.exp(log_w - top).mean(axis=0))
    assert loss == pytest.approx(-bound.mean(), rel=1e-5)
    # Tighter than every draw's own ELBO estimate, on average over the batch.
    assert -loss > log_w.mean() + 1e-3
    assert recon.shape == (3 * BATCH,) and (recon > 0).all()
    assert [u.shape for u in kl_units] == [(3 * BATCH, 4), (3 * BATCH, 3)]


def test_the_iw_loss_weights_the_log_ratio_by_beta() -> None:
    loss, recon, _, log_w = _iw_loss_and_log_weights(iw_samples=2, beta=0.25)
    # log_w = log p(x|z) + log p(z)/q(z): the warm-up scales the second term only.
    weighted = -recon.reshape(2, BATCH) + 0.25 * (log_w + recon.reshape(2, BATCH))
    top = weighted.max(axis=0)
    bound = top + np.log(np.exp(weighted - top).mean(axis=0))
    assert loss == pytest.approx(-bound.mean(), rel=1e-5)


def test_free_bits_add_a_hinge_below_the_floor_to_the_iw_loss() -> None:
    plain, _, kl_units, _ = _iw_loss_and_log_weights(iw_samples=2, beta=0.5)
    floored, _, _, _ = _iw_loss_and_log_weights(iw_samples=2, beta=0.5, free_bits=0.02)
    means = np.concatenate([u.numpy().mean(axis=0) for u in kl_units])
    below = np.maximum(0.02 - means, 0.0)
    assert below.sum() > 0 and (means > 0.02).any()  # both sides of the floor are exercised
    # The losses are ~550 nats in float32 (ulp ~6e-5): their difference is good to ~1e-4.
    assert floored - plain == pytest.approx(0.5 * below.sum(), abs=2e-4)


def test_iw_samples_are_part_of_the_config() -> None:
    model = build_model({**TINY, "iw_samples": 5})
    assert model.get_config()["iw_samples"] == 5
    assert build_model(model.get_config()).iw_samples == 5
    # model.json files written before the knob existed have no key: those trained on the ELBO.
    assert build_model(TINY).iw_samples == 1


def test_beta_is_one_without_warmup(tiny: SimpleNamespace) -> None:
    assert tiny.model.kl_warmup_steps == 0
    assert float(tiny.model.beta()) == 1.0


def test_evaluate_reports_the_true_elbo(trained: SimpleNamespace) -> None:
    binary = (np.random.default_rng(3).random((4, 784)) < 0.3).astype("float32")
    result = trained.model.evaluate(binary, batch_size=4, verbose=0, return_dict=True)
    # Only the bound: no beta, gradient norm or skip rate for data that trains nothing.
    assert set(result) == {"loss", "elbo", "recon", "kl", "kl_z1", "kl_z2"}
    assert result["loss"] == pytest.approx(-result["elbo"], rel=1e-5)


def test_updates_are_clipped_to_grad_clip_norm() -> None:
    images = np.random.default_rng(7).random((8, 784)).astype("float32")

    def step_size(clip: float | None) -> float:
        keras.utils.set_random_seed(3)
        model = build_model({**TINY, "grad_clip_norm": clip})
        model.compile(optimizer=keras.optimizers.SGD(1.0))
        before = [w.numpy().copy() for w in model.trainable_weights]
        model.fit(images, batch_size=8, epochs=1, verbose=0)
        moved = [a.numpy() - b for b, a in zip(before, model.trainable_weights, strict=True)]
        return float(np.sqrt(sum(np.sum(d**2) for d in moved)))

    free = step_size(None)
    assert free > 0.5  # with SGD(1.0) the step is the gradient: well above the clip below
    assert step_size(0.5) == pytest.approx(0.5, rel=1e-4)


def test_mixed_bfloat16_computes_in_bfloat16_and_keeps_float32_where_it_matters() -> None:
    """train.precision=mixed_bfloat16: matmuls in bfloat16; weights, distribution parameters,
    logits and losses in float32; the saved config rebuilds a float32 model that gives the
    same bound from the same weights, up to bfloat16 rounding."""
    keras.utils.set_random_seed(3)
    mixed = HierarchicalVAE(**TINY, dtype="mixed_bfloat16")
    mixed(tf.zeros((1, 784)))
    x = tf.constant((np.random.default_rng(3).random((64, 784)) < 0.3).astype("float32"))
    assert {w.dtype for w in mixed.weights} == {"float32"}
    assert mixed.stem(x).dtype == tf.bfloat16
    assert mixed.encode(x)[-1].dtype == tf.bfloat16
    logits, stats = mixed.decode(mixed.encode(x))
    assert logits.dtype == tf.float32
    assert {t.dtype for s in stats for t in (s.z, s.q_mu, s.q_sigma, s.p_mu, s.p_sigma)} == {
        tf.float32
    }

    mixed.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = mixed.fit(x, batch_size=16, epochs=3, shuffle=False, verbose=0).history
    assert np.isfinite(history["loss"]).all() and history["loss"][-1] < history["loss"][0]

    plain = build_model(mixed.get_config())
    assert plain.compute_dtype == "float32"
    plain.set_weights(mixed.get_weights())
    # Posterior means all the way down: no noise, so any difference is the dtype's.
    means = [m.decode(m.encode(x), use_mean=True)[0].numpy() for m in (mixed, plain)]
    np.testing.assert_allclose(means[0], means[1], atol=0.1)
    assert not np.array_equal(means[0], means[1])
