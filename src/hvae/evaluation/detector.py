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

LIKELIHOOD, TYPICALITY, TYPICALITY_RECON = "likelihood", "typicality", "typicality_recon"
TYPICALITIES = (TYPICALITY, TYPICALITY_RECON)
_RATIO = re.compile(r"(llr|recon)_k([1-9][0-9]*)")
# Keeps a near-singular covariance (the statistics are strongly correlated) invertible.
RIDGE = 1e-6


def score_names(n_layers: int) -> list[str]:
    return [
        LIKELIHOOD,
        *(f"llr_k{j}" for j in range(1, n_layers)),
        *(f"recon_k{j}" for j in range(1, n_layers)),
        *TYPICALITIES,
    ]


def score_label(score: str) -> str:
    """How tables and figures name a score: likelihood, LLR>j, recon>j, typicality."""
    match = _RATIO.fullmatch(score)
    if match is None:
        return score
    return f"{'LLR' if match.group(1) == 'llr' else 'recon'}>{match.group(2)}"


def columns_needed(score: str, n_layers: int) -> list[int]:
    """The statistics columns `score` reads: j < L the bound L>j (0 = L itself), L + j the
    reconstruction term R_j."""
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
        raise ValueError(f"OOD score {score!r}: expected one of {', '.join(score_names(n_layers))}")
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


def scores(
    statistics: np.ndarray, typicality: dict[str, Typicality] | None = None
) -> dict[str, np.ndarray]:
    """Every candidate score of the images whose (n, 2L) statistics are given (the
    typicality scores only with their fits, keyed by score name)."""
    statistics = np.asarray(statistics, np.float64)
    n_layers = statistics.shape[1] // 2
    bound, recon = statistics[:, :n_layers], statistics[:, n_layers:]
    out = {LIKELIHOOD: -bound[:, 0]}
    out.update({f"llr_k{j}": bound[:, 0] - bound[:, j] for j in range(1, n_layers)})
    out.update({f"recon_k{j}": recon[:, 0] - recon[:, j] for j in range(1, n_layers)})
    for name, fit in (typicality or {}).items():
        out[name] = fit(statistics[:, columns_needed(name, n_layers)])
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

    def __post_init__(self) -> None:
        columns_needed(self.score, self.n_layers)  # a known score for this depth

    @property
    def columns(self) -> list[int]:
        return columns_needed(self.score, self.n_layers)

    @property
    def cost(self) -> int:
        """Importance samples and draws one image's score takes (decoder passes per image)."""
        return sum(self.samples if j < self.n_layers else self.draws for j in self.columns)

    def __call__(self, statistics: np.ndarray) -> np.ndarray:
        """The score of images whose (n, 2L) statistics are given (only `columns` are read)."""
        statistics = np.asarray(statistics, np.float64)
        if self.score in TYPICALITIES:
            return self.typicality[self.score](statistics[:, self.columns])
        return scores(statistics)[self.score]

    def to_dict(self) -> dict:
        return {
            "score": self.score,
            "samples": self.samples,
            "draws": self.draws,
            "threshold": self.threshold,
            "tpr": self.tpr,
            "n_layers": self.n_layers,
            "typicality": {
                name: {
                    "center": t.center.tolist(),
                    "scale": t.scale.tolist(),
                    "precision": t.precision.tolist(),
                }
                for name, t in self.typicality.items()
            },
        }

    @classmethod
    def from_dict(cls, data: dict) -> Detector:
        """Raises KeyError, TypeError or ValueError on a damaged file (artifacts names it)."""
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
        return cls(str(data["score"]), samples, draws, threshold, float(data["tpr"]), n, fits)


def calibrate(
    fit_statistics: np.ndarray,
    in_statistics: np.ndarray,
    ood_statistics: np.ndarray,
    samples: int,
    draws: int,
    tpr: float,
    score: str = "auto",
) -> tuple[Detector, dict[str, float]]:
    """The detector and the validation metrics of every candidate score.

    `fit_statistics` (training images, (n, 2L)) fit the typicality statistics;
    `in_statistics` and `ood_statistics` (validation images) choose the score when `score`
    is "auto" and set the threshold. The metrics are `<score>_auroc`/`_auprc`/`_fpr80` for
    every candidate and the chosen one's threshold and its validation rates at that threshold.
    """
    n_layers = np.shape(fit_statistics)[1] // 2
    typicality = fit_typicalities(fit_statistics)
    in_scores = scores(in_statistics, typicality)
    ood_scores = scores(ood_statistics, typicality)
    metrics: dict[str, float] = {}
    for name in in_scores:
        metrics.update(
            {f"{name}_{m}": v for m, v in ood.summary(in_scores[name], ood_scores[name]).items()}
        )
    if score == "auto":
        # Ties go to the earlier, simpler score in score_names order.
        score = max(score_names(n_layers), key=lambda s: metrics[f"{s}_auroc"])
    else:
        columns_needed(score, n_layers)
    threshold = float(np.quantile(in_scores[score], tpr, method="higher"))
    detector = Detector(
        score,
        samples,
        draws,
        threshold,
        float(np.mean(in_scores[score] <= threshold)),
        n_layers,
        typicality,
    )
    metrics["chosen_tpr"] = detector.tpr
    metrics["chosen_ood_flagged"] = float(np.mean(ood_scores[score] > threshold))
    metrics["chosen_threshold"] = threshold
    return detector, metrics
