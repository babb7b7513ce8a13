"""FusedAdam: keras' Adam maths through TF's fused kernel."""

import keras
import numpy as np
import pytest

from hvae.training.optimizer import FusedAdam


def _run(optimizer: keras.optimizers.Optimizer, steps: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    weights = [keras.Variable(rng.normal(size=s).astype("float32")) for s in [(7, 3), (3,)]]
    optimizer.build(weights)
    for _ in range(steps):
        grads = [rng.normal(size=w.shape).astype("float32") for w in weights]
        optimizer.apply_gradients(zip(grads, weights, strict=True))
    return [w.numpy() for w in weights]


@pytest.mark.parametrize("learning_rate", [1e-3, 0.1])
def test_fused_adam_matches_keras_adam(learning_rate: float) -> None:
    kwargs = dict(learning_rate=learning_rate, beta_1=0.8, beta_2=0.95, epsilon=1e-6)
    fused = _run(FusedAdam(**kwargs))
    reference = _run(keras.optimizers.Adam(**kwargs))
    start = _run(keras.optimizers.SGD(0.0))
    for f, r, s in zip(fused, reference, start, strict=True):
        assert not np.allclose(f, s)  # the weights did move
        np.testing.assert_allclose(f, r, rtol=1e-5, atol=1e-7)


def test_fused_adam_round_trips_its_config() -> None:
    optimizer = FusedAdam(learning_rate=0.01, beta_2=0.9)
    again = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(again, FusedAdam) and again.beta_2 == 0.9
