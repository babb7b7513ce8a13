"""A registered version's model card, composed from what the stages have logged on its run.

evaluate registers the version; ood, probe and semisup add their results later (or earlier:
probe and semisup do not wait for evaluate, and evaluate tags the version with what they
logged). Each of them calls `publish` once its metrics file is logged on
the run, so the card always shows every result computed so far for exactly this run, and
there is never a second version per run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from hvae.config import Params, flatten
from hvae.reporting import model_card
from hvae.tracking import registry

# Run artifacts holding each stage's metrics (the same files as reports/*.json).
STAGE_METRICS = ("metrics.json", "calibrate.json", "ood.json", "probe.json", "semisup.json")
LINEAGE_TAGS = (
    "run_id",
    "model_digest",
    "git_commit",
    "params_digest",
    "data_digest",
    "dataset",
    "ood_dataset",
)


def key_params(params: Params) -> dict[str, object]:
    """The params a reader of the model card wants first; all of them are on the run."""
    flat = flatten(params)
    # validation_size: how many images of the training set the model did not train on.
    keys = ["seed", "prepare.validation_size", "train.epochs", "train.batch_size"]
    keys += ["train.learning_rate", "train.free_bits"]
    keys += ["train.iw_samples", "train.precision", "evaluate.iw_samples", "evaluate.llr_samples"]
    keys += ["evaluate.recon_draws", "semisup.features"]
    return {k: flat[k] for k in keys}


def run_metrics(run_id: str) -> dict[str, float]:
    """Every stage's metrics logged on the run so far, merged."""
    client = MlflowClient()
    logged = {a.path for a in client.list_artifacts(run_id)}
    uri = client.get_run(run_id).info.artifact_uri
    merged: dict[str, float] = {}
    for name in STAGE_METRICS:
        if name in logged:
            merged.update(mlflow.artifacts.load_dict(f"{uri}/{name}"))
    return merged


def add_stage_results(
    name: str,
    run_id: str,
    model,
    params: Params,
    metrics: Mapping[str, float],
    metrics_file: Path,
    tags: Mapping[str, str],
    stale_prefix: str | None = None,
) -> None:
    """A later stage's results (ood, probe) on the run and, once evaluate has registered it,
    on its version: the metrics (linked to the logged model), the metrics file as an artifact,
    the stage's tags and the re-composed card."""
    logged = registry.logged_model_of_run(name, run_id)
    registry.link_metrics(run_id, logged, registry.mlflow_keys(metrics))
    with mlflow.start_run(run_id=run_id):
        mlflow.log_artifact(str(metrics_file))
    if logged is not None:
        registry.replace_tags(name, logged.version, tags, stale_prefix)
        publish(name, run_id, model, params)


def publish(name: str, run_id: str, model, params: Params) -> tuple[str, str] | None:
    """Render the card of the run's version and make it the version's description.

    Returns (version, card), or None while the run has no version (before evaluate).
    """
    logged = registry.logged_model_of_run(name, run_id)
    if logged is None or logged.version is None:
        return None
    tags = MlflowClient().get_model_version(name, logged.version).tags
    lineage = model_card.Lineage(
        registered_model=name,
        version=logged.version,
        **{key: tags.get(key, "unknown") for key in LINEAGE_TAGS},
    )
    card = model_card.render(
        lineage,
        architecture=model.get_config(),
        parameters=model.count_params(),
        key_params=key_params(params),
        metrics=run_metrics(run_id),
        requirements=registry.pinned_requirements(),
        served={k: tags[k] for k in ("ood_score", "ood_threshold") if k in tags},
    )
    registry.describe(name, logged.version, card)
    return logged.version, card
