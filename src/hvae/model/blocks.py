"""Building blocks: MLP residual blocks and diagonal-Gaussian heads."""

from __future__ import annotations

import keras
import tensorflow as tf


class ResidualBlock(keras.layers.Layer):
    """x + W2 swish(W1 swish(x)), the MLP analogue of VDVAE's bottleneck block.

    The second projection starts small so a deep stack begins close to the identity
    and the residual stream does not blow up before training has begun.
    """

    def __init__(self, width: int, **kwargs):
        super().__init__(**kwargs)
        self.inner = keras.layers.Dense(width, activation="swish")
        self.outer = keras.layers.Dense(
            width, kernel_initializer=keras.initializers.VarianceScaling(0.1)
        )

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return x + self.outer(self.inner(keras.activations.swish(x)))


class GaussianHead(keras.layers.Layer):
    """Maps features to (mu, sigma) of a diagonal Gaussian through one hidden layer."""

    def __init__(self, width: int, dim: int, min_sigma: float, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(width, activation="swish")
        self.params = keras.layers.Dense(
            2 * dim, kernel_initializer=keras.initializers.VarianceScaling(0.1)
        )
        self.dim = dim
        self.min_sigma = min_sigma

    def call(self, h: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        mu, raw = tf.split(self.params(self.hidden(h)), 2, axis=-1)
        # softplus keeps sigma positive without exp's overflow; the floor keeps log(sigma) finite.
        return mu, tf.math.softplus(raw + 0.5413) + self.min_sigma  # softplus(0.5413) = 1
