"""The default model as the train stage builds it, for benchmarks."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from hvae.config import Params
from hvae.model import HierarchicalVAE


def default_model(
    params: Params, steps_per_epoch: int, output_bias: np.ndarray | None = None
) -> HierarchicalVAE:
    m, t = params.model, params.train
    model = HierarchicalVAE(
        latent_dims=m.latent_dims,
        hidden_dim=m.hidden_dim,
        blocks_per_layer=m.blocks_per_layer,
        min_sigma=m.min_sigma,
        kl_warmup_steps=t.kl_warmup_epochs * steps_per_epoch,
        output_bias=output_bias,
        seed=params.seed,
    )
    schedule = keras.optimizers.schedules.CosineDecay(
        t.learning_rate, decay_steps=t.epochs * steps_per_epoch, alpha=t.lr_min_ratio
    )
    model.compile(optimizer=keras.optimizers.Adam(schedule, global_clipnorm=t.grad_clip_norm))
    model(tf.zeros((1, model.pixels)))
    return model
