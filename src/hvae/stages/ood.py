"""ood: out-of-distribution detection against the other dataset's test set.

Every score of hvae.evaluation.detector on both test sets: the likelihood, from evaluate's
per-image test log-likelihoods (data/scores/test.npz) and the same estimate on the OOD test
set; LLR>k, recon>k and both typicalities, from the 2L statistics (the L bounds at
`evaluate.llr_samples`, the L reconstruction terms at `evaluate.recon_draws`), whose L(x) is
the likelihood pass's first `evaluate.llr_samples` samples on either set; the neighbour
distance in the encoder's features, when the detector has a reference. Then the
served detector that calibrate chose on validation data (models/ood_detector.json): its
AUROC, AUPRC and FPR80 on the test sets (`ood_served_*`) and the rates at its threshold.
Writes reports/ood.json and one ROC curve per score under reports/ood_roc/, logs both on the
training run and adds the results to the registered version.
"""

from __future__ import annotations

import time
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd

from hvae import artifacts, atomic, extras, paths
from hvae.config import Params
from hvae.data import prepared
from hvae.errors import DataError
from hvae.evaluation import anomaly, bounds, detector, ood
from hvae.progress import Progress
from hvae.tracking import card, runs


def _read_test_scores(iw_samples: int, llr_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """evaluate's per-image log-likelihoods at `iw_samples` and at `llr_samples`."""
    path = paths.TEST_SCORES
    try:
        with np.load(path) as scores:
            log_px, k = scores["log_px"], int(scores["iw_samples"])
            log_px_llr, k_llr = scores["log_px_llr"], int(scores["llr_samples"])
    except FileNotFoundError:
        raise DataError(f"{path}: not found (run `hvae evaluate` first)") from None
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: unreadable ({exc}); run `hvae evaluate` again") from None
    for key, got, want in (("iw_samples", k, iw_samples), ("llr_samples", k_llr, llr_samples)):
        if got != want:
            raise DataError(
                f"{path}: scored with evaluate.{key} {got}, params say {want}; "
                "run `hvae evaluate` again"
            )
    if log_px.shape != log_px_llr.shape:
        raise DataError(
            f"{path}: {len(log_px)} log_px but {len(log_px_llr)} log_px_llr scores; "
            "run `hvae evaluate` again"
        )
    return log_px, log_px_llr


def run(params: Params, root: Path) -> None:
    started = time.perf_counter()
    e = params.evaluate
    keras.utils.set_random_seed(params.seed)
    model_digest = artifacts.files_digest(paths.MODELS)
    manifest = prepared.read_manifest(paths.PREPARED)
    test = prepared.load_split(paths.PREPARED, paths.TRAIN_FILE, "test")
    ood_test = prepared.load_split(paths.PREPARED, paths.OOD_FILE, "test")
    log_px, log_px_llr = _read_test_scores(e.iw_samples, e.llr_samples)
    if len(log_px) != len(test):
        raise DataError(
            f"{paths.TEST_SCORES}: {len(log_px)} scores for {len(test)} test images; "
            "run `hvae evaluate` again"
        )
    model = artifacts.load_model(paths.MODELS)
    served = extras.load_detector(paths.MODELS)
    if served is None:
        raise DataError(f"{paths.MODELS / extras.DETECTOR}: not found (run `hvae calibrate` first)")
    runs.configure(root)
    run_id = runs.read_run_record(model_digest)

    nll = Progress(f"ood: {manifest['ood_dataset']} test NLL, k={e.iw_samples}", len(ood_test))
    ood_log_px, ood_log_px_llr = bounds.iw_log_likelihoods(
        model,
        ood_test.images,
        (e.iw_samples, e.llr_samples),
        e.batch_size,
        e.chunk_size,
        advance=nll.advance,
    ).T
    metrics: dict[str, float] = {
        "ood_test_nll": float(-ood_log_px.mean()),
        "ood_llr_samples": e.llr_samples,
        "ood_recon_draws": e.recon_draws,
    }
    scores = {
        "likelihood": (anomaly.likelihood_score(log_px), anomaly.likelihood_score(ood_log_px))
    }
    # Every image once per statistic but L(x), read above: L - 1 bounds and L reconstruction
    # terms, both test sets.
    progress = Progress(
        f"ood: bounds at {e.llr_samples} samples, reconstruction terms at {e.recon_draws} draws",
        (2 * model.n_layers - 1) * (len(test) + len(ood_test)),
    )
    in_stats, ood_stats = (
        anomaly.statistics(
            model,
            x,
            e.llr_samples,
            e.recon_draws,
            e.batch_size,
            e.chunk_size,
            progress.advance,
            likelihood=first,
        )
        for x, first in ((test.images, log_px_llr), (ood_test.images, ood_log_px_llr))
    )
    # Both typicalities with the statistics calibrate fitted on training images, the
    # neighbour distance with its reference images' features.
    served = anomaly.with_neighbours(model, served, e.batch_size)
    in_all, ood_all = (
        detector.scores(
            stats,
            served.typicality,
            served.distance,
            None if served.distance is None else anomaly.encoder_features(model, x, e.batch_size),
        )
        for stats, x in ((in_stats, test.images), (ood_stats, ood_test.images))
    )
    scores.update({s: (in_all[s], ood_all[s]) for s in in_all if s != "likelihood"})
    served_in, served_ood = in_all[served.score], ood_all[served.score]
    metrics.update({f"ood_served_{m}": v for m, v in ood.summary(served_in, served_ood).items()})
    # The threshold's rates on data it was not set on.
    metrics["ood_served_tpr"] = float(np.mean(served_in <= served.threshold))
    metrics["ood_served_flagged"] = float(np.mean(served_ood > served.threshold))
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
    tags["ood_recon_draws"] = str(e.recon_draws)
    tags["ood_served_auroc"] = f"{metrics['ood_served_auroc']:.4f}"
    card.add_stage_results(
        params.registered_model, run_id, model, params, metrics, paths.OOD_METRICS, tags
    )
    seconds = time.perf_counter() - started
    runs.record_stage_time("ood", run_id, {"seconds": seconds})
    print(
        f"ood: {manifest['dataset']} test vs {manifest['ood_dataset']} test, AUROC likelihood "
        f"{metrics['ood_likelihood_auroc']:.3f}, "
        + ", ".join(f"{s} {metrics[f'ood_{s}_auroc']:.3f}" for s in scores if s != "likelihood")
        + f" ({e.llr_samples} samples per bound, {e.recon_draws} draws per reconstruction "
        f"term); served {served.score}: AUROC "
        f"{metrics['ood_served_auroc']:.3f}, {metrics['ood_served_tpr']:.1%} of "
        f"{manifest['dataset']} accepted, {metrics['ood_served_flagged']:.1%} of "
        f"{manifest['ood_dataset']} flagged at the threshold; {seconds:.0f} s"
    )
