"""Test-set scores of a trained model: ELBO, per-layer KL, active units, IW log-likelihood."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from hvae.model import HierarchicalVAE

# Called with the number of images just scored (a stage's progress display), or None.
Advance = Callable[[int], None] | None


def _batches(images: np.ndarray, batch_size: int, advance: Advance = None):
    flat = images.reshape(len(images), -1).astype(np.float32)
    for start in range(0, len(flat), batch_size):
        yield tf.constant(flat[start : start + batch_size])
        if advance is not None:
            advance(min(batch_size, len(flat) - start))


def elbo_and_kl(
    model: HierarchicalVAE, images: np.ndarray, batch_size: int, advance: Advance = None
) -> dict[str, float]:
    """Mean single-sample ELBO, reconstruction and analytic KL of every layer (nats/image)."""
    terms = tf.function(model.elbo_terms, reduce_retracing=True)
    recon, kls = [], []
    for x in _batches(images, batch_size, advance):
        r, k = terms(x)
        recon.append(r.numpy())
        kls.append(np.stack([v.numpy() for v in k], axis=1))
    recon_all, kl_all = np.concatenate(recon), np.concatenate(kls)
    out = {
        "test_elbo": float(-(recon_all + kl_all.sum(1)).mean()),
        "test_recon": float(recon_all.mean()),
        "test_kl": float(kl_all.sum(1).mean()),
    }
    for i, name in enumerate(model.kl_names):
        out[f"test_{name}"] = float(kl_all[:, i].mean())
    return out


def active_units(
    model: HierarchicalVAE,
    images: np.ndarray,
    batch_size: int,
    threshold: float,
    advance: Advance = None,
) -> dict[str, int]:
    """Burda et al.'s count per layer: units u with Cov_x(E_q[u]) > threshold.

    E_q is taken along the posterior-mean path (each layer's mean given the means above).
    """
    means_fn = tf.function(model.posterior_means, reduce_retracing=True)
    per_layer: list[list[np.ndarray]] = [[] for _ in range(model.n_layers)]
    for x in _batches(images, batch_size, advance):
        for i, mu in enumerate(means_fn(x)):
            per_layer[i].append(mu.numpy())
    out = {}
    for i, chunks in enumerate(per_layer):
        variance = np.concatenate(chunks).var(axis=0)
        out[f"active_units_z{i + 1}"] = int((variance > threshold).sum())
    return out


def iw_log_likelihood(
    model: HierarchicalVAE,
    images: np.ndarray,
    k: int,
    batch_size: int,
    chunk: int,
    prior_layers: int = 0,
    advance: Advance = None,
) -> np.ndarray:
    """Per-image importance-weighted estimate of log p(x) with k samples, or of the bound
    L>j with prior_layers=j (see HierarchicalVAE.log_weights)."""
    return iw_log_likelihoods(model, images, (k,), batch_size, chunk, prior_layers, advance)[:, 0]


def iw_log_likelihoods(
    model: HierarchicalVAE,
    images: np.ndarray,
    ks: Sequence[int],
    batch_size: int,
    chunk: int,
    prior_layers: int = 0,
    advance: Advance = None,
) -> np.ndarray:
    """(n, len(ks)): column j the estimate at ks[j] samples, all from one stream of
    max(ks) samples per image (HierarchicalVAE.iw_log_likelihoods)."""
    return np.concatenate(
        [
            np.stack(
                [v.numpy() for v in model.iw_log_likelihoods(x, ks, chunk, prior_layers)], axis=1
            )
            for x in _batches(images, batch_size, advance)
        ]
    )
