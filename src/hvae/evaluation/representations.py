"""What each layer holds: linear probes on posterior means, and latent manipulations.

No I/O: render and evaluate call these and write the results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from hvae.evaluation.bounds import Advance
from hvae.evaluation.label_spreading import FEATURES
from hvae.evaluation.linear_probe import balanced_subset, fit_softmax
from hvae.model import HierarchicalVAE


def posterior_means(
    model: HierarchicalVAE, images: np.ndarray, batch_size: int, advance: Advance = None
) -> list[np.ndarray]:
    """E_q[z_l] of every layer (along the posterior-mean path), one (N, dim_l) array each."""
    flat = images.reshape(len(images), -1).astype(np.float32)
    means_fn = tf.function(model.posterior_means, reduce_retracing=True)
    chunks = []
    for i in range(0, len(flat), batch_size):
        chunks.append(means_fn(tf.constant(flat[i : i + batch_size])))
        if advance is not None:
            advance(min(batch_size, len(flat) - i))
    return [np.concatenate([c[layer].numpy() for c in chunks]) for layer in range(model.n_layers)]


def feature_fn(model: HierarchicalVAE, kind: str) -> Callable[[tf.Tensor], tf.Tensor]:
    """(batch, pixels) binary images -> (batch, dim) features `kind` (one of
    label_spreading.FEATURES)."""
    if kind == "encoder":
        return lambda x: model.encode(x)[-1]
    if kind == "posterior_means":
        return lambda x: tf.concat(model.posterior_means(x), axis=1)
    raise ValueError(f"features {kind!r}: expected one of {', '.join(FEATURES)}")


def image_features(
    model: HierarchicalVAE,
    images: np.ndarray,
    kind: str,
    batch_size: int,
    advance: Advance = None,
) -> np.ndarray:
    """(N, dim) features `kind` of every image, `batch_size` at a time."""
    flat = images.reshape(len(images), -1).astype(np.float32)
    compiled = tf.function(feature_fn(model, kind), reduce_retracing=True)
    chunks = []
    for i in range(0, len(flat), batch_size):
        chunks.append(compiled(tf.constant(flat[i : i + batch_size])).numpy())
        if advance is not None:
            advance(min(batch_size, len(flat) - i))
    return np.concatenate(chunks)


def probe_accuracies(
    model: HierarchicalVAE,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    budgets: Sequence[int],
    repeats: int,
    seed: int,
    batch_size: int,
    advance: Advance = None,
) -> dict[str, float]:
    """Test accuracy of a softmax regression on each layer's posterior means, on all layers
    together, and on raw pixels (the baseline), trained on `budget` balanced labelled images;
    mean and std over `repeats` draws. `advance` hears of each image encoded (the labelled
    ones, then the test set); the probes' fits are quick beside that.

    `train` images must be binarized like the test set, so both come from one distribution.
    """
    draws = {
        (budget, r): balanced_subset(train[1], budget, seed=seed + 1000 * budget + r)
        for budget in budgets
        for r in range(repeats)
    }
    # Encode every labelled image once, however many draws it is in.
    used = np.unique(np.concatenate(list(draws.values())))
    train_features = _features(model, train[0][used], batch_size, advance)
    test_features = _features(model, test[0], batch_size, advance)
    out: dict[str, float] = {}
    for budget in budgets:
        scores: dict[str, list[float]] = {name: [] for name in test_features}
        for r in range(repeats):
            rows = np.searchsorted(used, draws[budget, r])
            labels = train[1][draws[budget, r]]
            for name, x in train_features.items():
                probe = fit_softmax(x[rows], labels)
                scores[name].append(probe.accuracy(test_features[name], test[1]))
        for name, values in scores.items():
            out[f"probe_{name}_n{budget}"] = float(np.mean(values))
            out[f"probe_{name}_n{budget}_std"] = float(np.std(values))
    return out


def _features(
    model: HierarchicalVAE, images: np.ndarray, batch_size: int, advance: Advance = None
) -> dict[str, np.ndarray]:
    means = posterior_means(model, images, batch_size, advance)
    features = {f"z{i + 1}": m for i, m in enumerate(means)}
    features["all"] = np.concatenate(means, axis=1)
    features["pixels"] = images.reshape(len(images), -1).astype(np.float32)
    return features


def traversal(
    model: HierarchicalVAE,
    base: Sequence[np.ndarray],
    spread: Sequence[np.ndarray],
    layer: int,
    units: Sequence[int],
    steps: int,
) -> np.ndarray:
    """(len(units), steps, pixels) pixel means: each row moves one unit of `layer` from
    -3 to +3 of its spread around `base`, every other latent held at `base`."""
    offsets = np.linspace(-3.0, 3.0, steps, dtype=np.float32)
    rows = []
    for unit in units:
        fixed = {i: np.repeat(b[None, :], steps, axis=0) for i, b in enumerate(base)}
        fixed[layer] = fixed[layer].copy()
        fixed[layer][:, unit] += offsets * spread[layer][unit]
        rows.append(model.generate(steps, fixed=fixed).numpy())
    return np.stack(rows)


def keep_upper_layers(
    model: HierarchicalVAE, means: Sequence[np.ndarray], layer: int, draws: int
) -> np.ndarray:
    """(n_images, draws, pixels): z_layer and everything above held at each image's posterior
    means, the layers below drawn from their conditional prior `draws` times."""
    n = len(means[0])
    fixed = {i: np.repeat(m, draws, axis=0) for i, m in enumerate(means) if i >= layer}
    return model.generate(n * draws, fixed=fixed).numpy().reshape(n, draws, -1)
