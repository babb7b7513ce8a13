"""Per-image anomaly scores of a trained model; higher means "more anomalous".

Two scores, as in Havtorn et al. (2021), "Hierarchical VAEs Know What They Don't Know":
- the likelihood score, -log p(x), importance-weighted;
- the hierarchical likelihood ratio LLR>k = L(x) - L>k(x), where L>k is the bound in which
  the k lowest layers are drawn from their conditional prior and only z_{>k} is inferred.
  Low-level statistics (smooth backgrounds, simple strokes) inflate the likelihood of some
  OOD data; they cancel in the ratio, which then measures how well the *upper* layers
  explain x.
"""

from __future__ import annotations

import numpy as np

from hvae.evaluation.bounds import Advance, iw_log_likelihood
from hvae.model import HierarchicalVAE


def likelihood_score(log_px: np.ndarray) -> np.ndarray:
    return -np.asarray(log_px)


def bound_matrix(
    model: HierarchicalVAE,
    images: np.ndarray,
    samples: int,
    batch_size: int,
    chunk: int,
    advance: Advance = None,
) -> np.ndarray:
    """(n, L) per-image bounds, each estimated with `samples` importance samples (with
    samples=1 the plain ELBO and L>k): column 0 is L(x), column k the bound L>k.

    `advance` hears of every image once per bound: L passes over `images` in all."""
    chunk = min(chunk, samples)
    return np.stack(
        [
            iw_log_likelihood(
                model, images, samples, batch_size, chunk, prior_layers=k, advance=advance
            )
            for k in range(model.n_layers)
        ],
        axis=1,
    )
