"""Registering a trained model as a pyfunc version, then loading it back through MLflow."""

from __future__ import annotations

from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from hvae import artifacts, registry
from hvae.model import build_model


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("registry")
    folder = root / "models"
    folder.mkdir()
    keras.utils.set_random_seed(0)
    model = build_model({"latent_dims": [4, 3], "hidden_dim": 16})
    model.save_weights(folder / artifacts.WEIGHTS)
    artifacts.save_config(model, folder)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = MlflowClient().create_experiment("e", artifact_location=(root / "a").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        pass
    example = (np.random.default_rng(0).random((3, 28, 28)) < 0.3).astype(np.uint8)
    first = registry.register("m", run.info.run_id, folder, example, {"test_nll": "90.0"})
    again = registry.register("m", run.info.run_id, folder, example, {"test_nll": "89.0"})
    yield SimpleRegistered(first, again, run.info.run_id)
    mlflow.set_tracking_uri(None)


class SimpleRegistered:
    def __init__(self, first: str, again: str, run_id: str):
        self.first, self.again, self.run_id = first, again, run_id


def test_one_version_per_run_with_updated_tags(registered) -> None:
    assert registered.first == registered.again == "1"
    version = MlflowClient().get_model_version("m", "1")
    assert version.tags["test_nll"] == "89.0" and version.run_id == registered.run_id


def test_the_version_has_a_signature_and_an_input_example(registered) -> None:
    info = mlflow.models.get_model_info("models:/m/1")
    assert info.signature is not None and len(info.signature.inputs.inputs) == 784
    assert [c.name for c in info.signature.outputs.inputs] == ["elbo", "iw_log_likelihood"]
    assert info.signature.params.params[0].name == "iw_samples"
    assert info.saved_input_example_info is not None


def test_any_numeric_pixels_in_any_container(registered) -> None:
    loaded = mlflow.pyfunc.load_model("models:/m/1")
    pixels = (np.random.default_rng(1).random((4, 784)) < 0.3).astype(np.uint8) * 255
    columns = [f"p{i}" for i in range(784)]
    results = [
        loaded.predict(pixels.astype(dtype), params={"iw_samples": 8})
        for dtype in (np.uint8, np.int64, np.float64)
    ]
    results.append(loaded.predict(pd.DataFrame(pixels, columns=columns), params={"iw_samples": 8}))
    for other in results[1:]:
        pd.testing.assert_frame_equal(results[0], other)
    with pytest.raises(Exception, match=r"784|missing"):
        loaded.predict(pixels[:, :700])


def test_the_artifact_holds_no_pickle(registered) -> None:
    local = Path(mlflow.artifacts.download_artifacts("models:/m/1"))
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))], files
    assert {"data/hvae/model.weights.h5", "data/hvae/model.json", "MLmodel"} <= files
    assert "loader_module: hvae.pyfunc" in (local / "MLmodel").read_text()
