"""The model and optimiser as the train stage builds them from params."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from hvae.training.callbacks import RaiseIfInterrupted
from hvae.training.fit import compiled_model, training_callbacks
from hvae.training.optimizer import FusedAdam
from params_helpers import params_with

TESTS = Path(__file__).resolve().parent
TINY_MODEL = {"latent_dims": [4, 3], "hidden_dim": 16}


def _params(**train):
    # The repo's params.yaml, shrunk: every key is required, none falls back to a default.
    return params_with(model=TINY_MODEL, train={"epochs": 2, **train})


def test_the_optimizer_is_ready_before_the_first_step() -> None:
    # The update runs inside tf.cond, where no optimizer slot may be created.
    model = compiled_model(_params(), steps_per_epoch=5)
    assert model.optimizer.built
    assert len(model.optimizer.variables) > 2 * len(model.trainable_weights)


def test_params_reach_the_model_and_optimizer() -> None:
    params = _params(free_bits=0.25, skip_grad_norm=500.0, kl_warmup_epochs=3, iw_samples=4)
    model = compiled_model(params, steps_per_epoch=7)
    assert model.free_bits == 0.25
    assert model.iw_samples == 4
    assert model.skip_grad_norm == 500.0
    assert model.kl_warmup_steps == 21
    assert model.grad_clip_norm == params.train.grad_clip_norm
    assert model.optimizer.global_clipnorm is None  # the model clips, reusing its norm
    assert isinstance(model.optimizer, FusedAdam)
    assert model.steps_per_execution == params.train.steps_per_execution
    assert not model.optimizer.use_ema
    assert [type(c) for c in training_callbacks(params)] == [RaiseIfInterrupted]


def test_ema_validates_and_saves_the_averaged_weights() -> None:
    keras.utils.set_random_seed(0)
    params = _params(ema_decay=0.5, steps_per_execution=2)
    model = compiled_model(params, steps_per_epoch=4)
    assert model.optimizer.use_ema and model.optimizer.ema_momentum == 0.5
    _, swap = training_callbacks(params)
    assert isinstance(swap, keras.callbacks.SwapEMAWeights) and swap.swap_on_epoch

    images = np.random.default_rng(0).random((32, 784)).astype("float32")
    binary = (images > 0.5).astype("float32")
    seen: list[tuple[list, list]] = []

    def record(*_) -> None:
        slots = model.optimizer._model_variables_moving_average
        seen.append(([w.numpy() for w in model.trainable_weights], [a.numpy() for a in slots]))

    model.fit(
        images,
        batch_size=8,
        epochs=2,
        validation_data=(binary,),
        callbacks=[swap, keras.callbacks.LambdaCallback(on_epoch_end=record)],
        verbose=0,
    )
    # After epoch 1, callbacks behind the swap (checkpoints) see the EMA while the raw
    # weights wait in the optimizer's slots to go on training.
    weights, slots = seen[0]
    assert any(not np.allclose(w, r) for w, r in zip(weights, slots, strict=True))
    # The model left by fit() holds the EMA of the last epoch, as saved.
    final = [w.numpy() for w in model.trainable_weights]
    for w, kept in zip(final, seen[-1][0], strict=True):
        np.testing.assert_allclose(w, kept, atol=1e-6)


def test_two_replicas_agree_on_skipping(tmp_path) -> None:
    """MirroredStrategy on two virtual CPUs: the conditional update compiles and every
    replica skips together (a skip threshold of ~0 makes every other update a skip: the one
    after a skip is applied, clipped, so training cannot stall)."""
    script = textwrap.dedent(
        """
        import numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from params_helpers import params_with
        from hvae.training.fit import compiled_model
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        images = np.random.default_rng(0).random((64, 784)).astype("float32")
        for skip, expected in ((1e-6, 0.5), (1e6, 0.0)):
            params = params_with(model={"latent_dims": [4, 3], "hidden_dim": 16},
                                 train={"epochs": 1, "grad_clip_norm": 1e-7,
                                        "skip_grad_norm": skip, "steps_per_execution": 2})
            with strategy.scope():
                model = compiled_model(params, steps_per_epoch=4)
            before = [w.numpy().copy() for w in model.trainable_weights]
            rate = model.fit(images, batch_size=16, epochs=1, verbose=0).history["skip_rate"][0]
            moved = any(not np.array_equal(b, w.numpy())
                        for b, w in zip(before, model.trainable_weights))
            applied = int(model.optimizer.iterations.numpy())
            assert rate == expected and moved and applied == 4 * (1 - expected), (skip, rate)
        print("ok", strategy.num_replicas_in_sync)
        """
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    # params_helpers sits beside this file.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["ok", "2"]


@pytest.mark.parametrize(("free_bits", "iw_samples"), [(0.0, 1), (0.5, 1), (0.0, 3), (0.5, 3)])
def test_a_compiled_model_trains(free_bits: float, iw_samples: int) -> None:
    keras.utils.set_random_seed(1)
    params = _params(free_bits=free_bits, iw_samples=iw_samples, steps_per_execution=3)
    model = compiled_model(params, steps_per_epoch=4)
    images = np.random.default_rng(1).random((32, 784)).astype("float32")
    history = model.fit(images, batch_size=8, epochs=2, verbose=0).history
    assert history["skip_rate"] == [0.0, 0.0]
    assert all(np.isfinite(history["elbo"]))
    assert int(model.optimizer.iterations) == 8
