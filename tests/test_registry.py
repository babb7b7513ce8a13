"""Registering a trained model as a pyfunc version, then loading it back through MLflow."""

from __future__ import annotations

from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from hvae import artifacts
from hvae.model import build_model
from hvae.tracking import registry


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
    logged = registry.log_model("m", run.info.run_id, folder, example)
    registry.link_metrics(run.info.run_id, logged, {"test/nll": 90.0, "ood/llr_k1_auroc": 0.8})
    first = registry.register("m", logged, {"test_nll": "90.0", "probe_z1_n100": "0.5"})
    # evaluate again on the same run: the same version, its tags replaced as a whole
    again_logged = registry.log_model("m", run.info.run_id, folder, example)
    again = registry.register("m", again_logged, {"test_nll": "89.0"})
    registry.describe("m", again, "# m version 1\n\nA card.")
    yield SimpleRegistered(first, again, run.info.run_id, logged, again_logged)
    mlflow.set_tracking_uri(None)


class SimpleRegistered:
    def __init__(self, first: str, again: str, run_id: str, logged, again_logged):
        self.first, self.again, self.run_id = first, again, run_id
        self.logged, self.again_logged = logged, again_logged


def test_one_version_per_run_with_updated_tags(registered) -> None:
    assert registered.first == registered.again == "1"
    version = MlflowClient().get_model_version("m", "1")
    assert version.tags["test_nll"] == "89.0" and version.run_id == registered.run_id
    assert "probe_z1_n100" not in version.tags
    assert registered.again_logged.model_id == registered.logged.model_id
    assert version.description.startswith("# m version 1")


def test_the_logged_model_is_named_and_holds_the_metrics(registered) -> None:
    model = MlflowClient().get_logged_model(registered.logged.model_id)
    assert model.name == "m"
    assert {m.key: m.value for m in model.metrics} == {"test/nll": 90.0, "ood/llr_k1_auroc": 0.8}
    run = MlflowClient().get_run(registered.run_id)
    assert run.data.metrics["test/nll"] == 90.0  # and on the run, as before


def test_the_version_has_a_signature_and_an_input_example(registered) -> None:
    info = mlflow.models.get_model_info("models:/m/1")
    assert info.signature is not None and len(info.signature.inputs.inputs) == 784
    outputs = [c.name for c in info.signature.outputs.inputs]
    assert outputs == [
        "elbo",
        "iw_log_likelihood",
        "class",
        "class_probability",
        "ood_score",
        "is_ood",
    ]
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
    assert "loader_module: hvae.serving.pyfunc" in (local / "MLmodel").read_text()


def test_the_artifact_carries_its_code_and_pinned_requirements(registered) -> None:
    import importlib.metadata

    local = Path(mlflow.artifacts.download_artifacts("models:/m/1"))
    assert (local / "code/hvae/serving/pyfunc.py").is_file() and (
        local / "code/hvae/model"
    ).is_dir()
    assert not list(local.rglob("__pycache__"))
    pins = dict(
        line.split("==") for line in (local / "requirements.txt").read_text().split() if line
    )
    for package in ("mlflow", "tensorflow", "keras", "numpy", "pandas", "h5py"):
        assert pins[package] == importlib.metadata.version(package), package


def test_mlflow_keys_name_each_metric_by_its_stage() -> None:
    assert registry.mlflow_keys(
        {"test_nll": 1, "active_units_z1": 2, "ood_llr_k1_auroc": 3, "probe_z1_n100": 4}
    ) == {"test/nll": 1, "test/active_units_z1": 2, "ood/llr_k1_auroc": 3, "probe/z1_n100": 4}


def test_later_stages_complete_the_version_and_survive_a_re_evaluation(
    registered, tmp_path: Path
) -> None:
    """ood and probe set their own tags, which a re-evaluation keeps; the card collects every
    stage's metrics file."""
    import json

    from hvae.config import load_params
    from hvae.tracking import card

    assert registry.logged_model_of_run("m", registered.run_id).version == "1"
    assert registry.logged_model_of_run("m", "no-such-run") is None
    registry.replace_tags("m", "1", {"ood_likelihood_auroc": "0.9000", "ood_llr_samples": "4"})
    registry.replace_tags("m", "1", {"probe_all_n10": "0.5"}, stale_prefix="probe_all_n")
    # A new label budget: the old one's tag goes.
    registry.replace_tags("m", "1", {"probe_all_n20": "0.6"}, stale_prefix="probe_all_n")
    registry.register("m", registered.again_logged, {"test_nll": "88.0"})  # evaluate again
    tags = MlflowClient().get_model_version("m", "1").tags
    assert tags["ood_llr_samples"] == "4" and tags["ood_likelihood_auroc"] == "0.9000"
    assert tags["probe_all_n20"] == "0.6" and "probe_all_n10" not in tags
    assert tags["test_nll"] == "88.0"

    test = {"test_nll": 88.0, "test_elbo": -92.0, "test_recon": 70.0, "test_kl": 22.0}
    test |= {"test_kl_z1": 15.0, "test_kl_z2": 7.0, "active_units_z1": 4, "active_units_z2": 3}
    test |= {"iw_samples": 10, "test_images": 3}
    ood = {"ood_test_nll": 300.0, "ood_likelihood_auroc": 0.987, "ood_likelihood_auprc": 0.9}
    ood |= {"ood_likelihood_fpr80": 0.01, "ood_llr_samples": 5}
    for name, values in (("metrics.json", test), ("ood.json", ood)):
        (tmp_path / name).write_text(json.dumps(values))
        with mlflow.start_run(run_id=registered.run_id):
            mlflow.log_artifact(str(tmp_path / name))
    assert card.run_metrics(registered.run_id) == {**test, **ood}

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    model = build_model({"latent_dims": [4, 3], "hidden_dim": 16})
    version, text = card.publish("m", registered.run_id, model, params)
    assert version == "1" and MlflowClient().get_model_version("m", "1").description == text
    assert "**88.00 nats**" in text and "| likelihood | 0.987 |" in text
    assert "## Linear probes" not in text  # probe has not run: no empty section
    assert card.publish("m", "no-such-run", model, params) is None
