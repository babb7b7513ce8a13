"""tf.data input pipelines from the prepared uint8 arrays."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

# Batches queued ahead of the train step; the map is a cast, so two are plenty.
PREFETCH = 2


def _without_autotune(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Fixed buffers instead of tf.data's autotuner.

    The autotuner's background thread sleeps for a period that doubles while the iterator
    runs, and deleting the iterator waits for it to wake. Keras deletes one at the end of
    every fit/evaluate epoch, so epochs stalled idle for up to their own length: half-speed
    epochs, seen with py-spy in `~LogicalThreadWrapper` and measured in bench.speed.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def train_dataset(images: np.ndarray, batch_size: int, seed: int) -> tf.data.Dataset:
    """Grey levels in [0, 1], reshuffled every epoch; the model binarizes them per step.

    Full batches only, so the compiled step keeps one static shape.
    """
    flat = tf.constant(images.reshape(len(images), -1))
    # Shuffling indices and gathering whole batches costs one op per batch instead of one per
    # image; the order is the same as shuffling the images themselves (same seed, same buffer).
    dataset = (
        tf.data.Dataset.range(len(images))
        .shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size, drop_remainder=True)
        .map(lambda index: tf.cast(tf.gather(flat, index), tf.float32) / 255.0)
        .prefetch(PREFETCH)
    )
    return _without_autotune(dataset)


def eval_dataset(binary_images: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """Already-binarized images as float {0, 1}, in order."""
    flat = binary_images.reshape(len(binary_images), -1)
    dataset = (
        tf.data.Dataset.from_tensor_slices(flat)
        .batch(batch_size)
        .map(lambda x: tf.cast(x, tf.float32))
        .prefetch(PREFETCH)
    )
    return _without_autotune(dataset)
