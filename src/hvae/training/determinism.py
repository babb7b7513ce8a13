"""train.deterministic: the same weights, bit for bit, from the same code, data and params.

TensorFlow's op determinism: deterministic kernels where a faster non-deterministic one
exists (GPU reductions, scatter ops), and deterministic tf.data. Threads stay at TensorFlow's
defaults: one inter-op thread as well cost about 12 % of the step here and changed no weight
(README: Reproducibility). Weights repeat on machines of the same CPU kind and core count,
not across them.
"""

from __future__ import annotations

import tensorflow as tf


def configure(deterministic: bool) -> None:
    """Call before the first TensorFlow op, as train does."""
    if deterministic:
        tf.config.experimental.enable_op_determinism()
