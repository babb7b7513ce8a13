"""tf.data input pipelines from the prepared uint8 arrays."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def train_dataset(images: np.ndarray, batch_size: int, seed: int) -> tf.data.Dataset:
    """Grey levels in [0, 1], reshuffled every epoch; the model binarizes them per step.

    Full batches only, so the compiled step keeps one static shape.
    """
    flat = images.reshape(len(images), -1)
    return (
        tf.data.Dataset.from_tensor_slices(flat)
        .shuffle(len(flat), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size, drop_remainder=True)
        .map(lambda x: tf.cast(x, tf.float32) / 255.0, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )


def eval_dataset(binary_images: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """Already-binarized images as float {0, 1}, in order."""
    flat = binary_images.reshape(len(binary_images), -1)
    return (
        tf.data.Dataset.from_tensor_slices(flat)
        .batch(batch_size)
        .map(lambda x: tf.cast(x, tf.float32), num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
