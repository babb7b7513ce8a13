"""evaluate: score the full test set, write reports/metrics.json, register the model.

The registered version's description is its model card, also written to
reports/model_card.md.

Beside the bound and the NLL: out-of-distribution detection against the other dataset's
test set (likelihood and LLR>k, ROC curves under reports/ood_roc/) and linear probes of
every layer's posterior means.
"""

from __future__ import annotations

import time
from pathlib import Path

import keras
import mlflow
import pandas as pd

from hvae import (
    anomaly,
    artifacts,
    atomic,
    evaluation,
    model_card,
    ood,
    paths,
    registry,
    representations,
    tracking,
)
from hvae.config import GATE_METRICS, Params, flatten
from hvae.data import prepared


def run(params: Params, root: Path) -> None:
    started = time.perf_counter()
    e = params.evaluate
    keras.utils.set_random_seed(params.seed)
    # Local inputs first: a missing one stops the stage before the store is opened (or made).
    model_digest = artifacts.files_digest(paths.MODELS)
    manifest = prepared.read_manifest(paths.PREPARED)
    test = prepared.load_split(paths.PREPARED, paths.TRAIN_FILE, "test")
    ood_test = prepared.load_split(paths.PREPARED, paths.OOD_FILE, "test")
    train = prepared.load_split(paths.PREPARED, paths.TRAIN_FILE, "train")  # probe labels
    model = artifacts.load_model(paths.MODELS)
    tracking.configure(root)
    # The run that trained exactly these files, or a one-line refusal before any work.
    run_id = tracking.read_run_record(model_digest)

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

    t0 = time.perf_counter()
    ood_log_px = evaluation.iw_log_likelihood(
        model, ood_test.images, e.iw_samples, e.batch_size, e.chunk_size
    )
    metrics["ood_test_nll"] = float(-ood_log_px.mean())
    scores = {
        "likelihood": (anomaly.likelihood_score(log_px), anomaly.likelihood_score(ood_log_px))
    }
    in_llr = anomaly.llr_scores(model, test.images, e.llr_samples, e.batch_size, e.chunk_size)
    ood_llr = anomaly.llr_scores(model, ood_test.images, e.llr_samples, e.batch_size, e.chunk_size)
    scores.update({f"llr_k{k}": (in_llr[k], ood_llr[k]) for k in in_llr})
    rocs = {}
    for name, (in_scores, ood_scores) in scores.items():
        metrics.update(
            {f"ood_{name}_{m}": v for m, v in ood.summary(in_scores, ood_scores).items()}
        )
        rocs[name] = ood.thinned_roc(in_scores, ood_scores)
    ood_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    metrics.update(
        representations.probe_accuracies(
            model,
            (prepared.binarize_once(train.images, params.prepare.seed + 3), train.labels),
            (test.images, test.labels),
            e.probe_labels,
            e.probe_repeats,
            params.seed,
            e.batch_size,
        )
    )
    probe_seconds = time.perf_counter() - t0

    with atomic.atomic_dir(paths.OOD_ROC) as out:
        for name, (fpr, tpr) in rocs.items():
            pd.DataFrame({"fpr": fpr, "tpr": tpr}).to_csv(out / f"{name}.csv", index=False)
    atomic.write_json(paths.METRICS, metrics)

    name = params.registered_model
    logged = registry.log_model(name, run_id, paths.MODELS, test.images[:5])
    # Every metric goes on the run, linked to its logged model; the version gets lineage and
    # the headline metrics only.
    registry.link_metrics(run_id, logged, {_metric_key(k): v for k, v in metrics.items()})
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(
            {
                "time/evaluate_iw_seconds": iw_seconds,
                "time/evaluate_ood_seconds": ood_seconds,
                "time/evaluate_probe_seconds": probe_seconds,
            }
        )
        mlflow.log_artifact(str(paths.METRICS))
        mlflow.log_artifacts(str(paths.OOD_ROC), artifact_path="ood_roc")
    lineage = {
        "dataset": manifest["dataset"],
        "ood_dataset": manifest["ood_dataset"],
        "git_commit": tracking.git_commit(root) or "unknown",
        "params_digest": prepared.json_digest(flatten(params)),
        "data_digest": manifest["digest"],
        "run_id": run_id,
        tracking.MODEL_DIGEST: model_digest,
    }
    headline = {k: metrics[k] for k in (*GATE_METRICS, "iw_samples")}
    tags = {**lineage, **{k: _tag(v) for k, v in headline.items()}}
    version = registry.register(name, logged, tags)
    card = model_card.render(
        model_card.Lineage(registered_model=name, version=version, **lineage),
        architecture=model.get_config(),
        parameters=model.count_params(),
        key_params=_key_params(params),
        metrics=metrics,
        requirements=registry.pinned_requirements(),
    )
    registry.describe(name, version, card)
    atomic.write_text(paths.MODEL_CARD, card)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_artifact(str(paths.MODEL_CARD))
        mlflow.log_metric("time/evaluate_seconds", time.perf_counter() - started)
    print(
        f"evaluate: test NLL {metrics['test_nll']:.2f} nats (k={e.iw_samples}), "
        f"ELBO {metrics['test_elbo']:.2f}, KL per layer "
        + ", ".join(f"{metrics[f'test_{n}']:.2f}" for n in model.kl_names)
        + "; active units "
        + ", ".join(str(metrics[f"active_units_z{i + 1}"]) for i in range(model.n_layers))
        + f"; OOD ({manifest['ood_dataset']}) AUROC likelihood "
        + f"{metrics['ood_likelihood_auroc']:.3f}, "
        + ", ".join(f"LLR>{k} {metrics[f'ood_llr_k{k}_auroc']:.3f}" for k in in_llr)
        + f"; {name} version {version}"
        + f"; {time.perf_counter() - started:.0f} s"
    )


def _tag(value: float) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _key_params(params: Params) -> dict[str, object]:
    """The params a reader of the model card wants first; all of them are on the run."""
    flat = flatten(params)
    keys = ["seed", "train.epochs", "train.batch_size", "train.learning_rate", "train.free_bits"]
    keys += ["train.precision", "evaluate.iw_samples"]
    return {k: flat[k] for k in keys}


def _metric_key(name: str) -> str:
    """metrics.json key -> MLflow key: test/nll, ood/llr_k1_auroc, probe/z1_n100."""
    for prefix in ("ood", "probe", "test"):
        if name.startswith(prefix + "_"):
            return f"{prefix}/{name.removeprefix(prefix + '_')}"
    return f"test/{name}"
