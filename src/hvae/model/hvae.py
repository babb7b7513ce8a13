"""A hierarchical VAE with top-down inference (Ladder VAE / VDVAE style), as a keras.Model.

Generative model:  p(z_L) prod_{l<L} p(z_l | z_{>l}) p(x | z_1..z_L), Bernoulli pixels.
Inference model:   q(z_L | x) prod_{l<L} q(z_l | x, z_{>l}).

A bottom-up encoder turns x into one feature vector d_l per layer. One top-down pass then
walks from z_L to z_1 along a residual state s that summarises the latents drawn so far:
the prior of layer l reads s, the posterior reads s and d_l (a learned merge), and the drawn
z_l is added back into s. Prior and posterior thus share the generative path, as in VDVAE.
Layer index 0 is z_1 (next to the pixels); index L-1 is the top.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from hvae.model.blocks import GaussianHead, ResidualBlock
from hvae.model.distributions import (
    bernoulli_log_prob,
    free_bits_kl,
    gaussian_kl_per_unit,
    gaussian_log_prob,
    importance_weighted_bound,
)


class LayerStats(NamedTuple):
    """What one stochastic layer drew and the two distributions it drew between."""

    z: tf.Tensor
    q_mu: tf.Tensor | None
    q_sigma: tf.Tensor | None
    p_mu: tf.Tensor
    p_sigma: tf.Tensor


class TopDownLayer(keras.layers.Layer):
    def __init__(
        self,
        width: int,
        dim: int,
        blocks: int,
        top: bool,
        min_sigma: float,
        activation: str = "swish",
        **kw,
    ):
        super().__init__(**kw)
        self.dim = dim
        self.top = top
        # The top prior is a fixed N(0, I); every lower prior is conditioned on z_{>l}.
        policy = self.dtype_policy
        head = {"min_sigma": min_sigma, "activation": activation, "dtype": policy}
        self.prior = None if top else GaussianHead(width, dim, **head)
        self.posterior = GaussianHead(width, dim, **head)
        self.z_in = keras.layers.Dense(width, dtype=policy)
        self.blocks = [
            ResidualBlock(width, activation=activation, dtype=policy) for _ in range(blocks)
        ]

    def prior_params(self, s: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        if self.prior is None:
            shape = tf.stack([tf.shape(s)[0], self.dim])
            return tf.zeros(shape, "float32"), tf.ones(shape, "float32")
        return self.prior(s)

    def advance(self, s: tf.Tensor, z: tf.Tensor) -> tf.Tensor:
        s = s + self.z_in(z)
        for block in self.blocks:
            s = block(s)
        return s


@keras.saving.register_keras_serializable(package="hvae")
class HierarchicalVAE(keras.Model):
    def __init__(
        self,
        latent_dims: Sequence[int] = (32, 16, 8),
        hidden_dim: int = 256,
        blocks_per_layer: int = 1,
        min_sigma: float = 1e-3,
        # Models saved before this knob existed used swish, so it stays the constructor default.
        activation: str = "swish",
        pixels: int = 784,
        kl_warmup_steps: int = 0,
        free_bits: float = 0.0,
        iw_samples: int = 1,
        grad_clip_norm: float | None = None,
        skip_grad_norm: float | None = None,
        output_bias: Sequence[float] | None = None,
        seed: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.latent_dims = [int(d) for d in latent_dims]
        self.hidden_dim = hidden_dim
        self.blocks_per_layer = blocks_per_layer
        self.min_sigma = min_sigma
        self.activation = activation
        self.pixels = pixels
        self.kl_warmup_steps = kl_warmup_steps
        self.free_bits = free_bits
        self.iw_samples = int(iw_samples)
        self.grad_clip_norm = grad_clip_norm
        self.skip_grad_norm = skip_grad_norm
        self.seed = seed
        n = len(self.latent_dims)

        # With dtype="mixed_bfloat16" (train.precision) the matmuls and the residual stream run in
        # bfloat16; distribution parameters, logits and every loss term stay float32, and so do
        # the weights. The saved config has no dtype: a loaded model computes in float32.
        policy = self.dtype_policy
        self.stem = keras.layers.Dense(hidden_dim, activation=activation, dtype=policy)
        # Deeper layers see deeper features: d_l comes after l+1 stacks of blocks.
        self.bottom_up = [
            [
                ResidualBlock(hidden_dim, activation=activation, dtype=policy)
                for _ in range(max(blocks_per_layer, 1))
            ]
            for _ in range(n)
        ]
        self.top_down = [
            TopDownLayer(
                hidden_dim,
                dim,
                blocks_per_layer,
                top=(i == n - 1),
                min_sigma=min_sigma,
                activation=activation,
                dtype=policy,
            )
            for i, dim in enumerate(self.latent_dims)
        ]
        self.initial_state = self.add_weight(
            shape=(hidden_dim,), initializer="zeros", name="initial_state"
        )
        # 1 when the last update was skipped for its norm (see _apply_or_skip).
        self.skipped_last = self.add_weight(
            shape=(),
            initializer="zeros",
            trainable=False,
            name="skipped_last",
            aggregation="only_first_replica",
        )
        # Starting the output bias at logit(mean pixel) spares the first epochs from
        # learning the average digit (a trick from the IWAE and VDVAE code).
        bias = "zeros" if output_bias is None else keras.initializers.Constant(output_bias)
        self.to_logits = keras.layers.Dense(pixels, bias_initializer=bias, dtype=policy)
        self.noise = keras.random.SeedGenerator(seed)

        self.trackers = {
            name: keras.metrics.Mean(name=name)
            for name in [*self.bound_names, "beta", "grad_norm", "skip_rate"]
        }

    def load_own_variables(self, store) -> None:
        # Weights saved before the model had its skip state (hvae-mnist versions 1-8) hold
        # initial_state alone; skipped_last then keeps its initial 0.
        if len(store.keys()) == 1:
            self.initial_state.assign(store["0"])
            return
        super().load_own_variables(store)

    def build(self, input_shape) -> None:
        # Sublayers create their weights on first use: one pass on a dummy batch makes them all.
        self.decode(self.encode(tf.zeros((1, self.pixels))))
        self.built = True

    @property
    def n_layers(self) -> int:
        return len(self.latent_dims)

    @property
    def kl_names(self) -> list[str]:
        return [f"kl_z{i + 1}" for i in range(self.n_layers)]

    @property
    def bound_names(self) -> list[str]:
        return ["loss", "elbo", "recon", "kl", *self.kl_names]

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return list(self.trackers.values())

    def get_config(self) -> dict:
        return {
            "latent_dims": self.latent_dims,
            "hidden_dim": self.hidden_dim,
            "blocks_per_layer": self.blocks_per_layer,
            "min_sigma": self.min_sigma,
            "activation": self.activation,
            "pixels": self.pixels,
            "kl_warmup_steps": self.kl_warmup_steps,
            "free_bits": self.free_bits,
            "iw_samples": self.iw_samples,
            "grad_clip_norm": self.grad_clip_norm,
            "skip_grad_norm": self.skip_grad_norm,
            "seed": self.seed,
        }

    # -- the two passes ---------------------------------------------------------------------

    def encode(self, x: tf.Tensor) -> list[tf.Tensor]:
        """Bottom-up features d_1..d_L; pixels are centred to {-1, 1} first."""
        h = self.stem(2.0 * x - 1.0)
        features = []
        for stack in self.bottom_up:
            for block in stack:
                h = block(h)
            features.append(h)
        return features

    def decode(
        self,
        features: Sequence[tf.Tensor] | None = None,
        batch_size: int | tf.Tensor | None = None,
        prior_layers: int = 0,
        fixed: Mapping[int, tf.Tensor] | None = None,
        use_mean: bool = False,
        temperature: float = 1.0,
        eps: Sequence[tf.Tensor] | None = None,
        parts: Sequence[tf.Tensor] | None = None,
    ) -> tuple[tf.Tensor, list[LayerStats]]:
        """Top-down pass from z_L to z_1, returning pixel logits and per-layer stats.

        Layer i draws from q(z_i | x, z_{>i}) when `features` (or `parts`, see
        `posterior_parts`) are given and i >= prior_layers,
        otherwise from p(z_i | z_{>i}) (so prior_layers=k gives the bound L_{>k});
        `fixed[i]` overrides the draw. `use_mean` takes means instead of samples.
        `eps[i]`, standard-normal noise shaped like z_i, replaces the model's own sampler
        (`self.noise`), so a caller can make each draw a function of its input alone.
        """
        fixed = fixed or {}
        if batch_size is None:
            batch_size = tf.shape((features if parts is None else parts)[0])[0]
        s = tf.tile(self.initial_state[None, :], tf.stack([batch_size, 1]))
        s = tf.cast(s, self.compute_dtype)
        stats: list[LayerStats] = [None] * self.n_layers  # type: ignore[list-item]
        for i in reversed(range(self.n_layers)):
            layer = self.top_down[i]
            p_mu, p_sigma = layer.prior_params(s)
            q_mu = q_sigma = None
            if features is not None and i >= prior_layers:
                q_mu, q_sigma = layer.posterior(tf.concat([s, features[i]], axis=-1))
                mu, sigma = q_mu, q_sigma
            elif parts is not None and i >= prior_layers:
                # The top's part holds its s share too: s is the initial state on every row.
                q_mu, q_sigma = layer.posterior.from_part(parts[i], None if layer.top else s)
                mu, sigma = q_mu, q_sigma
            else:
                mu, sigma = p_mu, p_sigma * temperature
            if i in fixed:
                z = fixed[i]
            elif use_mean:
                z = mu
            elif eps is not None:
                z = mu + sigma * eps[i]
            else:
                z = mu + sigma * keras.random.normal(tf.shape(mu), seed=self.noise)
            stats[i] = LayerStats(z, q_mu, q_sigma, p_mu, p_sigma)
            s = layer.advance(s, z)
        logits = self.to_logits(keras.activations.get(self.activation)(s))
        return tf.cast(logits, "float32"), stats

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Reconstruction logits of x through one posterior sample."""
        logits, _ = self.decode(self.encode(x))
        return logits

    # -- objectives -------------------------------------------------------------------------

    def elbo_terms(
        self, x: tf.Tensor, eps: Sequence[tf.Tensor] | None = None
    ) -> tuple[tf.Tensor, list[tf.Tensor]]:
        """Per-example reconstruction loss -log p(x|z) and the analytic KL of every layer.

        `eps` (one (batch, dim) tensor per layer) is the noise of the one posterior draw.
        """
        recon, kl_units = self._recon_and_kl_units(x, eps)
        return recon, [tf.reduce_sum(k, axis=-1) for k in kl_units]

    def _recon_and_kl_units(
        self, x: tf.Tensor, eps: Sequence[tf.Tensor] | None = None
    ) -> tuple[tf.Tensor, list[tf.Tensor]]:
        logits, stats = self.decode(self.encode(x), eps=eps)
        recon = -bernoulli_log_prob(x, logits)
        return recon, _kl_units(stats)

    def log_weights(
        self,
        x: tf.Tensor,
        features: Sequence[tf.Tensor] | None = None,
        prior_layers: int = 0,
        eps: Sequence[tf.Tensor] | None = None,
        parts: Sequence[tf.Tensor] | None = None,
    ) -> tf.Tensor:
        """log p(x, z) - log q(z | x) at one sample z per row.

        With prior_layers=k the k lowest layers are drawn from p(z_l | z_{>l}) instead of q;
        their p/q ratio is then 1 and drops out, which gives the log-weights of the bound
        L_{>k} of Havtorn et al. (2021): only z_{>k} is inferred from x.
        `eps` (one (rows, dim) tensor per layer) is the draws' noise, and `parts` may stand
        in for `features`, as in `decode`.
        """
        logits, stats = self.decode(features, prior_layers=prior_layers, eps=eps, parts=parts)
        log_w = bernoulli_log_prob(x, logits)
        for s in stats[prior_layers:]:
            log_w += gaussian_log_prob(s.z, s.p_mu, s.p_sigma)
            log_w -= gaussian_log_prob(s.z, s.q_mu, s.q_sigma)
        return log_w

    def posterior_parts(self, features: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        """Each posterior's share of its hidden layer that depends on the image alone (the
        whole pre-activation at the top, where s is the initial state): computed once per
        image, they stand in for `features` in `decode` and spare every sample a matmul."""
        top = self.initial_state[None, :]
        return [
            layer.posterior.input_part(d, top if layer.top else None)
            for layer, d in zip(self.top_down, features, strict=True)
        ]

    def iw_log_likelihood(
        self,
        x: tf.Tensor,
        k: int,
        chunk: int,
        prior_layers: int = 0,
        eps: Sequence[tf.Tensor] | None = None,
    ) -> tf.Tensor:
        """Importance-weighted estimate of log p(x) with k samples per image.

        Samples are drawn `chunk` at a time and folded into a running log-sum-exp, so memory
        is bounded by batch * chunk rows whatever k is. The encoder runs once per image.
        prior_layers=k estimates the bound L_{>k} instead (see log_weights).
        `eps`, one (k, batch, dim) tensor per layer, gives the noise of every sample instead
        of the model's sampler; chunks read their slice of it.
        """
        return self.iw_log_likelihoods(x, (k,), chunk, prior_layers, eps)[0]

    def iw_log_likelihoods(
        self,
        x: tf.Tensor,
        ks: Sequence[int],
        chunk: int,
        prior_layers: int = 0,
        eps: Sequence[tf.Tensor] | None = None,
    ) -> list[tf.Tensor]:
        """`iw_log_likelihood` at every k of `ks` from one stream of max(ks) samples: the
        estimate at k reads the first k. Each is an unbiased k-sample estimate (the samples
        are i.i.d.), and the smaller ones cost nothing beyond the largest. The chunks are
        those of max(ks) alone, so the largest estimate is the same whatever the others."""
        parts = self._image_parts(x)
        k_max = max(ks)
        total, at = None, {}
        for start in range(0, k_max, chunk):
            n = min(chunk, k_max - start)
            part_eps = None if eps is None else [e[start : start + n] for e in eps]
            log_w = self._chunk_log_weights(x, parts, n, prior_layers, part_eps)
            # A k inside this chunk reads its first k - start rows.
            for k in {k for k in ks if start < k <= start + n}:
                at[k] = _fold(total, log_w[: k - start]) - tf.math.log(tf.cast(k, log_w.dtype))
            total = _fold(total, log_w)
        return [at[k] for k in ks]

    @tf.function(reduce_retracing=True)
    def _image_parts(self, x: tf.Tensor) -> list[tf.Tensor]:
        return self.posterior_parts(self.encode(x))

    @tf.function(reduce_retracing=True)
    def _chunk_log_weights(
        self,
        x: tf.Tensor,
        parts: list[tf.Tensor],
        n: int,
        prior_layers: int = 0,
        eps: list[tf.Tensor] | None = None,
    ) -> tf.Tensor:
        """(n, batch) log-weights: n samples for every image of the batch, with the noise
        given when `eps` is ((n, batch, dim) each)."""
        batch = tf.shape(x)[0]
        tiled = [tf.tile(p, [n, 1]) for p in parts]
        # Row s * batch + b of the tiled batch is sample s of image b, as eps[i][s, b].
        flat = None if eps is None else [tf.reshape(e, [n * batch, tf.shape(e)[-1]]) for e in eps]
        log_w = self.log_weights(
            tf.tile(x, [n, 1]), prior_layers=prior_layers, eps=flat, parts=tiled
        )
        return tf.reshape(log_w, [n, batch])

    def beta(self) -> tf.Tensor:
        """KL weight: linear warm-up from ~0 to 1 over kl_warmup_steps optimizer steps."""
        if self.kl_warmup_steps <= 0:
            return tf.constant(1.0)
        step = tf.cast(self.optimizer.iterations + 1, tf.float32)
        return tf.minimum(1.0, step / float(self.kl_warmup_steps))

    def _bound_metrics(self, loss: tf.Tensor, recon: tf.Tensor, kls: list[tf.Tensor]) -> None:
        # Always the unclamped KL: free bits change the training loss, never the reported bound.
        kl = tf.add_n(kls)
        values = {"loss": loss, "elbo": -(recon + kl), "recon": recon, "kl": kl}
        values.update(zip(self.kl_names, kls, strict=True))
        for name, value in values.items():
            self.trackers[name].update_state(value)

    def _results(self, names: Sequence[str]) -> dict:
        return {name: self.trackers[name].result() for name in names}

    def train_step(self, data: tf.Tensor) -> dict:
        # Dynamic binarization: a fresh Bernoulli draw of every image each time it is seen.
        x = tf.cast(keras.random.uniform(tf.shape(data), seed=self.noise) < data, data.dtype)
        beta = self.beta()
        with tf.GradientTape() as tape:
            if self.iw_samples > 1:
                loss, recon, kl_units = self._iw_loss(x, beta)
            else:
                recon, kl_units = self._recon_and_kl_units(x)
                if self.free_bits > 0:
                    kl_loss = tf.add_n([free_bits_kl(k, self.free_bits) for k in kl_units])
                else:
                    kl_loss = tf.reduce_mean(tf.add_n([tf.reduce_sum(k, -1) for k in kl_units]))
                loss = tf.reduce_mean(recon) + beta * kl_loss
            # Gradients are summed over replicas, so each replica contributes its share.
            scaled = loss / tf.distribute.get_strategy().num_replicas_in_sync
        grads = tape.gradient(scaled, self.trainable_weights)
        self._apply_or_skip(grads)
        self._bound_metrics(loss, recon, [tf.reduce_sum(k, -1) for k in kl_units])
        self.trackers["beta"].update_state(beta)
        return self._results(self.trackers)

    def _iw_loss(
        self, x: tf.Tensor, beta: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor, list[tf.Tensor]]:
        """The negative IWAE bound over `iw_samples` posterior draws per image (Burda et al.
        2015), with the log-ratio log p(z)/q(z|x) of each draw weighted by beta for the warm-up.

        The encoder runs once per image; each draw has its own top-down pass. Free bits become
        the hinge sum_units max(0, free_bits - E_batch[KL_unit]) on the analytic KL: added to
        the ELBO that is exactly `free_bits_kl`, and here it keeps a unit from being switched
        off in the same way. Also returns each draw's -log p(x|z) and per-unit KL (the ELBO's
        terms, for the metrics).
        """
        k = self.iw_samples
        features = [tf.tile(f, [k, 1]) for f in self.encode(x)]
        # Row s * batch + b is draw s of image b.
        logits, stats = self.decode(features)
        log_px = bernoulli_log_prob(tf.tile(x, [k, 1]), logits)
        log_ratio = tf.add_n(
            [
                gaussian_log_prob(s.z, s.p_mu, s.p_sigma)
                - gaussian_log_prob(s.z, s.q_mu, s.q_sigma)
                for s in stats
            ]
        )
        log_w = tf.reshape(log_px + beta * log_ratio, [k, -1])
        loss = -tf.reduce_mean(importance_weighted_bound(log_w, axis=0))
        kl_units = _kl_units(stats)
        if self.free_bits > 0:
            hinges = [tf.nn.relu(self.free_bits - tf.reduce_mean(u, 0)) for u in kl_units]
            loss += beta * tf.add_n([tf.reduce_sum(h) for h in hinges])
        return loss, -log_px, kl_units

    def _apply_or_skip(self, grads: list[tf.Tensor]) -> None:
        """Apply the update unless its gradient is non-finite or its norm above skip_grad_norm.

        One bad batch (a near-zero sigma, an outlier image) can otherwise wreck Adam's moments
        for thousands of steps; skipping it and counting the skips (VDVAE does the same) keeps
        the run alive and makes the problem visible as `skip_rate` in MLflow.
        A huge but finite norm right after a skip is applied (clipped) instead: a skip leaves
        the model unchanged, so a second one in a row points at the model's state, not at an
        outlier batch, and skipping on would stall training for good (Fashion-MNIST's early
        steps did exactly that with a fixed threshold).
        Updates that pass are clipped to grad_clip_norm here, reusing the norm, rather than by
        the optimizer's global_clipnorm, which would compute it again (as keras does, per
        replica, before the all-reduce).
        """
        norm = tf.linalg.global_norm(grads)
        if self.grad_clip_norm is not None:
            grads, _ = tf.clip_by_global_norm(grads, self.grad_clip_norm, use_norm=norm)
        ok = tf.math.is_finite(norm)
        if self.skip_grad_norm is not None:
            small = tf.logical_or(norm < self.skip_grad_norm, self.skipped_last > 0.5)
            ok = tf.logical_and(ok, small)
        context = tf.distribute.get_replica_context()
        if tf.distribute.has_strategy() and context.num_replicas_in_sync > 1:
            # Every replica must take the same branch, so any replica's veto counts for all.
            ok = context.all_reduce("sum", 1.0 - tf.cast(ok, tf.float32)) < 0.5
        self._conditional_apply(ok, grads)
        self.skipped_last.assign(tf.cast(tf.logical_not(ok), tf.float32))
        self.trackers["skip_rate"].update_state(1.0 - tf.cast(ok, tf.float32))
        self.trackers["grad_norm"].update_state(
            tf.where(tf.math.is_finite(norm), norm, 0.0), sample_weight=tf.cast(ok, norm.dtype)
        )

    def _conditional_apply(self, ok: tf.Tensor, grads: list[tf.Tensor]) -> None:
        def apply(grads: list[tf.Tensor]) -> None:
            self.optimizer.apply_gradients(zip(grads, self.trainable_weights, strict=True))

        if not tf.distribute.has_strategy() or (
            tf.__internal__.distribute.strategy_supports_no_merge_call()
        ):
            tf.cond(ok, lambda: apply(grads), lambda: None)
            return

        # apply_gradients all-reduces through merge_call, which may not sit inside a cond in
        # replica context; so branch in cross-replica context (as keras' LossScaleOptimizer).
        def cross_replica(distribution: tf.distribute.Strategy, grads, ok) -> None:
            decided = distribution.experimental_local_results(ok)[0]
            tf.cond(
                decided,
                lambda: distribution.extended.call_for_each_replica(apply, args=(grads,)),
                lambda: None,
            )

        context = tf.distribute.get_replica_context()
        context.merge_call(cross_replica, args=(grads, ok))

    def test_step(self, data: tf.Tensor) -> dict:
        # Validation data arrive binarized once (fixed seed); the bound is the true ELBO.
        recon, kls = self.elbo_terms(data)
        self._bound_metrics(recon + tf.add_n(kls), recon, kls)
        return self._results(self.bound_names)

    # -- generation and inspection -------------------------------------------------------------

    def generate(
        self, n: int, fixed: Mapping[int, tf.Tensor] | None = None, temperature: float = 1.0
    ) -> tf.Tensor:
        """Pixel probabilities of n draws from the prior (optionally with some layers fixed)."""
        logits, _ = self.decode(batch_size=n, fixed=fixed, temperature=temperature)
        return tf.sigmoid(logits)

    def reconstruct(self, x: tf.Tensor) -> tf.Tensor:
        logits, _ = self.decode(self.encode(x), use_mean=True)
        return tf.sigmoid(logits)

    def posterior_means(self, x: tf.Tensor) -> list[tf.Tensor]:
        """E_q[z_l] per layer, taking the posterior mean at every layer on the way down."""
        _, stats = self.decode(self.encode(x), use_mean=True)
        return [s.q_mu for s in stats]

    def sample_top(self, n: int) -> tf.Tensor:
        return keras.random.normal((n, self.latent_dims[-1]), seed=self.noise)


def pixel_logits(images: np.ndarray) -> np.ndarray:
    """logit of each pixel's mean intensity, clipped away from 0 and 1."""
    mean = np.clip(images.reshape(len(images), -1).mean(axis=0) / 255.0, 1e-3, 1 - 1e-3)
    return np.log(mean / (1 - mean)).astype(np.float32)


def build_model(config: Mapping, output_bias: Sequence[float] | None = None) -> HierarchicalVAE:
    """Construct from a get_config() dict and create all weights."""
    model = HierarchicalVAE(**config, output_bias=output_bias)
    model(tf.zeros((1, model.pixels)))
    return model


def _kl_units(stats: Sequence[LayerStats]) -> list[tf.Tensor]:
    """The analytic KL(q || p) of every unit of every layer, (rows, dim) each."""
    return [gaussian_kl_per_unit(s.q_mu, s.q_sigma, s.p_mu, s.p_sigma) for s in stats]


def _fold(total: tf.Tensor | None, log_w: tf.Tensor) -> tf.Tensor:
    """log(exp(total) + sum over rows of exp(log_w)): the running log-sum-exp of the
    importance weights, `total` that of the earlier chunks (None: none)."""
    part = tf.reduce_logsumexp(log_w, axis=0)
    return part if total is None else tf.reduce_logsumexp(tf.stack([total, part]), 0)
