"""The tf.data input pipelines: values, shapes, order, and no autotuner."""

import numpy as np

from hvae.data.pipeline import eval_dataset, train_dataset


def _images(n: int = 10) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def test_train_batches_are_full_scaled_and_reshuffled():
    images = _images(10)
    data = train_dataset(images, batch_size=4, seed=0)
    epochs = [np.concatenate([b.numpy() for b in data]) for _ in range(2)]
    for rows in epochs:
        assert rows.shape == (8, 784)  # drop_remainder keeps one static batch shape
        assert rows.dtype == np.float32 and rows.min() >= 0.0 and rows.max() <= 1.0
        # Every row is one of the source images, scaled to [0, 1].
        flat = images.reshape(10, -1) / 255.0
        assert all(np.isclose(flat, r, atol=1e-6).all(axis=1).any() for r in rows)
    assert not np.array_equal(epochs[0], epochs[1])


def test_eval_batches_keep_order_and_the_last_partial_batch():
    binary = (_images(10) > 127).astype(np.uint8)
    rows = np.concatenate([b.numpy() for b in eval_dataset(binary, batch_size=4)])
    np.testing.assert_array_equal(rows, binary.reshape(10, -1).astype(np.float32))


def test_autotuner_is_off():
    # Deleting an autotuned iterator waits for the tuner thread's doubling sleep, which
    # stalled every Keras epoch end for up to the epoch's own length.
    for data in (train_dataset(_images(), 4, seed=0), eval_dataset(_images(), 4)):
        assert data.options().autotune.enabled is False
