"""The seed notebook's approach, kept only as a speed baseline: NOT a hierarchical VAE.

One sampled latent followed by a stack of deterministic Dense layers, trained by an eager
tf.GradientTape loop at batch 64 (no tf.function), as the notebook did.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


class SeedVAE(keras.Model):
    def __init__(self, latent: int = 32):
        super().__init__()
        self.encoder = keras.Sequential(
            [keras.layers.Dense(512, activation="relu"), keras.layers.Dense(256, activation="relu")]
        )
        self.to_stats = keras.layers.Dense(2 * latent)
        self.decoder = keras.Sequential(
            [
                keras.layers.Dense(256, activation="relu"),
                keras.layers.Dense(512, activation="relu"),
                keras.layers.Dense(784),
            ]
        )

    def negative_elbo(self, x: tf.Tensor) -> tf.Tensor:
        mu, log_var = tf.split(self.to_stats(self.encoder(x)), 2, axis=-1)
        z = mu + tf.exp(0.5 * log_var) * tf.random.normal(tf.shape(mu))
        logits = self.decoder(z)
        recon = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(x, logits), -1)
        kl = 0.5 * tf.reduce_sum(tf.exp(log_var) + mu**2 - 1.0 - log_var, -1)
        return tf.reduce_mean(recon + kl)


def eager_examples_per_second(images: np.ndarray, steps: int, batch: int = 64) -> float:
    """Examples/s of the seed's eager loop over `steps` batches (after one warm-up step)."""
    import time

    model, optimizer = SeedVAE(), keras.optimizers.Adam(1e-3)
    data = tf.constant(images[: batch * (steps + 1)].reshape(-1, 784), tf.float32)

    def step(x):
        with tf.GradientTape() as tape:
            loss = model.negative_elbo(x)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))

    step(data[:batch])
    started = time.perf_counter()
    for i in range(1, steps + 1):
        step(data[i * batch : (i + 1) * batch])
    return steps * batch / (time.perf_counter() - started)
