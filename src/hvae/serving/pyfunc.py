"""MLflow pyfunc flavour: load a registered version with the installed package, no pickles.

The logged artifact holds only the weights (HDF5) and the architecture (JSON); MLflow
imports this module by name and calls `_load_pyfunc`.

A request is bounded and its scores are a pure function of (row, iw_samples, weights):

- `iw_samples` (param, default 100) must be an integer from 1 to MAX_IW_SAMPLES = 1000;
  bools, floats (even 2.0) and strings are refused.
- A request holds at most MAX_ROWS = 10 000 rows of 784 grey levels (finite, 0-255), and
  rows * iw_samples is at most MAX_ROW_SAMPLES = 200 000 (e.g. 2000 rows at k = 100,
  200 at k = 1000), which bounds the time one request takes.
- Rows are scored BATCH_ROWS = 20 at a time, the last batch padded to that size, so peak
  memory does not grow with the rows of a request and every row is computed in the same
  shapes.
- Each row's standard-normal draws come from its own NumPy generator seeded by a digest of
  its binarized pixels: the ELBO uses the first draw, the IW estimate the next iw_samples.
  A row's scores do not depend on its batch-mates, on the call order or on other threads,
  and the scorer holds no mutable state (the model's own sampler is not used).

With semisup's classifier in the model (hvae.evaluation.label_spreading), each row also
gets `class` (0-9) and `class_probability`, from the features the classifier was fitted on
(its encoder feature or its posterior means, semisup.features); a version logged
without one answers class -1 and probability NaN, and its metadata says `classifier: none`.

With calibrate's detector in the model (hvae.evaluation.detector), each row also gets
`ood_score` (higher = more anomalous) and `is_ood` (1 above the calibrated threshold, else
0), from the statistics its score reads (bounds at its sample count, reconstruction terms at
its draw count), each with noise from its own per-row stream (independent of the scores' and
of each other, as in calibrate, whose statistics and threshold assume independent
estimates); the neighbour distance from the encoder's features of the row and of the
detector's reference images (fitted once, at load). Without a detector they are NaN and -1,
and the metadata says `ood_detector: none`. Its samples and draws (or, for the neighbour
distance, the importance samples its search costs as much as) count in the request budget:
rows * (iw_samples + the detector's cost per row).

Bad input raises RequestError (a ValueError, and an MlflowException so the scoring server
answers 400 with its message): one line naming the field, its value and the allowed range.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

PIXELS = 784
DEFAULT_IW_SAMPLES = 100
# The evaluation's own k (params.yaml evaluate.iw_samples): a client can reproduce the
# published estimate. Measured on 2 shared cores with the params.yaml architecture, one row
# costs ~0.13 ms per importance sample, ~0.13 s at k = 1000.
MAX_IW_SAMPLES = 1000
MAX_ROWS = 10_000
# rows * iw_samples: ~26 s of compute at that rate, under the scoring server's 60 s timeout
# (MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT), whose 504 does not stop the worker thread.
MAX_ROW_SAMPLES = 200_000
# Rows per pass, the last batch padded: a pass decodes BATCH_ROWS * IW_CHUNK rows, which
# keeps the matmuls efficient, and padding a lone row costs 20 rows, not 100.
BATCH_ROWS = 20
IW_CHUNK = 100
# Reference images per encoder pass when a version loads.
REFERENCE_BATCH = 500

# What a client may ask, for the logged model's metadata (ParamSpec has no range).
LIMITS = {
    "iw_samples": {"min": 1, "max": MAX_IW_SAMPLES, "default": DEFAULT_IW_SAMPLES},
    "max_rows": MAX_ROWS,
    "max_rows_times_iw_samples": MAX_ROW_SAMPLES,
    "batch_rows": BATCH_ROWS,
}


class RequestError(ValueError, MlflowException):
    """A request the scorer refuses, with a one-line message that never echoes the payload."""

    def __init__(self, message: str):
        MlflowException.__init__(self, message, error_code=INVALID_PARAMETER_VALUE)


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_iw_samples(value: object) -> int:
    """`iw_samples` as an int in [1, MAX_IW_SAMPLES]; None means the default."""
    if value is None:
        return DEFAULT_IW_SAMPLES
    expected = f"iw_samples: expected an integer from 1 to {MAX_IW_SAMPLES}"
    # bool is an int subclass, and a float is refused even when whole: no silent rounding.
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise RequestError(f"{expected}, got {_short(value)} ({type(value).__name__})")
    if not 1 <= value <= MAX_IW_SAMPLES:
        raise RequestError(f"{expected}, got {_short(int(value))}")
    return int(value)


def check_pixels(model_input) -> np.ndarray:
    """The request as a (rows, PIXELS) float32 array of grey levels, or RequestError."""
    raw = model_input.to_numpy() if isinstance(model_input, pd.DataFrame) else model_input
    try:
        shape = np.shape(raw)
    except ValueError:  # ragged nested lists
        raise RequestError(f"pixels: expected rows of {PIXELS} numbers, got ragged rows") from None
    if len(shape) != 2 or shape[1] != PIXELS:
        raise RequestError(f"pixels: expected {PIXELS} pixel columns, got shape {shape}")
    if shape[0] > MAX_ROWS:
        raise RequestError(f"rows: expected at most {MAX_ROWS} rows per request, got {shape[0]}")
    try:
        pixels = np.asarray(raw, dtype=np.float32)
    except (TypeError, ValueError):
        raise RequestError("pixels: expected numbers (grey levels 0-255)") from None
    if not np.isfinite(pixels).all():
        row = int(np.argwhere(~np.isfinite(pixels))[0][0])
        raise RequestError(f"pixels must be finite grey levels 0-255; row {row} has NaN or inf")
    if pixels.size and (pixels.min() < 0 or pixels.max() > 255):
        raise RequestError(
            f"pixels must be grey levels in [0, 255]; got values from {pixels.min():g} "
            f"to {pixels.max():g}"
        )
    return pixels


def row_noise(binary: np.ndarray, draws: int, dims: int, stream: bytes = b"hvae.eps") -> np.ndarray:
    """(draws, dims) standard normals for one binarized row, a function of that row alone
    (and of `stream`: the scores' and the OOD score's draws are independent).

    Draw j is the same whatever `draws` is, so k samples are a prefix of k + 1 samples.
    """
    digest = hashlib.blake2b(np.packbits(binary).tobytes(), digest_size=16, person=stream)
    rng = np.random.default_rng(int.from_bytes(digest.digest(), "little"))
    return rng.standard_normal((draws, dims), dtype=np.float32)


def ood_stream(column: int) -> bytes:
    """The noise stream of the OOD statistic in `column` (hvae.evaluation.detector: the bound
    L>j for j < L, 0 being L itself; the reconstruction term R_{j-L} above)."""
    return b"hvae.ood%d" % column


class HVAEScorer:
    """Per-image scores: ELBO and importance-weighted log-likelihood (higher = more typical)."""

    def __init__(self, model_dir: str | Path):
        import tensorflow as tf

        from hvae.artifacts import load_model
        from hvae.evaluation.anomaly import encoder_features, reconstruction_term, with_neighbours
        from hvae.evaluation.detector import NEIGHBOURS
        from hvae.evaluation.representations import feature_fn
        from hvae.extras import load_classifier, load_detector

        self.model = load_model(Path(model_dir))
        self.classifier = load_classifier(Path(model_dir))
        self.detector = load_detector(Path(model_dir))
        self._neighbours = self.detector is not None and self.detector.score == NEIGHBOURS
        if self._neighbours:
            # The neighbour distance: its reference's features, once.
            self.detector = with_neighbours(self.model, self.detector, REFERENCE_BATCH)
        self._encoder_features = encoder_features
        # Importance samples and draws one row's OOD score costs.
        self.ood_cost = 0 if self.detector is None else self.detector.cost
        self._reconstruction_term = reconstruction_term
        self._dims = list(self.model.latent_dims)
        if self.classifier is not None:
            # The features semisup fitted the classifier on (hvae.evaluation.representations).
            self._features = tf.function(
                feature_fn(self.model, self.classifier.features), reduce_retracing=True
            )

        def elbo(x: tf.Tensor, eps: list[tf.Tensor]) -> tf.Tensor:
            recon, kls = self.model.elbo_terms(x, eps=eps)
            return -(recon + tf.add_n(kls))

        self._elbo = tf.function(elbo, reduce_retracing=True)

    def predict(self, model_input, params: dict | None = None) -> pd.DataFrame:
        pixels = check_pixels(model_input)
        k = check_iw_samples((params or {}).get("iw_samples"))
        if len(pixels) * (k + self.ood_cost) > MAX_ROW_SAMPLES:
            total = (
                f"{len(pixels)} * ({k} + {self.ood_cost})"
                if self.ood_cost
                else (f"{len(pixels)} * {k}")
            )
            raise RequestError(
                f"rows * iw_samples{' (+ the OOD score)' if self.ood_cost else ''}: expected "
                f"at most {MAX_ROW_SAMPLES}, got {total} = {len(pixels) * (k + self.ood_cost)}"
            )
        # Grey levels 0-255 are thresholded at half intensity: a deterministic binarization.
        binary = pixels > 127.5
        elbo = np.zeros(len(binary), np.float32)
        iw = np.zeros(len(binary), np.float32)
        label = np.full(len(binary), -1, np.int64)
        probability = np.full(len(binary), np.nan, np.float32)
        ood_score = np.full(len(binary), np.nan, np.float32)
        is_ood = np.full(len(binary), -1, np.int64)
        for start in range(0, len(binary), BATCH_ROWS):
            stop = start + BATCH_ROWS
            x = np.zeros((BATCH_ROWS, PIXELS), np.float32)
            x[: min(stop, len(binary)) - start] = binary[start:stop]
            rows = binary[start:stop]
            elbo[start:stop], iw[start:stop] = self._score_batch(x, rows, k)
            if self.classifier is not None:
                label[start:stop], probability[start:stop] = self._classify(x, len(rows))
            if self.detector is not None:
                ood_score[start:stop] = self._ood_score(x, rows)
        if self.detector is not None:
            is_ood = (ood_score > self.detector.threshold).astype(np.int64)
        return pd.DataFrame(
            {
                "elbo": elbo,
                "iw_log_likelihood": iw,
                "class": label,
                "class_probability": probability,
                "ood_score": ood_score,
                "is_ood": is_ood,
            }
        )

    def _classify(self, x: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """The classifier's most probable class and its probability for the first `rows`
        rows of a padded batch."""
        features = self._features(x).numpy()[:rows]
        probabilities = self.classifier.predict_proba(features)
        return probabilities.argmax(axis=1), probabilities.max(axis=1).astype(np.float32)

    def _noise(self, binary: np.ndarray, draws: int, stream: bytes) -> list[np.ndarray]:
        """One (draws, BATCH_ROWS, dim) array per layer; padding rows keep zero noise."""
        noise = [np.zeros((draws, BATCH_ROWS, d), np.float32) for d in self._dims]
        edges = np.cumsum([0, *self._dims])
        for r in range(len(binary)):
            row = row_noise(binary[r], draws, int(edges[-1]), stream)
            for layer, (lo, hi) in enumerate(itertools.pairwise(edges)):
                noise[layer][:, r] = row[:, lo:hi]
        return noise

    def _ood_score(self, x: np.ndarray, binary: np.ndarray) -> np.ndarray:
        """The detector's score of the padded batch's first len(binary) rows: every statistic
        it reads, each from its own noise stream. Shared noise would correlate the
        statistics' Monte Carlo errors, and the detector was calibrated on independent ones."""
        import tensorflow as tf

        detector, n_layers = self.detector, self.model.n_layers
        statistics = np.full((BATCH_ROWS, 2 * n_layers), np.nan)
        if self._neighbours:
            # The whole padded batch, so every row is searched in the same shapes.
            features = self._encoder_features(self.model, x, BATCH_ROWS)
            return detector(statistics, features)[: len(binary)]
        x = tf.constant(x)
        for column in detector.columns:
            if column < n_layers:
                draws, j = detector.samples, column
            else:
                draws, j = detector.draws, column - n_layers
            eps = [tf.constant(n) for n in self._noise(binary, draws, ood_stream(column))]
            if column < n_layers:
                chunk = min(draws, IW_CHUNK)
                value = self.model.iw_log_likelihood(x, draws, chunk, j, eps=eps)
            else:
                value = self._reconstruction_term(self.model, x, draws, j, eps=eps)
            statistics[:, column] = value.numpy()
        return detector(statistics[: len(binary)])

    def _score_batch(
        self, x: np.ndarray, binary: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """ELBO and IW estimate of the padded batch's first len(binary) rows."""
        import tensorflow as tf

        rows = len(binary)
        noise = self._noise(binary, 1 + k, b"hvae.eps")
        x = tf.constant(x)
        elbo = self._elbo(x, [tf.constant(n[0]) for n in noise])
        iw_eps = [tf.constant(n[1:]) for n in noise]
        iw = self.model.iw_log_likelihood(x, k, chunk=min(k, IW_CHUNK), eps=iw_eps)
        return elbo.numpy()[:rows], iw.numpy()[:rows]


def _load_pyfunc(data_path: str) -> HVAEScorer:
    return HVAEScorer(data_path)
