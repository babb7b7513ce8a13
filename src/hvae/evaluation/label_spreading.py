"""Semi-supervised classification: label spreading on features of the trained model.

Zhou et al. (2004), "Learning with local and global consistency", on a k-nearest-neighbour
graph of the training images' features (standardized; which features is semisup.features,
FEATURES below). Labels flow from
the few labelled images to the unlabelled ones along the graph, F <- alpha S F + (1 - alpha) Y
with S = D^-1/2 (W + W^T) D^-1/2. A new image takes the Gaussian-weighted vote of its k
nearest training images' spread labels, so the classifier is inductive: it is stored with the
model and needs no graph at prediction time.

Pure NumPy; the exact neighbour search is chunked so memory stays bounded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hvae.evaluation.linear_probe import balanced_subset

CLASSES = 10
# What a classifier can read of an image (semisup.features; computed by
# hvae.evaluation.representations.feature_fn):
# - encoder: the bottom-up encoder's deepest feature d_L (hidden_dim units), from which
#   q(z_L | x) is read; it keeps what the KL terms squeeze out of the posterior means.
# - posterior_means: every layer's E_q[z_l] side by side (sum of latent_dims units).
FEATURES = ("encoder", "posterior_means")
# Query rows per chunk of the exact neighbour search: a (2000, n) float32 distance block,
# 400 MB at n = 50 000.
SEARCH_CHUNK = 2000


def nearest(
    queries: np.ndarray,
    points: np.ndarray,
    k: int,
    exclude_self: bool = False,
    advance: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (m, k) and squared distances (m, k) of each query's k nearest points.

    `exclude_self`: the queries are the points themselves, and a point is not its own
    neighbour.
    """
    queries = np.asarray(queries, np.float32)
    points = np.asarray(points, np.float32)
    if not 1 <= k < len(points) + (0 if exclude_self else 1):
        raise ValueError(f"k = {k} neighbours among {len(points)} points")
    sq = np.einsum("ij,ij->i", points, points)
    idx = np.empty((len(queries), k), np.int64)
    dist = np.empty((len(queries), k), np.float32)
    for start in range(0, len(queries), SEARCH_CHUNK):
        q = queries[start : start + SEARCH_CHUNK]
        d = np.einsum("ij,ij->i", q, q)[:, None] - 2.0 * (q @ points.T) + sq[None, :]
        if exclude_self:
            rows = np.arange(len(q))
            d[rows, start + rows] = np.inf
        j = np.argpartition(d, k - 1, axis=1)[:, :k]
        idx[start : start + len(q)] = j
        # Rounding can make a squared distance slightly negative.
        dist[start : start + len(q)] = np.maximum(np.take_along_axis(d, j, axis=1), 0.0)
        if advance is not None:
            advance(len(q))
    return idx, dist


@dataclass(frozen=True)
class Graph:
    """A k-nearest-neighbour graph: W_ij = exp(-|x_i - x_j|^2 / width) for j among i's k."""

    idx: np.ndarray  # (n, k) neighbour indices
    weights: np.ndarray  # (n, k)
    width: float  # median squared distance to the k-th neighbour

    @classmethod
    def build(cls, idx: np.ndarray, sq_dist: np.ndarray) -> Graph:
        width = float(np.median(sq_dist.max(axis=1)))
        width = width if width > 0 else 1.0  # every point duplicated: any width will do
        # float64: an outlier's weights underflow only hundreds of widths away, not tens.
        return cls(idx, np.exp(-np.asarray(sq_dist, np.float64) / width), width)

    def _w(self, g: np.ndarray) -> np.ndarray:
        """W g, for (n, c) g."""
        return np.einsum("nk,nkc->nc", self.weights, g[self.idx])

    def _wt(self, g: np.ndarray) -> np.ndarray:
        """W^T g: each edge i -> j sends w_ij g_i to j."""
        n = len(self.idx)
        flat = self.idx.ravel()
        return np.stack(
            [
                np.bincount(flat, (self.weights * g[:, c, None]).ravel(), minlength=n)
                for c in range(g.shape[1])
            ],
            axis=1,
        )

    def spread(
        self, labelled: np.ndarray, labels: np.ndarray, alpha: float, iterations: int
    ) -> np.ndarray:
        """(n, CLASSES) class probabilities of every point after `iterations` steps."""
        n = len(self.idx)
        degree = self.weights.sum(axis=1) + np.bincount(
            self.idx.ravel(), self.weights.ravel(), minlength=n
        )
        # A point whose every weight underflowed is isolated: it keeps its own label (or
        # none), instead of spreading 0 * inf = NaN through the graph.
        inv_sqrt = np.zeros(n)
        np.divide(1.0, np.sqrt(degree), out=inv_sqrt, where=degree > 0)
        y = np.zeros((n, CLASSES))
        y[labelled, labels] = 1.0
        f = y
        for _ in range(iterations):
            g = inv_sqrt[:, None] * f
            f = alpha * inv_sqrt[:, None] * (self._w(g) + self._wt(g)) + (1.0 - alpha) * y
        return _normalize(f)


def _normalize(scores: np.ndarray) -> np.ndarray:
    """Rows scaled to sum to 1; a row no label reached becomes uniform."""
    total = scores.sum(axis=1, keepdims=True)
    out = np.full_like(scores, 1.0 / scores.shape[1])
    np.divide(scores, total, out=out, where=total > 0)
    return out


@dataclass(frozen=True)
class SpreadClassifier:
    """The inductive classifier: the training images' standardized features, their spread
    class probabilities, the graph's k and width, and which features of an image it reads
    (FEATURES below)."""

    mean: np.ndarray
    scale: np.ndarray
    points: np.ndarray  # (n, features), standardized
    probabilities: np.ndarray  # (n, CLASSES)
    k: int
    width: float
    features: str = "posterior_means"

    def __post_init__(self) -> None:
        if self.features not in FEATURES:
            raise ValueError(f"features {self.features!r}: expected one of {', '.join(FEATURES)}")

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """(m, CLASSES): the weighted vote of each row's k nearest training images."""
        return self.vote(
            *nearest(_standardized(features, self.mean, self.scale), self.points, self.k)
        )

    def vote(self, idx: np.ndarray, sq_dist: np.ndarray) -> np.ndarray:
        """(m, CLASSES) from each row's neighbours among the training images (`nearest`)."""
        # Shifted by each row's nearest distance, which the normalization cancels: a row far
        # from every training image still gets its neighbours' vote, not an underflowed zero.
        shifted = sq_dist - sq_dist.min(axis=1, keepdims=True)
        weights = np.exp(-np.asarray(shifted, np.float64) / self.width)
        return _normalize(np.einsum("mk,mkc->mc", weights, self.probabilities[idx]))

    def to_arrays(self) -> dict[str, np.ndarray]:
        # float32 throughout, so the served classifier is exactly the evaluated one.
        return {
            "mean": self.mean.astype(np.float32),
            "scale": self.scale.astype(np.float32),
            "points": self.points.astype(np.float32),
            "probabilities": self.probabilities.astype(np.float32),
            "k": np.int64(self.k),
            "width": np.float64(self.width),
            "features": np.array(self.features),
        }

    @classmethod
    def from_arrays(cls, arrays) -> SpreadClassifier:
        return cls(
            mean=np.asarray(arrays["mean"], np.float32),
            scale=np.asarray(arrays["scale"], np.float32),
            points=np.asarray(arrays["points"], np.float32),
            probabilities=np.asarray(arrays["probabilities"], np.float32),
            k=int(arrays["k"]),
            width=float(arrays["width"]),
            # Classifiers saved before the choice existed read the posterior means.
            features=str(arrays["features"]) if "features" in arrays else "posterior_means",
        )


def _standardized(features: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return ((np.asarray(features, np.float32) - mean) / scale).astype(np.float32)


def standardizer(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and scale of the training features (a collapsed unit keeps scale 1)."""
    features = np.asarray(features, np.float64)
    scale = features.std(axis=0)
    return features.mean(axis=0).astype(np.float32), np.where(scale > 0, scale, 1.0).astype(
        np.float32
    )


def fit(
    graph: Graph,
    points: np.ndarray,
    mean: np.ndarray,
    scale: np.ndarray,
    labelled: np.ndarray,
    labels: np.ndarray,
    alpha: float,
    iterations: int,
) -> SpreadClassifier:
    """Spread `labels` (of the points at `labelled`) over the graph of standardized `points`."""
    probabilities = graph.spread(labelled, labels, alpha, iterations)
    return SpreadClassifier(
        mean, scale, points, probabilities.astype(np.float32), graph.idx.shape[1], graph.width
    )


@dataclass(frozen=True)
class Results:
    """What the semisup stage reports and keeps."""

    metrics: dict[str, float]  # semisup_error_n<b>, semisup_error_n<b>_std, ...
    predicted: np.ndarray  # test predictions of the first draw of the smallest budget
    served: SpreadClassifier  # the first draw of the `serve` budget


def evaluate(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    budgets: list[int],
    draws: int,
    neighbours: int,
    alpha: float,
    iterations: int,
    serve: int,
    seed: int,
    advance: Callable[[int], None] | None = None,
    features: str = "posterior_means",
) -> Results:
    """Test error of label spreading from `budget` balanced labels among the `train` features
    (all other training images unlabelled), `draws` times per budget; mean and std.

    `advance` hears of each training image (graph) and test image (vote) searched;
    `features` names what the feature arrays are, for the served classifier.
    """
    if serve not in budgets:
        raise ValueError(f"serve = {serve}: not one of the budgets {budgets}")
    train_features, labels = train
    mean, scale = standardizer(train_features)
    points = _standardized(train_features, mean, scale)
    graph = Graph.build(*nearest(points, points, neighbours, exclude_self=True, advance=advance))
    # Each test image's neighbours once: the draws differ only in the spread labels.
    test_nearest = nearest(_standardized(test[0], mean, scale), points, neighbours, advance=advance)
    metrics: dict[str, float] = {}
    predicted = served = None
    for budget in budgets:
        errors = []
        for r in range(draws):
            labelled = balanced_subset(labels, budget, seed + 1000 * budget + r)
            model = fit(graph, points, mean, scale, labelled, labels[labelled], alpha, iterations)
            guess = model.vote(*test_nearest).argmax(axis=1)
            errors.append(float(np.mean(guess != test[1])))
            if r == 0 and budget == min(budgets):
                predicted = guess
            if r == 0 and budget == serve:
                served = dataclasses.replace(model, features=features)
        metrics[f"semisup_error_n{budget}"] = float(np.mean(errors))
        metrics[f"semisup_error_n{budget}_std"] = float(np.std(errors))
    metrics["semisup_draws"] = draws
    metrics["semisup_graph_images"] = len(points)
    return Results(metrics, predicted, served)
