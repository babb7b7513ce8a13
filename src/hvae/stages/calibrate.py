"""calibrate: choose the served OOD score and its threshold on validation data only.

Every candidate score (hvae.evaluation.detector) from the 2L statistics (the L bounds at
`evaluate.llr_samples` importance samples, the L reconstruction terms at `evaluate.recon_draws`
posterior draws) of:
- `calibrate.fit_images` binarized training images, which fit the typicality statistics;
- `calibrate.validation_images` in-distribution validation images and as many of the other
  dataset's *training* images (prepare's OOD validation set).
With `calibrate.reference_images` binarized training images, the neighbour distance in the
encoder's features (`calibrate.neighbours`-th nearest of them) is a candidate too.
`calibrate.score` (or, with `auto`, the best validation AUROC) is the served score; its
threshold accepts `calibrate.in_distribution_tpr` of the in-distribution validation images.
Writes models/ood_detector.json and models/ood_reference.npz (the reference images), which
evaluate packs into the registered model, and reports/calibrate.json. No test image is
read: ood reports the choice on the test sets.
"""

from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np

from hvae import artifacts, atomic, extras, paths
from hvae.config import Params
from hvae.data import prepared
from hvae.data.prepared import Split
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

    sets = image_sets(params, train, valid, ood_valid)
    reference = reference_images(params, train)
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
    neighbours = features = None
    if reference is not None:
        neighbours = detector.NeighbourDistance.fit(
            anomaly.encoder_features(model, reference, e.batch_size), c.neighbours
        )
        features = tuple(
            anomaly.encoder_features(model, sets[name], e.batch_size)
            for name in ("valid", "ood_valid")
        )
    chosen, validation = detector.calibrate(
        statistics["fit"],
        statistics["valid"],
        statistics["ood_valid"],
        e.llr_samples,
        e.recon_draws,
        c.in_distribution_tpr,
        c.score,
        neighbours,
        reference,
        features,
    )
    metrics = {f"calibrate_{k}": v for k, v in validation.items()}
    metrics["calibrate_validation_images"] = c.validation_images
    extras.save_detector(chosen, paths.MODELS)
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
            f"{s} {validation[f'{s}_auroc']:.3f}"
            for s in detector.score_names(model.n_layers, reference is not None)
        )
        + f"; serving {chosen.score} > {chosen.threshold:.4g} "
        f"({validation['chosen_tpr']:.1%} of in-distribution accepted, "
        f"{validation['chosen_ood_flagged']:.1%} of OOD flagged); {seconds:.0f} s"
    )


def image_sets(params: Params, train: Split, valid: Split, ood_valid: Split) -> dict:
    """calibrate's three image sets, seeded: `fit` (binarized training images), `valid` and
    `ood_valid` (validation images of both datasets)."""
    c = params.calibrate
    rng = np.random.default_rng(params.seed)
    fit = np.sort(rng.choice(len(train), min(c.fit_images, len(train)), replace=False))
    return {
        # Binarized once, like the validation sets, so all three come from one distribution.
        "fit": prepared.binarize_once(train.images[fit], params.prepare.seed + 4),
        "valid": valid.images[np.sort(rng.choice(len(valid), c.validation_images, False))],
        "ood_valid": ood_valid.images[
            np.sort(rng.choice(len(ood_valid), c.validation_images, replace=False))
        ],
    }


def reference_images(params: Params, train: Split) -> np.ndarray | None:
    """The neighbour distance's reference: `calibrate.reference_images` training images,
    binarized once (None with none). Drawn apart from the fit set, from its own seed."""
    count = min(params.calibrate.reference_images, len(train))
    if not count:
        return None
    chosen = np.random.default_rng(params.seed + 1).choice(len(train), count, replace=False)
    binary = prepared.binarize_once(train.images[chosen], params.prepare.seed + 5)
    return binary.reshape(count, -1).astype(bool)
