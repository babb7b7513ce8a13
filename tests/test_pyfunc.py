"""The pyfunc scorer that registered versions are loaded with, on a tiny saved model."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from hvae import artifacts
from hvae.errors import DataError
from hvae.model import build_model
from hvae.pyfunc import HVAEScorer, _load_pyfunc


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory) -> HVAEScorer:
    folder: Path = tmp_path_factory.mktemp("model")
    keras.utils.set_random_seed(0)
    model = build_model({"latent_dims": [4, 3], "hidden_dim": 16})
    model.save_weights(folder / artifacts.WEIGHTS)
    artifacts.save_config(model, folder)
    return _load_pyfunc(str(folder))


def _frame(n: int) -> pd.DataFrame:
    pixels = np.random.default_rng(1).integers(0, 256, (n, 784)).astype(np.float64)
    return pd.DataFrame(pixels, columns=[f"p{i}" for i in range(784)])


def test_scores_per_image(scorer: HVAEScorer) -> None:
    scores = scorer.predict(_frame(3), {"iw_samples": 20})
    assert list(scores.columns) == ["elbo", "iw_log_likelihood"]
    assert len(scores) == 3 and np.isfinite(scores.to_numpy()).all()
    # The IW estimate with k=20 is (almost surely) above the one-sample ELBO draw on average.
    assert scores["iw_log_likelihood"].mean() > scores["elbo"].mean() - 5.0


def test_same_rows_same_numbers(scorer: HVAEScorer) -> None:
    frame = _frame(4)
    first = scorer.predict(frame, {"iw_samples": 10})
    scorer.predict(_frame(7), {"iw_samples": 30})  # whatever ran in between
    again = scorer.predict(frame, {"iw_samples": 10})
    pd.testing.assert_frame_equal(first, again)
    from_array = scorer.predict(frame.to_numpy(), {"iw_samples": 10})
    pd.testing.assert_frame_equal(first, from_array)


def test_wrong_number_of_columns(scorer: HVAEScorer) -> None:
    with pytest.raises(ValueError, match="expected 784 pixel columns"):
        scorer.predict(np.zeros((2, 100)))


def test_non_finite_pixels(scorer: HVAEScorer) -> None:
    frame = _frame(3)
    frame.iloc[2, 10] = np.nan
    with pytest.raises(ValueError, match="row 2 has NaN or inf"):
        scorer.predict(frame)


@pytest.mark.parametrize("bad", [-1.0, 255.5, 1e6])
def test_pixels_outside_0_255(scorer: HVAEScorer, bad: float) -> None:
    frame = _frame(2)
    frame.iloc[1, 5] = bad
    with pytest.raises(ValueError, match=r"grey levels in \[0, 255\]"):
        scorer.predict(frame)


def test_versions_saved_before_the_skip_state_still_load(tmp_path: Path) -> None:
    """hvae-mnist versions 1-8 hold weights without `skipped_last`; the model and the scorer
    load them with every other weight intact."""
    import h5py

    keras.utils.set_random_seed(0)
    model = build_model({"latent_dims": [4, 3], "hidden_dim": 16})
    model.initial_state.assign(np.arange(16, dtype="float32"))
    model.save_weights(tmp_path / artifacts.WEIGHTS)
    artifacts.save_config(model, tmp_path)
    with h5py.File(tmp_path / artifacts.WEIGHTS, "r+") as f:
        del f["vars/1"]  # the layout before the model had its skip state
    for loaded in (artifacts.load_model(tmp_path), _load_pyfunc(str(tmp_path)).model):
        for a, b in zip(model.weights, loaded.weights, strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    with h5py.File(tmp_path / artifacts.WEIGHTS, "r+") as f:
        del f["vars/0"]  # no initial_state either: not a file this model ever wrote
    with pytest.raises(DataError, match="cannot load weights"):
        artifacts.load_model(tmp_path)
