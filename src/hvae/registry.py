"""Log the trained model as an MLflow model and register it as a version, once per run."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature, infer_signature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import AnyType

from hvae import artifacts


def _existing_version(client: MlflowClient, name: str, run_id: str):
    for version in client.search_model_versions(f"name = '{name}'"):
        if version.run_id == run_id:
            return version
    return None


def _signature(frame: pd.DataFrame, scores: pd.DataFrame) -> ModelSignature:
    # 784 unnamed columns of any numeric type: a DataFrame with any column names or a plain
    # array, uint8 as well as int64 or float grey levels. MLflow would refuse int64 for
    # 'double' columns; the scorer itself checks count, finiteness and the 0-255 range.
    return ModelSignature(
        inputs=Schema([ColSpec(AnyType())] * frame.shape[1]),
        outputs=infer_signature(frame, scores).outputs,
        params=ParamSchema([ParamSpec("iw_samples", "long", 100)]),
    )


def register(
    name: str, run_id: str, model_dir: Path, example: np.ndarray, tags: dict[str, str]
) -> str:
    """Register the run's model as a version of `name` (reusing the run's version if any)."""
    client = MlflowClient()
    version = _existing_version(client, name, run_id)
    if version is None:
        from hvae.pyfunc import HVAEScorer

        frame = pd.DataFrame(example.reshape(len(example), -1).astype(np.float64) * 255.0)
        frame.columns = [f"p{i}" for i in range(frame.shape[1])]
        scores = HVAEScorer(model_dir).predict(frame, {"iw_samples": 4})
        # Only the final weights and architecture go into the artifact, not the checkpoints.
        with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id):
            data = Path(tmp) / "hvae"
            data.mkdir()
            for file in (artifacts.WEIGHTS, artifacts.CONFIG):
                shutil.copy2(model_dir / file, data / file)
            info = mlflow.pyfunc.log_model(
                name="model",
                loader_module="hvae.pyfunc",
                data_path=str(data),
                signature=_signature(frame, scores),
                input_example=frame,
                pip_requirements=["tensorflow", "keras", "numpy", "pandas", "mlflow"],
            )
        version = mlflow.register_model(info.model_uri, name)
    for key, value in tags.items():
        client.set_model_version_tag(name, version.version, key, value)
    return str(version.version)
