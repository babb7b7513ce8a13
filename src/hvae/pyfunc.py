"""MLflow pyfunc flavour: load a registered version with the installed package, no pickles.

The logged artifact holds only the weights (HDF5) and the architecture (JSON); MLflow
imports this module by name and calls `_load_pyfunc`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

PIXELS = 784
DEFAULT_IW_SAMPLES = 100


class HVAEScorer:
    """Per-image scores: ELBO and importance-weighted log-likelihood (higher = more typical)."""

    def __init__(self, model_dir: str | Path):
        from hvae.artifacts import load_model

        self.model = load_model(Path(model_dir))
        # Scores are Monte Carlo estimates. Restarting the sampler at every call makes them
        # a function of the input alone: the same rows give the same numbers in-process,
        # behind `mlflow models serve`, today and after a restart.
        self._noise_start = self.model.noise.state.numpy()

    def predict(self, model_input, params: dict | None = None) -> pd.DataFrame:
        import tensorflow as tf

        pixels = np.asarray(
            model_input.to_numpy() if isinstance(model_input, pd.DataFrame) else model_input,
            dtype=np.float32,
        )
        if pixels.ndim != 2 or pixels.shape[1] != PIXELS:
            raise ValueError(f"expected {PIXELS} pixel columns, got shape {pixels.shape}")
        if not np.isfinite(pixels).all():
            row = int(np.argwhere(~np.isfinite(pixels))[0][0])
            raise ValueError(f"pixels must be finite grey levels 0-255; row {row} has NaN or inf")
        if pixels.size and (pixels.min() < 0 or pixels.max() > 255):
            raise ValueError(
                f"pixels must be grey levels in [0, 255]; got values from {pixels.min():g} "
                f"to {pixels.max():g}"
            )
        k = int((params or {}).get("iw_samples", DEFAULT_IW_SAMPLES))
        self.model.noise.state.assign(self._noise_start)
        # Grey levels 0-255 are thresholded at half intensity: a deterministic binarization.
        x = tf.constant((pixels > 127.5).astype(np.float32))
        recon, kls = self.model.elbo_terms(x)
        elbo = -(recon + tf.add_n(kls))
        iw = self.model.iw_log_likelihood(x, k, chunk=min(k, 100))
        return pd.DataFrame({"elbo": elbo.numpy(), "iw_log_likelihood": iw.numpy()})


def _load_pyfunc(data_path: str) -> HVAEScorer:
    return HVAEScorer(data_path)
