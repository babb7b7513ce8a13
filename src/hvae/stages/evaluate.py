"""evaluate: score the full test set, write reports/metrics.json, register the model."""

from __future__ import annotations

import time
from pathlib import Path

import keras
import mlflow

from hvae import artifacts, atomic, evaluation, paths, registry, tracking
from hvae.config import Params, flatten
from hvae.data import prepared


def run(params: Params, root: Path) -> None:
    started = time.perf_counter()
    e = params.evaluate
    keras.utils.set_random_seed(params.seed)
    tracking.configure(root)
    run_id = tracking.read_run_record()
    manifest = prepared.read_manifest(paths.PREPARED)
    test = prepared.load_split(paths.PREPARED, paths.TRAIN_FILE, "test")
    model = artifacts.load_model(paths.MODELS)

    metrics: dict[str, float] = {}
    metrics.update(evaluation.elbo_and_kl(model, test.images, e.batch_size))
    metrics.update(
        evaluation.active_units(model, test.images, e.batch_size, e.active_unit_threshold)
    )
    t0 = time.perf_counter()
    log_px = evaluation.iw_log_likelihood(
        model, test.images, e.iw_samples, e.batch_size, e.chunk_size
    )
    metrics["test_nll"] = float(-log_px.mean())
    metrics["iw_samples"] = e.iw_samples
    metrics["test_images"] = len(test)
    iw_seconds = time.perf_counter() - t0

    atomic.write_json(paths.METRICS, metrics)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"test/{k.removeprefix('test_')}": v for k, v in metrics.items()})
        mlflow.log_metric("time/evaluate_iw_seconds", iw_seconds)
        mlflow.log_artifact(str(paths.METRICS))

    tags = {
        **{k: f"{v:.4f}" if isinstance(v, float) else str(v) for k, v in metrics.items()},
        "git_commit": tracking.git_commit(root) or "unknown",
        "params_digest": prepared.json_digest(flatten(params)),
        "data_digest": manifest["digest"],
        "run_id": run_id,
    }
    version = registry.register(
        params.registered_model, run_id, paths.MODELS, test.images[:5], tags
    )
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metric("time/evaluate_seconds", time.perf_counter() - started)
    print(
        f"evaluate: test NLL {metrics['test_nll']:.2f} nats (k={e.iw_samples}), "
        f"ELBO {metrics['test_elbo']:.2f}, KL per layer "
        + ", ".join(f"{metrics[f'test_{n}']:.2f}" for n in model.kl_names)
        + "; active units "
        + ", ".join(str(metrics[f"active_units_z{i + 1}"]) for i in range(model.n_layers))
        + f"; {params.registered_model} version {version}"
        + f"; {time.perf_counter() - started:.0f} s"
    )
