"""The served OOD detector: one score, chosen and thresholded on validation data only.

Every candidate score is a function of an image's 2L statistics (hvae.evaluation.anomaly):
columns 0 … L-1 are its bounds, the importance-weighted L(x) and the bounds L>j in which the
j lowest layers are drawn from their conditional prior; columns L … 2L-1 are its
reconstruction terms R_0 … R_{L-1}, where R_j = E_q log p(x | z_{>j}, z_{≤j} = the prior
means). Higher means "more anomalous".

- `likelihood`: -L(x).
- `llr_k<j>`: L(x) - L>j(x) (Havtorn et al. 2021).
- `recon_k<j>`: R_0 - R_j, the reconstruction ratio that Havtorn et al.'s code computes for
  LLR>j: the lower layers at their prior means, the KL terms cancelled.
- `typicality`: the squared Mahalanobis distance of the L bounds from the training images'
  (a Gaussian density of states, after Morningstar et al. 2021). It is two-sided: an image
  the model finds *more* likely than its training data (MNIST under a Fashion-MNIST model) is
  as atypical as one it finds less likely, and so is an image whose lowest layers add less
  than a training image's do (Fashion-MNIST under an MNIST model, where LLR>k ranks OOD images
  *below* digits). It is invariant to any invertible linear map of its columns, so it holds
  every LLR>k and the likelihood at once.
- `typicality_recon`: the same distance over all 2L statistics, so it holds every
  reconstruction ratio too.
- `neighbours`: the squared distance from an image's encoder features (every layer's
  bottom-up d_l side by side, standardized and put on the unit sphere) to its k-th nearest
  among a reference of binarized training images' (after Sun et al. 2022, "Out-of-distribution
  detection with deep nearest neighbors"). It reads no bound: what the encoder makes of an
  image, not how well the decoder explains it, so it is not fooled by the simple images that
  a Fashion-MNIST model finds more likely than its own. The reference's images are stored
  with the detector; their features are a function of the weights (NeighbourDistance.fit).

`calibrate` picks the score by validation AUROC (in-distribution validation images against
the other dataset's training images) unless one is named, and sets the threshold at the
in-distribution validation quantile `tpr`: a fraction `tpr` of typical images is accepted.
Pure NumPy, no I/O.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

import numpy as np

from hvae.evaluation import label_spreading, ood

LIKELIHOOD, TYPICALITY, TYPICALITY_RECON = "likelihood", "typicality", "typicality_recon"
NEIGHBOURS = "neighbours"
TYPICALITIES = (TYPICALITY, TYPICALITY_RECON)
_RATIO = re.compile(r"(llr|recon)_k([1-9][0-9]*)")
# Keeps a near-singular covariance (the statistics are strongly correlated) invertible.
RIDGE = 1e-6
# Reference images whose neighbour search costs one row about one importance sample: measured
# with the default architecture on 2 cores, 0.89 ms a row against 20 000 x 1 024 features,
# 0.021 ms an importance sample. What the score counts in a request's budget (Detector.cost).
REFERENCE_PER_SAMPLE = 500
# The most reference images a detector file may name (all of MNIST's training images).
MAX_REFERENCE = 60_000


def score_names(n_layers: int, neighbours: bool = False) -> list[str]:
    """The candidates for an L-layer model; `neighbours` with a reference to search."""
    return [
        LIKELIHOOD,
        *(f"llr_k{j}" for j in range(1, n_layers)),
        *(f"recon_k{j}" for j in range(1, n_layers)),
        *TYPICALITIES,
        *([NEIGHBOURS] if neighbours else []),
    ]


def score_label(score: str) -> str:
    """How tables and figures name a score: likelihood, LLR>j, recon>j, typicality,
    neighbour distance."""
    if score == NEIGHBOURS:
        return "neighbour distance"
    match = _RATIO.fullmatch(score)
    if match is None:
        return score
    return f"{'LLR' if match.group(1) == 'llr' else 'recon'}>{match.group(2)}"


def columns_needed(score: str, n_layers: int) -> list[int]:
    """The statistics columns `score` reads: j < L the bound L>j (0 = L itself), L + j the
    reconstruction term R_j; `neighbours` reads none (only the encoder's features)."""
    if score == NEIGHBOURS:
        return []
    if score == LIKELIHOOD:
        return [0]
    if score == TYPICALITY:
        return list(range(n_layers))
    if score == TYPICALITY_RECON:
        return list(range(2 * n_layers))
    kind, j = _ratio(score, n_layers)
    return [0, j] if kind == "llr" else [n_layers, n_layers + j]


def _ratio(score: str, n_layers: int) -> tuple[str, int]:
    match = _RATIO.fullmatch(score)
    if match is None or not 1 <= int(match.group(2)) < n_layers:
        expected = ", ".join(score_names(n_layers, neighbours=True))
        raise ValueError(f"OOD score {score!r}: expected one of {expected}")
    return match.group(1), int(match.group(2))


@dataclass(frozen=True)
class Typicality:
    """Mean and precision of the standardized statistics vectors of in-distribution images."""

    center: np.ndarray  # (d,)
    scale: np.ndarray  # (d,)
    precision: np.ndarray  # (d, d), of the standardized vectors

    @classmethod
    def fit(cls, statistics: np.ndarray) -> Typicality:
        statistics = np.asarray(statistics, np.float64)
        if statistics.ndim != 2 or len(statistics) < statistics.shape[1] + 2:
            raise ValueError(
                f"typicality: need more images than statistics to fit, got shape {statistics.shape}"
            )
        center = statistics.mean(0)
        scale = statistics.std(0)
        scale = np.where(scale > 0, scale, 1.0)
        z = (statistics - center) / scale
        covariance = np.atleast_2d(np.cov(z, rowvar=False)) + RIDGE * np.eye(z.shape[1])
        return cls(center, scale, np.linalg.inv(covariance))

    def __call__(self, statistics: np.ndarray) -> np.ndarray:
        z = (np.asarray(statistics, np.float64) - self.center) / self.scale
        return np.einsum("ij,jk,ik->i", z, self.precision, z)


@dataclass(frozen=True)
class NeighbourDistance:
    """The reference images' features, standardized and on the unit sphere, and k."""

    center: np.ndarray  # (d,)
    scale: np.ndarray  # (d,)
    reference: np.ndarray  # (n, d) float32, unit rows
    k: int

    @classmethod
    def fit(cls, features: np.ndarray, k: int) -> NeighbourDistance:
        features = np.asarray(features, np.float64)
        if features.ndim != 2 or not 1 <= k <= len(features):
            raise ValueError(
                f"neighbours: need at least k = {k} reference images, got shape {features.shape}"
            )
        center, scale = features.mean(0), features.std(0)
        # A unit that never varies (a dead ReLU-like feature) carries no distance.
        scale = np.where(scale > 0, scale, 1.0)
        fitted = cls(center, scale, np.empty((0, features.shape[1]), np.float32), k)
        return dataclasses.replace(fitted, reference=fitted._sphere(features))

    def _sphere(self, features: np.ndarray) -> np.ndarray:
        z = (np.asarray(features, np.float64) - self.center) / self.scale
        norm = np.linalg.norm(z, axis=1, keepdims=True)
        return (z / np.where(norm > 0, norm, 1.0)).astype(np.float32)

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """(n,) squared distance to the k-th nearest reference feature (the ranking of the
        distance itself); the search is chunked, so memory does not grow with n."""
        if len(features) == 0:
            return np.zeros(0)
        _, squared = label_spreading.nearest(self._sphere(features), self.reference, self.k)
        return squared.max(axis=1).astype(np.float64)


def scores(
    statistics: np.ndarray,
    typicality: dict[str, Typicality] | None = None,
    neighbours: NeighbourDistance | None = None,
    features: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Every candidate score of the images whose (n, 2L) statistics are given (the
    typicality scores only with their fits, keyed by score name; the neighbour distance
    only with its fit and the images' (n, d) encoder features)."""
    statistics = np.asarray(statistics, np.float64)
    n_layers = statistics.shape[1] // 2
    bound, recon = statistics[:, :n_layers], statistics[:, n_layers:]
    out = {LIKELIHOOD: -bound[:, 0]}
    out.update({f"llr_k{j}": bound[:, 0] - bound[:, j] for j in range(1, n_layers)})
    out.update({f"recon_k{j}": recon[:, 0] - recon[:, j] for j in range(1, n_layers)})
    for name, fit in (typicality or {}).items():
        out[name] = fit(statistics[:, columns_needed(name, n_layers)])
    if neighbours is not None and features is not None:
        out[NEIGHBOURS] = neighbours(features)
    return out


def fit_typicalities(statistics: np.ndarray) -> dict[str, Typicality]:
    """Both typicality scores' statistics, fitted on in-distribution images' (n, 2L)."""
    n_layers = np.shape(statistics)[1] // 2
    return {
        name: Typicality.fit(np.asarray(statistics)[:, columns_needed(name, n_layers)])
        for name in TYPICALITIES
    }


@dataclass(frozen=True)
class Detector:
    """A score, the samples per bound and draws per reconstruction term it was calibrated
    at, and its threshold."""

    score: str
    samples: int
    draws: int
    threshold: float
    tpr: float  # the in-distribution validation fraction at or below the threshold
    n_layers: int
    # Both fits, whatever the score, so that ood reports every typicality beside the served one.
    typicality: dict[str, Typicality]
    # The neighbour distance's k and its reference: binarized training images, (n, pixels)
    # bool, or None without one. Stored as images, not features (40 times smaller); the
    # fitted `distance` is built from them with the model (anomaly.with_neighbours).
    neighbours: int = 0
    reference_images: np.ndarray | None = None
    distance: NeighbourDistance | None = None

    def __post_init__(self) -> None:
        columns_needed(self.score, self.n_layers)  # a known score for this depth
        if (self.reference_images is None) != (self.neighbours == 0):
            raise ValueError("neighbours and reference_images: give both or neither")
        if self.score == NEIGHBOURS and self.reference_images is None:
            raise ValueError("score neighbours: no reference images")
        if self.reference_images is not None and not 1 <= self.neighbours <= len(
            self.reference_images
        ):
            raise ValueError(
                f"neighbours {self.neighbours}: expected 1 to the "
                f"{len(self.reference_images)} reference images"
            )

    @property
    def columns(self) -> list[int]:
        return columns_needed(self.score, self.n_layers)

    @property
    def cost(self) -> int:
        """Importance samples (or their equivalent in neighbour search) one image's score
        takes."""
        passes = sum(self.samples if j < self.n_layers else self.draws for j in self.columns)
        if self.score == NEIGHBOURS:
            passes += math.ceil(len(self.reference_images) / REFERENCE_PER_SAMPLE)
        return passes

    def __call__(self, statistics: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        """The score of images whose (n, 2L) statistics are given (only `columns` are read)
        and, for `neighbours`, their (n, d) encoder features."""
        statistics = np.asarray(statistics, np.float64)
        if self.score == NEIGHBOURS:
            if self.distance is None or features is None:
                raise ValueError("neighbours: needs the fitted distance and the features")
            return self.distance(features)
        if self.score in TYPICALITIES:
            return self.typicality[self.score](statistics[:, self.columns])
        return scores(statistics)[self.score]

    def to_dict(self) -> dict:
        """Everything but the reference images (to_arrays)."""
        return {
            "score": self.score,
            "samples": self.samples,
            "draws": self.draws,
            "threshold": self.threshold,
            "tpr": self.tpr,
            "n_layers": self.n_layers,
            "neighbours": self.neighbours,
            "reference_images": 0 if self.reference_images is None else len(self.reference_images),
            "typicality": {
                name: {
                    "center": t.center.tolist(),
                    "scale": t.scale.tolist(),
                    "precision": t.precision.tolist(),
                }
                for name, t in self.typicality.items()
            },
        }

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The reference images, 8 pixels a byte."""
        if self.reference_images is None:
            return {}
        images = np.asarray(self.reference_images, bool)
        return {"reference": np.packbits(images, axis=1), "pixels": np.array(images.shape[1])}

    @classmethod
    def from_dict(cls, data: dict, arrays: dict[str, np.ndarray] | None = None) -> Detector:
        """Raises KeyError, TypeError or ValueError on a damaged file (hvae.extras names it).
        `arrays` are to_arrays' (needed when the file names reference images)."""
        n = int(data["n_layers"])
        fits = {}
        for name in TYPICALITIES:
            t = data["typicality"][name]
            size = len(columns_needed(name, n))
            center, scale = np.asarray(t["center"], float), np.asarray(t["scale"], float)
            precision = np.asarray(t["precision"], float)
            if center.shape != (size,) or scale.shape != (size,) or precision.shape != (size,) * 2:
                raise ValueError(f"{name} statistics do not match n_layers {n}")
            if not all(np.isfinite(a).all() for a in (center, scale, precision)):
                raise ValueError(f"{name} statistics must be finite")
            fits[name] = Typicality(center, scale, precision)
        threshold = float(data["threshold"])
        samples, draws = int(data["samples"]), int(data["draws"])
        if not np.isfinite(threshold) or samples < 1 or draws < 1:
            raise ValueError(
                f"threshold {threshold}, samples {samples} or draws {draws} out of range"
            )
        # Files written before the neighbour distance have neither key.
        count, k = int(data.get("reference_images", 0)), int(data.get("neighbours", 0))
        reference = None
        if not 0 <= count <= MAX_REFERENCE:
            raise ValueError(f"reference_images {count}: expected 0 to {MAX_REFERENCE}")
        if count:
            if arrays is None:
                raise ValueError(f"{count} reference images named but none stored")
            pixels = int(arrays["pixels"])
            reference = np.unpackbits(np.asarray(arrays["reference"], np.uint8), axis=1)
            if len(reference) != count or not 0 < pixels <= reference.shape[1]:
                raise ValueError(f"stored reference images do not match the {count} named")
            reference = reference[:, :pixels].astype(bool)
        return cls(
            str(data["score"]),
            samples,
            draws,
            threshold,
            float(data["tpr"]),
            n,
            fits,
            neighbours=k,
            reference_images=reference,
        )


def calibrate(
    fit_statistics: np.ndarray,
    in_statistics: np.ndarray,
    ood_statistics: np.ndarray,
    samples: int,
    draws: int,
    tpr: float,
    score: str = "auto",
    neighbours: NeighbourDistance | None = None,
    reference_images: np.ndarray | None = None,
    features: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[Detector, dict[str, float]]:
    """The detector and the validation metrics of every candidate score.

    `fit_statistics` (training images, (n, 2L)) fit the typicality statistics;
    `in_statistics` and `ood_statistics` (validation images) choose the score when `score`
    is "auto" and set the threshold. With `neighbours` (fitted on the features of
    `reference_images`) and the validation images' encoder `features` (in, OOD), the
    neighbour distance is a candidate too. The metrics are `<score>_auroc`/`_auprc`/`_fpr80`
    for every candidate and the chosen one's threshold and its validation rates at that
    threshold.
    """
    n_layers = np.shape(fit_statistics)[1] // 2
    with_neighbours = neighbours is not None
    if with_neighbours and (reference_images is None or features is None):
        raise ValueError("neighbours: needs its reference images and the validation features")
    typicality = fit_typicalities(fit_statistics)
    in_features, ood_features = features if with_neighbours else (None, None)
    in_scores = scores(in_statistics, typicality, neighbours, in_features)
    ood_scores = scores(ood_statistics, typicality, neighbours, ood_features)
    metrics: dict[str, float] = {}
    for name in in_scores:
        metrics.update(
            {f"{name}_{m}": v for m, v in ood.summary(in_scores[name], ood_scores[name]).items()}
        )
    candidates = score_names(n_layers, with_neighbours)
    if score == "auto":
        # Ties go to the earlier, simpler score in score_names order.
        score = max(candidates, key=lambda s: metrics[f"{s}_auroc"])
    elif score not in candidates:
        columns_needed(score, n_layers)  # an unknown score's message
        raise ValueError(f"OOD score {score!r}: no reference images to search")
    threshold = float(np.quantile(in_scores[score], tpr, method="higher"))
    detector = Detector(
        score,
        samples,
        draws,
        threshold,
        float(np.mean(in_scores[score] <= threshold)),
        n_layers,
        typicality,
        neighbours=neighbours.k if with_neighbours else 0,
        reference_images=reference_images if with_neighbours else None,
        distance=neighbours,
    )
    metrics["chosen_tpr"] = detector.tpr
    metrics["chosen_ood_flagged"] = float(np.mean(ood_scores[score] > threshold))
    metrics["chosen_threshold"] = threshold
    return detector, metrics
