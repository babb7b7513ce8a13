"""Linear probes: softmax regression on frozen features, scored by test accuracy.

Pure NumPy: full-batch gradient descent on a convex loss (cross-entropy + L2) over
standardized features converges without tuning for the few-hundred-dimensional features
here, and needs no extra dependency.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SoftmaxProbe:
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray  # (features, classes)
    bias: np.ndarray

    def logits(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale) @ self.weights + self.bias

    def accuracy(self, x: np.ndarray, labels: np.ndarray) -> float:
        return float(np.mean(np.argmax(self.logits(x), axis=1) == labels))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def loss_and_grads(
    w: np.ndarray, b: np.ndarray, x: np.ndarray, onehot: np.ndarray, l2: float
) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean cross-entropy + l2/2 * |w|^2, and its gradients in w and b."""
    p = _softmax(x @ w + b)
    n = len(x)
    loss = -np.sum(onehot * np.log(p + 1e-12)) / n + 0.5 * l2 * np.sum(w * w)
    d = (p - onehot) / n
    return float(loss), x.T @ d + l2 * w, d.sum(axis=0)


def fit_softmax(
    x: np.ndarray,
    labels: np.ndarray,
    classes: int = 10,
    l2: float = 1e-3,
    steps: int = 1000,
    learning_rate: float = 0.5,
) -> SoftmaxProbe:
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-8  # a dead unit stays at zero instead of dividing by it
    xs = (x - mean) / scale
    onehot = np.eye(classes)[labels]
    w = np.zeros((x.shape[1], classes))
    b = np.zeros(classes)
    for _ in range(steps):
        _, gw, gb = loss_and_grads(w, b, xs, onehot, l2)
        w -= learning_rate * gw
        b -= learning_rate * gb
    return SoftmaxProbe(mean, scale, w, b)


def balanced_subset(labels: np.ndarray, n: int, seed: int, classes: int = 10) -> np.ndarray:
    """Indices of n labelled examples, n // classes per class, drawn with `seed`."""
    if n % classes:
        raise ValueError(f"label budget {n} is not a multiple of {classes} classes")
    rng = np.random.default_rng(seed)
    picks = []
    for c in range(classes):
        members = np.flatnonzero(labels == c)
        if len(members) < n // classes:
            raise ValueError(f"class {c} has {len(members)} examples, need {n // classes}")
        picks.append(rng.choice(members, n // classes, replace=False))
    return np.sort(np.concatenate(picks))
