"""probe: what each layer knows of the class, from a few labels.

Softmax regressions on every layer's posterior means, on all layers together and on raw
pixels, each trained on `evaluate.probe_labels` balanced labelled training images
(`evaluate.probe_repeats` draws) and scored on the test set. Writes reports/probe.json, logs it
on the training run and adds it to the registered version's card.
"""

from __future__ import annotations

import time
from pathlib import Path

import keras

from hvae import artifacts, atomic, paths
from hvae.config import Params
from hvae.data import prepared
from hvae.evaluation import representations
from hvae.progress import Progress
from hvae.tracking import card, runs


def run(params: Params, root: Path) -> None:
    started = time.perf_counter()
    e = params.evaluate
    keras.utils.set_random_seed(params.seed)
    model_digest = artifacts.files_digest(paths.MODELS)
    test = prepared.load_split(paths.PREPARED, paths.TRAIN_FILE, "test")
    train = prepared.load_split(paths.PREPARED, paths.TRAIN_FILE, "train")
    model = artifacts.load_model(paths.MODELS)
    runs.configure(root)
    run_id = runs.read_run_record(model_digest)

    # The labelled images (at most budget x repeats of them), then the test set.
    labelled = min(len(train), sum(e.probe_labels) * e.probe_repeats)
    progress = Progress("probe: encoding images", labelled + len(test))
    metrics = representations.probe_accuracies(
        model,
        # Binarized once, like the test set, so that both come from one distribution.
        (prepared.binarize_once(train.images, params.prepare.seed + 3), train.labels),
        (test.images, test.labels),
        e.probe_labels,
        e.probe_repeats,
        params.seed,
        e.batch_size,
        advance=progress.advance,
    )
    progress.finish()
    atomic.write_json(paths.PROBE_METRICS, metrics)

    card.add_stage_results(
        params.registered_model,
        run_id,
        model,
        params,
        metrics,
        paths.PROBE_METRICS,
        {f"probe_all_n{b}": f"{metrics[f'probe_all_n{b}']:.4f}" for b in e.probe_labels},
        stale_prefix="probe_all_n",
    )
    seconds = time.perf_counter() - started
    runs.record_stage_time("probe", run_id, {"seconds": seconds})
    print(
        "probe: test accuracy on all layers "
        + ", ".join(f"{metrics[f'probe_all_n{b}']:.3f} ({b} labels)" for b in e.probe_labels)
        + ", on pixels "
        + ", ".join(f"{metrics[f'probe_pixels_n{b}']:.3f}" for b in e.probe_labels)
        + f"; {seconds:.0f} s"
    )
