"""train.deterministic: the same weights, bit for bit, from the same code, data and params.

TensorFlow's op determinism (deterministic kernels where a faster non-deterministic one
exists, deterministic tf.data) and one inter-op thread, so ops never race to accumulate in
different orders under load. Intra-op threads stay at TensorFlow's default (one per core):
weights repeat on machines of the same CPU kind and core count, not across them.
Measured here: about 3 % slower per step (README: Reproducibility).
"""

from __future__ import annotations

import tensorflow as tf


def configure(deterministic: bool) -> None:
    """Call before any other TensorFlow work: threads cannot change once the runtime starts."""
    if not deterministic:
        return
    tf.config.experimental.enable_op_determinism()
    try:
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        # The runtime already started in this process (a notebook, a test): keep what it has
        # if that is the same, else say so rather than train non-reproducibly in silence.
        if tf.config.threading.get_inter_op_parallelism_threads() != 1:
            raise
