"""Log the trained model as an MLflow model and register it as a version, once per run.

A version must load and serve outside this repository's environment: the logged model carries
the `hvae` package code (MLflow's `code_paths`) and requirements pinned to the versions that
trained it, so `mlflow models serve` with any env manager and `mlflow models
generate-dockerfile` rebuild it from the artifact alone.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature, infer_signature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import AnyType

from hvae import artifacts, extras
from hvae.serving.pyfunc import DEFAULT_IW_SAMPLES, LIMITS, HVAEScorer

# What `hvae.serving.pyfunc` imports to rebuild and run the model, and mlflow to load it.
SERVING_PACKAGES = ("mlflow", "tensorflow", "keras", "h5py", "numpy", "pandas")
# How the logged model's metadata names what its classifier reads (semisup.features).
_FEATURE_NAMES = {
    "encoder": "encoder's deepest feature",
    "posterior_means": "posterior means",
}


@dataclass(frozen=True)
class LoggedModel:
    """The run's logged model, and its registered version once there is one."""

    model_uri: str
    model_id: str | None
    version: str | None


def pinned_requirements() -> list[str]:
    """`package==version` for each serving package, as installed here (that trained it)."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in SERVING_PACKAGES]


def _package_code(folder: Path) -> Path:
    """A clean copy of the installed `hvae` package (no bytecode) to ship with the model."""
    import hvae

    target = folder / "hvae"
    shutil.copytree(
        Path(hvae.__file__).parent, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    return target


def _existing_version(client: MlflowClient, name: str, run_id: str):
    for version in client.search_model_versions(f"name = '{name}'"):
        if version.run_id == run_id:
            return version
    return None


def _signature(frame: pd.DataFrame, scores: pd.DataFrame) -> ModelSignature:
    # 784 unnamed columns of any type: a DataFrame with any column names or a plain array, of
    # uint8, int64 or float grey levels. A (-1, 784) tensor spec or `double` columns would read
    # better, but MLflow 3.17 enforces them strictly: a tensor spec refuses any dtype but its
    # own, and `double` refuses int64 images ("Can not safely convert int64 to float64").
    # The scorer itself checks the count, finiteness and the 0-255 range.
    # A ParamSpec holds a name, type, default and shape but no range: the limits of
    # iw_samples and of a request's rows go into the logged model's metadata (`LIMITS`).
    return ModelSignature(
        inputs=Schema([ColSpec(AnyType())] * frame.shape[1]),
        outputs=infer_signature(frame, scores).outputs,
        params=ParamSchema([ParamSpec("iw_samples", "long", DEFAULT_IW_SAMPLES)]),
    )


def log_model(name: str, run_id: str, model_dir: Path, example: np.ndarray) -> LoggedModel:
    """Log the run's model under `name` (or find the one an earlier evaluate logged)."""
    client = MlflowClient()
    version = _existing_version(client, name, run_id)
    if version is not None:
        # MLflow 3 sources read models:/<model id>; older versions point at runs:/ paths.
        model_id = getattr(version, "model_id", None)
        if not model_id and version.source.startswith("models:/m-"):
            model_id = version.source.removeprefix("models:/")
        return LoggedModel(version.source, model_id, version.version)
    frame = pd.DataFrame(example.reshape(len(example), -1).astype(np.float64) * 255.0)
    frame.columns = [f"p{i}" for i in range(frame.shape[1])]
    scores = HVAEScorer(model_dir).predict(frame, {"iw_samples": 4})
    # Only the final weights and architecture go into the artifact, not the checkpoints.
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id):
        data = Path(tmp) / "data" / "hvae"
        data.mkdir(parents=True)
        for file in (artifacts.WEIGHTS, artifacts.CONFIG):
            shutil.copy2(model_dir / file, data / file)
        classifier = extras.load_classifier(model_dir)
        detector = extras.load_detector(model_dir)
        for extra in (extras.CLASSIFIER, extras.DETECTOR, extras.REFERENCE):
            if (model_dir / extra).exists():
                shutil.copy2(model_dir / extra, data / extra)
        info = mlflow.pyfunc.log_model(
            name=name,  # the logged model is listed under the registered model's name
            loader_module="hvae.serving.pyfunc",
            data_path=str(data),
            code_paths=[str(_package_code(Path(tmp) / "code"))],
            signature=_signature(frame, scores),
            input_example=frame,
            pip_requirements=pinned_requirements(),
            metadata={
                "serving_limits": LIMITS,
                # What answers predict's class column (hvae.serving.pyfunc).
                "classifier": f"label spreading on the {_FEATURE_NAMES[classifier.features]} "
                "(semisup)"
                if classifier is not None
                else "none",
                # What answers predict's ood_score and is_ood columns.
                "ood_detector": {k: v for k, v in detector.to_dict().items() if k != "typicality"}
                if detector is not None
                else "none",
            },
        )
    return LoggedModel(info.model_uri, info.model_id, None)


def mlflow_keys(metrics: Mapping[str, float]) -> dict[str, float]:
    """Metrics-file keys -> MLflow keys: test_nll -> test/nll, ood_llr_k1_auroc ->
    ood/llr_k1_auroc, probe_z1_n100 -> probe/z1_n100, active_units_z1 -> test/active_units_z1."""
    out = {}
    stages = ("calibrate", "ood", "probe", "semisup", "test")
    for name, value in metrics.items():
        prefix = next((p for p in stages if name.startswith(p + "_")), None)
        out[f"{prefix}/{name.removeprefix(prefix + '_')}" if prefix else f"test/{name}"] = value
    return out


def logged_model_of_run(name: str, run_id: str) -> LoggedModel | None:
    """The run's registered version of `name` and its logged model, or None before evaluate
    has registered it."""
    version = _existing_version(MlflowClient(), name, run_id)
    if version is None:
        return None
    model_id = getattr(version, "model_id", None)
    if not model_id and version.source.startswith("models:/m-"):
        model_id = version.source.removeprefix("models:/")
    return LoggedModel(version.source, model_id, str(version.version))


def link_metrics(run_id: str, logged: LoggedModel | None, metrics: Mapping[str, float]) -> None:
    """Log metrics on the run, linked to its logged model if there is one yet (the UI's
    Models view shows them)."""
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(dict(metrics), model_id=logged.model_id if logged else None)


def register(name: str, logged: LoggedModel, tags: Mapping[str, str]) -> str:
    """Register the logged model as a version of `name` (reusing the run's version if any).

    Evaluate's tags are replaced as a whole, so a re-evaluated version carries no stale ones;
    the alias history and the tags of the later stages (`LATER_STAGE_TAGS`) stay.
    """
    client = MlflowClient()
    version = logged.version or mlflow.register_model(logged.model_uri, name).version
    existing = client.get_model_version(name, version).tags
    for key in existing.keys() - tags.keys():
        if not key.startswith(("promotion.", "rollback.", *LATER_STAGE_TAGS, *PACKED_TAGS)):
            client.delete_model_version_tag(name, version, key)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return str(version)


# What the version was packed with (evaluate sets them when it logs the model): a version's
# files never change, so a re-evaluated version keeps these.
PACKED_TAGS = ("packed_digest", "ood_score", "ood_threshold", "ood_samples", "ood_draws")

# The tags (or tag prefixes) that the ood and probe stages set on a version. The first two
# are gate metrics (hvae.config.GATE_METRICS).
LATER_STAGE_TAGS = (
    "ood_test_nll",
    "ood_likelihood_auroc",
    "ood_llr_samples",
    "ood_recon_draws",
    "ood_served_auroc",
    "probe_all_n",
    "semisup_error_n",
)


def version_tag(name: str, version: str, key: str) -> str | None:
    return MlflowClient().get_model_version(name, version).tags.get(key)


def replace_tags(
    name: str, version: str, tags: Mapping[str, str], stale_prefix: str | None = None
) -> None:
    """Set a later stage's tags on the version; with `stale_prefix`, remove the tags of that
    prefix it no longer writes (a changed label budget)."""
    client = MlflowClient()
    if stale_prefix:
        for key in client.get_model_version(name, version).tags:
            if key.startswith(stale_prefix) and key not in tags:
                client.delete_model_version_tag(name, version, key)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def describe(name: str, version: str, model_card: str) -> None:
    """The version's description: its model card (Markdown, shown on its page in the UI)."""
    MlflowClient().update_model_version(name, version, description=model_card)
