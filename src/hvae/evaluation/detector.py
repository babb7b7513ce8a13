"""The served OOD detector: one score, chosen and thresholded on validation data only.

Every candidate score is a function of an image's L bounds (hvae.evaluation.anomaly):
column 0 is the importance-weighted L(x), column j the bound L>j in which the j lowest
layers are drawn from their conditional prior. Higher means "more anomalous".

- `likelihood`: -L(x).
- `llr_k<j>`: L(x) - L>j(x) (Havtorn et al. 2021).
- `typicality`: the squared Mahalanobis distance of the whole bound vector from the training
  images' bound vectors (a Gaussian density of states, after Morningstar et al. 2021). It is
  two-sided: an image the model finds *more* likely than its training data (MNIST under a
  Fashion-MNIST model) is as atypical as one it finds less likely, and so is an image whose
  lowest layers add less than a training image's do (Fashion-MNIST under an MNIST model,
  where LLR>k ranks OOD images *below* digits). It is invariant to any invertible linear
  map of the bounds, so it holds every LLR>k and the likelihood at once.

`calibrate` picks the score by validation AUROC (in-distribution validation images against
the other dataset's training images) unless one is named, and sets the threshold at the
in-distribution validation quantile `tpr`: a fraction `tpr` of typical images is accepted.
Pure NumPy, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from hvae.evaluation import ood

LIKELIHOOD, TYPICALITY = "likelihood", "typicality"
_LLR = re.compile(r"llr_k([1-9][0-9]*)")
# Keeps a near-singular covariance (the bounds are strongly correlated) invertible.
RIDGE = 1e-6


def score_names(n_layers: int) -> list[str]:
    return [LIKELIHOOD, *(f"llr_k{j}" for j in range(1, n_layers)), TYPICALITY]


def score_label(score: str) -> str:
    """How tables and figures name a score: likelihood, LLR>j, typicality."""
    return f"LLR>{score.removeprefix('llr_k')}" if score.startswith("llr_k") else score


def bounds_needed(score: str, n_layers: int) -> list[int]:
    """The prior_layers values (0 = L itself) whose bounds `score` reads."""
    if score == LIKELIHOOD:
        return [0]
    if score == TYPICALITY:
        return list(range(n_layers))
    j = _llr_layer(score, n_layers)
    return [0, j]


def _llr_layer(score: str, n_layers: int) -> int:
    match = _LLR.fullmatch(score)
    if match is None or not 1 <= int(match.group(1)) < n_layers:
        raise ValueError(f"OOD score {score!r}: expected one of {', '.join(score_names(n_layers))}")
    return int(match.group(1))


@dataclass(frozen=True)
class Typicality:
    """Mean and precision of the standardized bound vectors of in-distribution images."""

    center: np.ndarray  # (L,)
    scale: np.ndarray  # (L,)
    precision: np.ndarray  # (L, L), of the standardized vectors

    @classmethod
    def fit(cls, bounds: np.ndarray) -> Typicality:
        bounds = np.asarray(bounds, np.float64)
        if bounds.ndim != 2 or len(bounds) < bounds.shape[1] + 2:
            raise ValueError(
                f"typicality: need more images than bounds to fit, got shape {bounds.shape}"
            )
        center = bounds.mean(0)
        scale = bounds.std(0)
        scale = np.where(scale > 0, scale, 1.0)
        z = (bounds - center) / scale
        covariance = np.atleast_2d(np.cov(z, rowvar=False)) + RIDGE * np.eye(z.shape[1])
        return cls(center, scale, np.linalg.inv(covariance))

    def __call__(self, bounds: np.ndarray) -> np.ndarray:
        z = (np.asarray(bounds, np.float64) - self.center) / self.scale
        return np.einsum("ij,jk,ik->i", z, self.precision, z)


def scores(bounds: np.ndarray, typicality: Typicality | None = None) -> dict[str, np.ndarray]:
    """Every candidate score of the images whose (n, L) bounds are given."""
    bounds = np.asarray(bounds, np.float64)
    out = {LIKELIHOOD: -bounds[:, 0]}
    out.update({f"llr_k{j}": bounds[:, 0] - bounds[:, j] for j in range(1, bounds.shape[1])})
    if typicality is not None:
        out[TYPICALITY] = typicality(bounds)
    return out


@dataclass(frozen=True)
class Detector:
    """A score, the samples per bound it was calibrated at, and its threshold."""

    score: str
    samples: int
    threshold: float
    tpr: float  # the in-distribution validation fraction at or below the threshold
    n_layers: int
    # Kept whatever the score, so that ood reports typicality beside the served score.
    typicality: Typicality

    def __post_init__(self) -> None:
        bounds_needed(self.score, self.n_layers)  # a known score for this depth

    @property
    def layers(self) -> list[int]:
        return bounds_needed(self.score, self.n_layers)

    def __call__(self, bounds: np.ndarray) -> np.ndarray:
        """The score of images whose (n, L) bounds are given (only `layers` are read)."""
        if self.score == TYPICALITY:
            return self.typicality(bounds)
        return scores(bounds)[self.score]

    def to_dict(self) -> dict:
        t = self.typicality
        return {
            "score": self.score,
            "samples": self.samples,
            "threshold": self.threshold,
            "tpr": self.tpr,
            "n_layers": self.n_layers,
            "typicality": {
                "center": t.center.tolist(),
                "scale": t.scale.tolist(),
                "precision": t.precision.tolist(),
            },
        }

    @classmethod
    def from_dict(cls, data: dict) -> Detector:
        """Raises KeyError, TypeError or ValueError on a damaged file (artifacts names it)."""
        t = data["typicality"]
        n = int(data["n_layers"])
        center, scale = np.asarray(t["center"], float), np.asarray(t["scale"], float)
        precision = np.asarray(t["precision"], float)
        if center.shape != (n,) or scale.shape != (n,) or precision.shape != (n, n):
            raise ValueError(f"typicality statistics do not match n_layers {n}")
        if not all(np.isfinite(a).all() for a in (center, scale, precision)):
            raise ValueError("typicality statistics must be finite")
        typicality = Typicality(center, scale, precision)
        threshold = float(data["threshold"])
        samples = int(data["samples"])
        if not np.isfinite(threshold) or samples < 1:
            raise ValueError(f"threshold {threshold} or samples {samples} out of range")
        return cls(
            str(data["score"]),
            samples,
            threshold,
            float(data["tpr"]),
            n,
            typicality,
        )


def calibrate(
    fit_bounds: np.ndarray,
    in_bounds: np.ndarray,
    ood_bounds: np.ndarray,
    samples: int,
    tpr: float,
    score: str = "auto",
) -> tuple[Detector, dict[str, float]]:
    """The detector and the validation metrics of every candidate score.

    `fit_bounds` (training images) fit the typicality statistics; `in_bounds` and
    `ood_bounds` (validation images) choose the score when `score` is "auto" and set the
    threshold. The metrics are `<score>_auroc`/`_auprc`/`_fpr80` for every candidate and the
    chosen one's threshold and its validation rates at that threshold.
    """
    n_layers = fit_bounds.shape[1]
    typicality = Typicality.fit(fit_bounds)
    in_scores, ood_scores = scores(in_bounds, typicality), scores(ood_bounds, typicality)
    metrics: dict[str, float] = {}
    for name in in_scores:
        metrics.update(
            {f"{name}_{m}": v for m, v in ood.summary(in_scores[name], ood_scores[name]).items()}
        )
    if score == "auto":
        # Ties go to the earlier, simpler score in score_names order.
        score = max(score_names(n_layers), key=lambda s: metrics[f"{s}_auroc"])
    else:
        bounds_needed(score, n_layers)
    threshold = float(np.quantile(in_scores[score], tpr, method="higher"))
    detector = Detector(
        score,
        samples,
        threshold,
        float(np.mean(in_scores[score] <= threshold)),
        n_layers,
        typicality,
    )
    metrics["chosen_tpr"] = detector.tpr
    metrics["chosen_ood_flagged"] = float(np.mean(ood_scores[score] > threshold))
    metrics["chosen_threshold"] = threshold
    return detector, metrics
