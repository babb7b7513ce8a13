"""semisup: classify from a few labels and the unlabelled training images, through the hierarchy.

Label spreading (hvae.evaluation.label_spreading) on the model's `semisup.features` (the
encoder's deepest feature, or every layer's posterior means): a neighbour graph of
`semisup.graph_images` training images, `semisup.labels` of them labelled (balanced,
`semisup.draws` draws per budget), scored on the test set. Writes
reports/semisup.json, reports/semisup_confusion.csv (a `dvc plots` confusion matrix of the
first draw of the smallest budget) and models/classifier.npz, the classifier that evaluate
packs into the registered model (the first draw of `semisup.serve_labels`).
"""

from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from hvae import artifacts, atomic, extras, paths
from hvae.config import Params
from hvae.data import prepared
from hvae.evaluation import label_spreading, representations
from hvae.progress import Progress
from hvae.tracking import card, runs


def run(params: Params, root: Path) -> None:
    started = time.perf_counter()
    s = params.semisup
    keras.utils.set_random_seed(params.seed)
    model_digest = artifacts.files_digest(paths.MODELS)
    train = prepared.load_split(paths.PREPARED, paths.TRAIN_FILE, "train")
    test = prepared.load_split(paths.PREPARED, paths.TRAIN_FILE, "test")
    model = artifacts.load_model(paths.MODELS)
    runs.configure(root)
    run_id = runs.read_run_record(model_digest)

    rng = np.random.default_rng(params.seed)
    subset = np.sort(rng.choice(len(train), min(s.graph_images, len(train)), replace=False))
    # Binarized once, like the test set (as the probes do), so both come from one distribution.
    images = prepared.binarize_once(train.images[subset], params.prepare.seed + 3)
    encoding = Progress("semisup: encoding images", len(subset) + len(test))
    features, test_features = (
        representations.image_features(
            model, x, s.features, params.evaluate.batch_size, encoding.advance
        )
        for x in (images, test.images)
    )
    encoding.finish()
    search = Progress("semisup: neighbour search", len(subset) + len(test))
    results = label_spreading.evaluate(
        (features, train.labels[subset]),
        (test_features, test.labels),
        s.labels,
        s.draws,
        s.neighbours,
        s.alpha,
        s.iterations,
        s.serve_labels,
        params.seed,
        advance=search.advance,
        features=s.features,
    )
    search.finish()

    extras.save_classifier(results.served, paths.MODELS)
    confusion = pd.DataFrame({"actual": test.labels, "predicted": results.predicted})
    with atomic.atomic_path(paths.SEMISUP_CONFUSION) as tmp:
        confusion.to_csv(tmp, index=False)
    atomic.write_json(paths.SEMISUP_METRICS, results.metrics)

    card.add_stage_results(
        params.registered_model,
        run_id,
        model,
        params,
        results.metrics,
        paths.SEMISUP_METRICS,
        {f"semisup_error_n{b}": f"{results.metrics[f'semisup_error_n{b}']:.4f}" for b in s.labels},
        stale_prefix="semisup_error_n",
    )
    seconds = time.perf_counter() - started
    runs.record_stage_time("semisup", run_id, {"seconds": seconds})
    print(
        "semisup: test error "
        + ", ".join(
            f"{results.metrics[f'semisup_error_n{b}']:.2%} "
            f"± {results.metrics[f'semisup_error_n{b}_std']:.2%} ({b} labels)"
            for b in s.labels
        )
        + f" over {s.draws} draws; classifier ({s.serve_labels} labels) -> "
        + f"{paths.MODELS / extras.CLASSIFIER}; {seconds:.0f} s"
    )
