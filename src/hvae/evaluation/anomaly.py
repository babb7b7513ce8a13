"""Per-image statistics of a trained model that the OOD scores read (hvae.evaluation.detector).

After Havtorn et al. (2021), "Hierarchical VAEs Know What They Don't Know":
- the bounds: the importance-weighted L(x) and L>k, the bound in which the k lowest layers
  are drawn from their conditional prior and only z_{>k} is inferred. Low-level statistics
  (smooth backgrounds, simple strokes) inflate the likelihood of some OOD data; they cancel
  in the ratio L - L>k, which then measures how well the *upper* layers explain x;
- the reconstruction terms R_k = E_q log p(x | z_{>k}, z_{≤k} = the prior means): how their
  code computes L>k (the k lowest layers at the means of p(z_l | z_{>l}), no KL term), whose
  ratio R_0 - R_k separates Fashion-MNIST from MNIST better than the sampled bound's.
And the encoder's features, every layer's bottom-up d_l side by side, which the neighbour
distance reads (hvae.evaluation.detector.NeighbourDistance).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from hvae.evaluation.bounds import Advance, _batches, iw_log_likelihood
from hvae.evaluation.detector import Detector, NeighbourDistance
from hvae.model import HierarchicalVAE
from hvae.model.distributions import bernoulli_log_prob


def likelihood_score(log_px: np.ndarray) -> np.ndarray:
    return -np.asarray(log_px)


def bound_matrix(
    model: HierarchicalVAE,
    images: np.ndarray,
    samples: int,
    batch_size: int,
    chunk: int,
    advance: Advance = None,
    likelihood: np.ndarray | None = None,
) -> np.ndarray:
    """(n, L) per-image bounds, each estimated with `samples` importance samples (with
    samples=1 the plain ELBO and L>k): column 0 is L(x), column k the bound L>k.

    `likelihood`, when given, is column 0 already estimated (the first `samples` of a longer
    IW pass, bounds.iw_log_likelihoods). `advance` hears of every image once per bound
    computed: L passes over `images` in all, L - 1 with `likelihood`."""
    chunk = min(chunk, samples)
    first = [] if likelihood is None else [np.asarray(likelihood)]
    return np.stack(
        first
        + [
            iw_log_likelihood(
                model, images, samples, batch_size, chunk, prior_layers=k, advance=advance
            )
            for k in range(len(first), model.n_layers)
        ],
        axis=1,
    )


@tf.function(reduce_retracing=True)
def reconstruction_term(
    model: HierarchicalVAE,
    x: tf.Tensor,
    draws: int,
    prior_layers: int,
    eps: Sequence[tf.Tensor] | None = None,
) -> tf.Tensor:
    """(batch,) R_k with k = prior_layers: the mean over `draws` posterior draws of z_{>k}
    of log p(x | z_{>k}, z_{≤k} = the means of p(z_l | z_{>l})).

    `eps`, one (draws, batch, dim) tensor per layer, gives the draws' noise instead of the
    model's sampler (the k lowest layers' noise is unused: temperature 0 keeps the means)."""
    batch = tf.shape(x)[0]
    tiled = [tf.tile(f, [draws, 1]) for f in model.encode(x)]
    flat = None if eps is None else [tf.reshape(e, [-1, tf.shape(e)[-1]]) for e in eps]
    logits, _ = model.decode(tiled, prior_layers=prior_layers, temperature=0.0, eps=flat)
    log_px = bernoulli_log_prob(tf.tile(x, [draws, 1]), logits)
    return tf.reduce_mean(tf.reshape(log_px, [draws, batch]), axis=0)


def reconstruction_matrix(
    model: HierarchicalVAE,
    images: np.ndarray,
    draws: int,
    batch_size: int,
    advance: Advance = None,
) -> np.ndarray:
    """(n, L) per-image reconstruction terms: column k is R_k (R_0 the ordinary one).

    `advance` hears of every image once per term: L passes over `images` in all."""
    return np.stack(
        [
            np.concatenate(
                [
                    reconstruction_term(model, x, draws, k).numpy()
                    for x in _batches(images, batch_size, advance)
                ]
            )
            for k in range(model.n_layers)
        ],
        axis=1,
    )


def statistics(
    model: HierarchicalVAE,
    images: np.ndarray,
    samples: int,
    draws: int,
    batch_size: int,
    chunk: int,
    advance: Advance = None,
    likelihood: np.ndarray | None = None,
) -> np.ndarray:
    """(n, 2L): the L bounds at `samples` importance samples, then the L reconstruction terms
    at `draws` posterior draws; 2L passes over `images` (2L - 1 with `likelihood`, column 0
    given, as in bound_matrix), each heard by `advance`."""
    return np.concatenate(
        [
            bound_matrix(model, images, samples, batch_size, chunk, advance, likelihood),
            reconstruction_matrix(model, images, draws, batch_size, advance),
        ],
        axis=1,
    )


@tf.function(reduce_retracing=True)
def _all_features(model: HierarchicalVAE, x: tf.Tensor) -> tf.Tensor:
    return tf.concat(model.encode(x), axis=1)


def encoder_features(
    model: HierarchicalVAE, images: np.ndarray, batch_size: int, advance: Advance = None
) -> np.ndarray:
    """(n, L * hidden_dim): every layer's encoder feature d_1 … d_L side by side, one
    deterministic bottom-up pass per image."""
    return np.concatenate(
        [_all_features(model, x).numpy() for x in _batches(images, batch_size, advance)]
    )


def with_neighbours(model: HierarchicalVAE, detector: Detector, batch_size: int) -> Detector:
    """`detector` with its neighbour distance fitted on its reference images' features
    (unchanged when it has no reference)."""
    if detector.reference_images is None:
        return detector
    features = encoder_features(model, detector.reference_images, batch_size)
    return dataclasses.replace(
        detector, distance=NeighbourDistance.fit(features, detector.neighbours)
    )
