"""Log-densities and KL divergences, summed over the last axis (one value per example)."""

from __future__ import annotations

import math

import tensorflow as tf

LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_prob(z: tf.Tensor, mu: tf.Tensor, sigma: tf.Tensor) -> tf.Tensor:
    """log N(z; mu, diag(sigma^2))."""
    scaled = (z - mu) / sigma
    return tf.reduce_sum(-0.5 * LOG_2PI - tf.math.log(sigma) - 0.5 * scaled**2, axis=-1)


def standard_normal_log_prob(z: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(-0.5 * LOG_2PI - 0.5 * z**2, axis=-1)


def gaussian_kl(
    mu_q: tf.Tensor, sigma_q: tf.Tensor, mu_p: tf.Tensor, sigma_p: tf.Tensor
) -> tf.Tensor:
    """KL(N(mu_q, sigma_q^2) || N(mu_p, sigma_p^2)), analytic."""
    ratio = (sigma_q / sigma_p) ** 2
    return tf.reduce_sum(
        0.5 * (ratio + ((mu_q - mu_p) / sigma_p) ** 2 - 1.0 - tf.math.log(ratio)), axis=-1
    )


def bernoulli_log_prob(x: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """log Bernoulli(x; sigmoid(logits)), written with softplus for stability."""
    return -tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=x, logits=logits), -1)


def importance_weighted_bound(log_weights: tf.Tensor, axis: int = -1) -> tf.Tensor:
    """log (1/k) sum_k exp(log_w_k): the IWAE bound, which tends to log p(x) as k grows."""
    k = tf.cast(tf.shape(log_weights)[axis], log_weights.dtype)
    return tf.reduce_logsumexp(log_weights, axis=axis) - tf.math.log(k)
