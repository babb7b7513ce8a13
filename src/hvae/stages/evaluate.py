"""evaluate: score the test set, write reports/metrics.json, register the model.

The single-sample ELBO, the KL of every layer, active units and the importance-weighted NLL.
The per-image log-likelihoods go to data/scores/test.npz, where the ood stage reads them
instead of computing them again: at `evaluate.iw_samples`, and at `evaluate.llr_samples` from
the same pass's first samples (the bound L(x) that the LLR scores compare L>k with).
The registered version gets its lineage, the headline metrics and a model card that ood and
probe complete.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import keras
import mlflow
import numpy as np

from hvae import artifacts, atomic, extras, paths
from hvae.config import GATE_METRICS, Params, flatten
from hvae.data import prepared
from hvae.evaluation import bounds
from hvae.progress import Progress
from hvae.tracking import card, registry, runs

# The version tags of the stages that need no version to run (probe, semisup).
EARLIER_TAG = re.compile(r"(probe_all|semisup_error)_n\d+")


def run(params: Params, root: Path) -> None:
    started = time.perf_counter()
    e = params.evaluate
    keras.utils.set_random_seed(params.seed)
    # Local inputs first: a missing one stops the stage before the store is opened (or made).
    model_digest = artifacts.files_digest(paths.MODELS)
    manifest = prepared.read_manifest(paths.PREPARED)
    test = prepared.load_split(paths.PREPARED, paths.TRAIN_FILE, "test")
    model = artifacts.load_model(paths.MODELS)
    runs.configure(root)
    # The run that trained exactly these files, or a one-line refusal before any work.
    run_id = runs.read_run_record(model_digest)

    n = len(test)
    metrics: dict[str, float] = {}
    metrics.update(bounds.elbo_and_kl(model, test.images, e.batch_size))
    metrics.update(bounds.active_units(model, test.images, e.batch_size, e.active_unit_threshold))
    t0 = time.perf_counter()
    log_px, log_px_llr = bounds.iw_log_likelihoods(
        model,
        test.images,
        (e.iw_samples, e.llr_samples),
        e.batch_size,
        e.chunk_size,
        advance=Progress(f"evaluate: test NLL, k={e.iw_samples}", n).advance,
    ).T
    metrics["test_nll"] = float(-log_px.mean())
    metrics["iw_samples"] = e.iw_samples
    metrics["test_images"] = n
    nll_seconds = time.perf_counter() - t0

    with atomic.atomic_path(paths.TEST_SCORES) as tmp, tmp.open("wb") as f:
        np.savez(
            f,
            log_px=log_px,
            iw_samples=e.iw_samples,
            log_px_llr=log_px_llr,
            llr_samples=e.llr_samples,
        )
    atomic.write_json(paths.METRICS, metrics)

    name = params.registered_model
    logged = registry.log_model(name, run_id, paths.MODELS, test.images[:5])
    # Every metric goes on the run, linked to its logged model (with any that probe logged
    # before the model was); the version gets lineage and the headline metrics only.
    earlier = card.run_metrics(run_id)
    registry.link_metrics(run_id, logged, registry.mlflow_keys({**earlier, **metrics}))
    with mlflow.start_run(run_id=run_id):
        mlflow.log_artifact(str(paths.METRICS))
    lineage = {
        "dataset": manifest["dataset"],
        "ood_dataset": manifest["ood_dataset"],
        "git_commit": runs.git_commit(root) or "unknown",
        "params_digest": prepared.json_digest(flatten(params)),
        "data_digest": manifest["digest"],
        "run_id": run_id,
        runs.MODEL_DIGEST: model_digest,
    }
    # The gate metrics evaluate computes; ood tags its own (registry.LATER_STAGE_TAGS).
    headline = {k: metrics[k] for k in (*GATE_METRICS, "iw_samples") if k in metrics}
    # probe and semisup may have run first, before there was a version to tag.
    earlier_tags = {k: _tag(v) for k, v in earlier.items() if EARLIER_TAG.fullmatch(k)}
    packed = extras.extras_digest(paths.MODELS)
    if logged.version is None:
        # Just packed: semisup's classifier and calibrate's detector, as they are in models/.
        earlier_tags["packed_digest"] = packed
        detector = extras.load_detector(paths.MODELS)
        if detector is not None:
            earlier_tags.update(
                ood_score=detector.score,
                ood_threshold=f"{detector.threshold:.6g}",
                ood_samples=str(detector.samples),
                ood_draws=str(detector.draws),
            )
    elif registry.version_tag(name, logged.version, "packed_digest") != packed:
        print(
            f"evaluate: {name} version {logged.version} keeps the classifier and OOD detector "
            f"it was logged with; {paths.MODELS} now holds others (a changed semisup.* or "
            "calibrate.*), which a new training run would serve"
        )
    version = registry.register(
        name, logged, {**lineage, **earlier_tags, **{k: _tag(v) for k, v in headline.items()}}
    )
    card.publish(name, run_id, model, params)
    seconds = time.perf_counter() - started
    runs.record_stage_time("evaluate", run_id, {"seconds": seconds, "nll_seconds": nll_seconds})
    print(
        f"evaluate: test NLL {metrics['test_nll']:.2f} nats (k={e.iw_samples}), "
        f"ELBO {metrics['test_elbo']:.2f}, KL per layer "
        + ", ".join(f"{metrics[f'test_{n}']:.2f}" for n in model.kl_names)
        + "; active units "
        + ", ".join(str(metrics[f"active_units_z{i + 1}"]) for i in range(model.n_layers))
        + f"; {name} version {version}; {seconds:.0f} s"
    )


def _tag(value: float) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
