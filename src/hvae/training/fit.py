"""The model and optimiser exactly as the train stage fits them, built from typed params.

Shared by the train stage and the benchmarks so both measure the same thing.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from hvae.config import Params
from hvae.model import HierarchicalVAE
from hvae.training import precision
from hvae.training.callbacks import RaiseIfInterrupted
from hvae.training.optimizer import FusedAdam


def compiled_model(
    params: Params, steps_per_epoch: int, output_bias: np.ndarray | None = None
) -> HierarchicalVAE:
    """A built, compiled HierarchicalVAE; call inside the distribution strategy's scope."""
    m, t = params.model, params.train
    model = HierarchicalVAE(
        latent_dims=m.latent_dims,
        hidden_dim=m.hidden_dim,
        blocks_per_layer=m.blocks_per_layer,
        min_sigma=m.min_sigma,
        activation=m.activation,
        kl_warmup_steps=t.kl_warmup_epochs * steps_per_epoch,
        free_bits=t.free_bits,
        iw_samples=t.iw_samples,
        grad_clip_norm=t.grad_clip_norm,
        skip_grad_norm=t.skip_grad_norm,
        output_bias=output_bias,
        seed=params.seed,
        dtype=precision.resolve(t.precision),
    )
    schedule = keras.optimizers.schedules.CosineDecay(
        t.learning_rate, decay_steps=t.epochs * steps_per_epoch, alpha=t.lr_min_ratio
    )
    optimizer = FusedAdam(
        schedule,
        use_ema=t.ema_decay > 0,
        ema_momentum=t.ema_decay or 0.99,
    )
    # Several steps per compiled call: fewer Python round-trips, which on a small MLP are a
    # large share of the step time. Not with several replicas: there the skip-or-apply branch
    # must run in cross-replica context, which TF cannot nest in keras' multi-step loop.
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    steps = t.steps_per_execution if replicas == 1 else 1
    model.compile(optimizer=optimizer, steps_per_execution=steps)
    model(keras.ops.zeros((1, model.pixels)))
    # The update is applied inside tf.cond (see HierarchicalVAE._apply_or_skip), where no
    # variable may be created: the optimizer's slots must exist before the first step.
    optimizer.build(model.trainable_variables)
    return model


def training_callbacks(params: Params) -> list[keras.callbacks.Callback]:
    """Callbacks that must run before any that read or save the weights."""
    callbacks: list[keras.callbacks.Callback] = [RaiseIfInterrupted()]
    if params.train.ema_decay > 0:
        # Validation, checkpoints and the saved model then all use the averaged weights.
        callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    return callbacks
