"""calibrate: choose the served OOD score and its threshold on validation data only.

Every candidate score (hvae.evaluation.detector) from the 2L statistics (the L bounds at
`evaluate.llr_samples` importance samples, the L reconstruction terms at `evaluate.recon_draws`
posterior draws) of:
- `calibrate.fit_images` binarized training images, which fit the typicality statistics;
- `calibrate.validation_images` in-distribution validation images and as many of the other
  dataset's *training* images (prepare's OOD validation set).
`calibrate.score` (or, with `auto`, the best validation AUROC) is the served score; its
threshold accepts `calibrate.in_distribution_tpr` of the in-distribution validation images.
Writes models/ood_detector.json, which evaluate packs into the registered model, and
reports/calibrate.json. No test image is read: ood reports the choice on the test sets.
"""

from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np

from hvae import artifacts, atomic, paths
from hvae.config import Params
from hvae.data import prepared
from hvae.evaluation import anomaly, detector
from hvae.progress import Progress
from hvae.tracking import card, runs


def run(params: Params, root: Path) -> None:
    started = time.perf_counter()
    c, e = params.calibrate, params.evaluate
    keras.utils.set_random_seed(params.seed)
    model_digest = artifacts.files_digest(paths.MODELS)
    manifest = prepared.read_manifest(paths.PREPARED)
    train = prepared.load_split(paths.PREPARED, paths.TRAIN_FILE, "train")
    valid = prepared.load_split(paths.PREPARED, paths.TRAIN_FILE, "valid")
    ood_valid = prepared.load_split(paths.PREPARED, paths.OOD_FILE, "valid")
    model = artifacts.load_model(paths.MODELS)
    runs.configure(root)
    run_id = runs.read_run_record(model_digest)

    rng = np.random.default_rng(params.seed)
    fit = np.sort(rng.choice(len(train), min(c.fit_images, len(train)), replace=False))
    # Binarized once, like the validation sets, so all three come from one distribution.
    fit_images = prepared.binarize_once(train.images[fit], params.prepare.seed + 4)
    sets = {
        "fit": fit_images,
        "valid": valid.images[np.sort(rng.choice(len(valid), c.validation_images, False))],
        "ood_valid": ood_valid.images[
            np.sort(rng.choice(len(ood_valid), c.validation_images, replace=False))
        ],
    }
    progress = Progress(
        f"calibrate: {model.n_layers} bounds at {e.llr_samples} samples, "
        f"{model.n_layers} reconstruction terms at {e.recon_draws} draws",
        2 * model.n_layers * sum(len(x) for x in sets.values()),
    )
    statistics = {
        name: anomaly.statistics(
            model, x, e.llr_samples, e.recon_draws, e.batch_size, e.chunk_size, progress.advance
        )
        for name, x in sets.items()
    }
    progress.finish()
    chosen, validation = detector.calibrate(
        statistics["fit"],
        statistics["valid"],
        statistics["ood_valid"],
        e.llr_samples,
        e.recon_draws,
        c.in_distribution_tpr,
        c.score,
    )
    metrics = {f"calibrate_{k}": v for k, v in validation.items()}
    metrics["calibrate_validation_images"] = c.validation_images
    artifacts.save_detector(chosen, paths.MODELS)
    atomic.write_json(paths.CALIBRATE_METRICS, metrics)

    # No version tags: the version's ood_score and ood_threshold are those of the detector
    # evaluate packed into it (registry.PACKED_TAGS), which a re-run here does not change.
    card.add_stage_results(
        params.registered_model, run_id, model, params, metrics, paths.CALIBRATE_METRICS, {}
    )
    seconds = time.perf_counter() - started
    runs.record_stage_time("calibrate", run_id, {"seconds": seconds})
    print(
        f"calibrate: {manifest['dataset']} validation vs {manifest['ood_dataset']} training "
        "images, AUROC "
        + ", ".join(
            f"{s} {validation[f'{s}_auroc']:.3f}" for s in detector.score_names(model.n_layers)
        )
        + f"; serving {chosen.score} > {chosen.threshold:.4g} "
        f"({validation['chosen_tpr']:.1%} of in-distribution accepted, "
        f"{validation['chosen_ood_flagged']:.1%} of OOD flagged); {seconds:.0f} s"
    )
