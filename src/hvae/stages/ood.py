"""ood: out-of-distribution detection against the other dataset's test set.

Two scores (hvae.evaluation.anomaly): the likelihood, from evaluate's per-image test
log-likelihoods (data/scores/test.npz) and the same estimate on the OOD test set, and LLR>k
for every k. Writes reports/ood.json and one ROC curve per score under reports/ood_roc/,
logs both on the training run and adds the results to the registered version.
"""

from __future__ import annotations

import time
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd

from hvae import artifacts, atomic, paths
from hvae.config import Params
from hvae.data import prepared
from hvae.errors import DataError
from hvae.evaluation import anomaly, bounds, ood
from hvae.progress import Progress
from hvae.tracking import card, runs


def _read_test_scores(iw_samples: int) -> np.ndarray:
    path = paths.TEST_SCORES
    try:
        with np.load(path) as scores:
            log_px, k = scores["log_px"], int(scores["iw_samples"])
    except FileNotFoundError:
        raise DataError(f"{path}: not found (run `hvae evaluate` first)") from None
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: unreadable ({exc}); run `hvae evaluate` again") from None
    if k != iw_samples:
        raise DataError(
            f"{path}: scored with evaluate.iw_samples {k}, params say {iw_samples}; "
            "run `hvae evaluate` again"
        )
    return log_px


def run(params: Params, root: Path) -> None:
    started = time.perf_counter()
    e = params.evaluate
    keras.utils.set_random_seed(params.seed)
    model_digest = artifacts.files_digest(paths.MODELS)
    manifest = prepared.read_manifest(paths.PREPARED)
    test = prepared.load_split(paths.PREPARED, paths.TRAIN_FILE, "test")
    ood_test = prepared.load_split(paths.PREPARED, paths.OOD_FILE, "test")
    log_px = _read_test_scores(e.iw_samples)
    if len(log_px) != len(test):
        raise DataError(
            f"{paths.TEST_SCORES}: {len(log_px)} scores for {len(test)} test images; "
            "run `hvae evaluate` again"
        )
    model = artifacts.load_model(paths.MODELS)
    runs.configure(root)
    run_id = runs.read_run_record(model_digest)

    nll = Progress(f"ood: {manifest['ood_dataset']} test NLL, k={e.iw_samples}", len(ood_test))
    ood_log_px = bounds.iw_log_likelihood(
        model, ood_test.images, e.iw_samples, e.batch_size, e.chunk_size, advance=nll.advance
    )
    metrics: dict[str, float] = {
        "ood_test_nll": float(-ood_log_px.mean()),
        "ood_llr_samples": e.llr_samples,
    }
    scores = {
        "likelihood": (anomaly.likelihood_score(log_px), anomaly.likelihood_score(ood_log_px))
    }
    # Every image once per bound: L bounds (L and each L>k) over both test sets.
    llr = Progress(
        f"ood: LLR>k bounds, {e.llr_samples} samples",
        model.n_layers * (len(test) + len(ood_test)),
    )
    in_llr = anomaly.llr_scores(
        model, test.images, e.llr_samples, e.batch_size, e.chunk_size, llr.advance
    )
    ood_llr = anomaly.llr_scores(
        model, ood_test.images, e.llr_samples, e.batch_size, e.chunk_size, llr.advance
    )
    scores.update({f"llr_k{k}": (in_llr[k], ood_llr[k]) for k in in_llr})
    rocs = {}
    for score, (in_scores, ood_scores) in scores.items():
        metrics.update(
            {f"ood_{score}_{m}": v for m, v in ood.summary(in_scores, ood_scores).items()}
        )
        rocs[score] = ood.thinned_roc(in_scores, ood_scores)

    with atomic.atomic_dir(paths.OOD_ROC) as out:
        for score, (fpr, tpr) in rocs.items():
            pd.DataFrame({"fpr": fpr, "tpr": tpr}).to_csv(out / f"{score}.csv", index=False)
    atomic.write_json(paths.OOD_METRICS, metrics)

    with mlflow.start_run(run_id=run_id):
        mlflow.log_artifacts(str(paths.OOD_ROC), artifact_path="ood_roc")
    # Two of the tags are gate metrics (`hvae promote --metric`).
    tags = {k: f"{metrics[k]:.4f}" for k in ("ood_test_nll", "ood_likelihood_auroc")}
    tags["ood_llr_samples"] = str(e.llr_samples)
    card.add_stage_results(
        params.registered_model, run_id, model, params, metrics, paths.OOD_METRICS, tags
    )
    seconds = time.perf_counter() - started
    runs.record_stage_time("ood", run_id, {"seconds": seconds})
    print(
        f"ood: {manifest['dataset']} test vs {manifest['ood_dataset']} test, AUROC likelihood "
        f"{metrics['ood_likelihood_auroc']:.3f}, "
        + ", ".join(f"LLR>{k} {metrics[f'ood_llr_k{k}_auroc']:.3f}" for k in in_llr)
        + f" (LLR with {e.llr_samples} samples); {seconds:.0f} s"
    )
