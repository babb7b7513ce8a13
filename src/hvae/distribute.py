"""Pick the tf.distribute strategy: one device, or all local GPUs."""

from __future__ import annotations

import tensorflow as tf


def choose_strategy(name: str) -> tf.distribute.Strategy:
    """`auto`: MirroredStrategy when more than one GPU is visible, else the default strategy."""
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    if name == "one_device" or name == "auto":
        return tf.distribute.get_strategy()
    raise ValueError(f"train.strategy: unknown strategy {name!r}")
