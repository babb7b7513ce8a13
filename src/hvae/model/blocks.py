"""Building blocks: MLP residual blocks and diagonal-Gaussian heads.

Each block hands its own dtype policy to its Dense layers (keras does not pass it down), so
a model built with dtype="mixed_bfloat16" runs every matmul in bfloat16.
"""

from __future__ import annotations

import keras
import tensorflow as tf


class ResidualBlock(keras.layers.Layer):
    """x + W2 act(W1 act(x)), the MLP analogue of VDVAE's bottleneck block.

    The second projection starts small so a deep stack begins close to the identity
    and the residual stream does not blow up before training has begun.
    """

    def __init__(self, width: int, activation: str = "swish", **kwargs):
        super().__init__(**kwargs)
        self.activation = keras.activations.get(activation)
        self.inner = keras.layers.Dense(width, activation=activation, dtype=self.dtype_policy)
        self.outer = keras.layers.Dense(
            width,
            kernel_initializer=keras.initializers.VarianceScaling(0.1),
            dtype=self.dtype_policy,
        )

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return x + self.outer(self.inner(self.activation(x)))


class GaussianHead(keras.layers.Layer):
    """Maps features to (mu, sigma) of a diagonal Gaussian through one hidden layer.

    mu and sigma are float32 whatever the compute dtype: KL terms, log-densities and the
    reparameterised draws need the precision, and cost little.
    """

    def __init__(self, width: int, dim: int, min_sigma: float, activation: str = "swish", **kw):
        super().__init__(**kw)
        self.hidden = keras.layers.Dense(width, activation=activation, dtype=self.dtype_policy)
        self.params = keras.layers.Dense(
            2 * dim,
            kernel_initializer=keras.initializers.VarianceScaling(0.1),
            dtype=self.dtype_policy,
        )
        self.dim = dim
        self.min_sigma = min_sigma

    def call(self, h: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return self._from_hidden(self.hidden(h))

    # A posterior head reads concat([s, d]): s varies with every sample of z, d only with the
    # image. Splitting the hidden layer's kernel lets the d half (and, where s is the same for
    # every row, all of it) be computed once per image instead of once per sample.

    def input_part(self, d: tf.Tensor, s: tf.Tensor | None = None) -> tf.Tensor:
        """The hidden pre-activation's share from the trailing input d (bias included), plus
        that of the leading input s when given: concat([s, d]) @ W + b, term by term."""
        part = tf.matmul(tf.cast(d, self.compute_dtype), self._kernel_rows(-d.shape[-1], None))
        part += tf.cast(self.hidden.bias, self.compute_dtype)
        return part if s is None else part + self._lead_share(s)

    def from_part(self, part: tf.Tensor, s: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        """(mu, sigma) from `input_part`'s result, adding s's share unless it holds it."""
        if s is not None:
            part = part + self._lead_share(s)
        return self._from_hidden(self.hidden.activation(part))

    def _lead_share(self, s: tf.Tensor) -> tf.Tensor:
        """s @ W_s: the leading input's rows of the hidden kernel."""
        return tf.matmul(tf.cast(s, self.compute_dtype), self._kernel_rows(None, s.shape[-1]))

    def _kernel_rows(self, start: int | None, stop: int | None) -> tf.Tensor:
        return tf.cast(self.hidden.kernel, self.compute_dtype)[start:stop]

    def _from_hidden(self, hidden: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        mu, raw = tf.split(tf.cast(self.params(hidden), "float32"), 2, axis=-1)
        # softplus keeps sigma positive without exp's overflow; the floor keeps log(sigma) finite.
        return mu, tf.math.softplus(raw + 0.5413) + self.min_sigma  # softplus(0.5413) = 1
