"""render: reconstructions, prior samples, the hierarchy figure, loss and KL curves."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd

from hvae import artifacts, atomic, figures, paths, tracking
from hvae.config import Params
from hvae.data import prepared


def run(params: Params, root: Path) -> None:
    r = params.render
    keras.utils.set_random_seed(params.seed)
    tracking.configure(root)
    run_id = tracking.read_run_record()
    model = artifacts.load_model(paths.MODELS)
    test = prepared.load_split(paths.PREPARED, paths.TRAIN_FILE, "test")
    history = pd.read_csv(paths.HISTORY)
    metrics = json.loads(paths.METRICS.read_text())

    inputs = test.flat()[: r.n_images].astype(np.float32)
    recon = model.reconstruct(inputs).numpy()
    cols = int(np.ceil(np.sqrt(r.n_samples)))
    samples = model.generate(cols * cols).numpy().reshape(cols, cols, -1)
    top = model.sample_top(r.hierarchy_rows)
    per_row = 10
    fixed_top = np.repeat(top.numpy(), per_row, axis=0)
    hierarchy = (
        model.generate(r.hierarchy_rows * per_row, fixed={model.n_layers - 1: fixed_top})
        .numpy()
        .reshape(r.hierarchy_rows, per_row, -1)
    )

    test_kl = {n: metrics[f"test_{n}"] for n in model.kl_names}
    pictures = {
        "reconstructions.png": figures.image_grid(
            np.stack([inputs, recon]), "test inputs (top) and reconstructions (bottom)"
        ),
        "samples.png": figures.image_grid(samples, "samples from the prior (pixel means)"),
        "hierarchy.png": figures.image_grid(
            hierarchy,
            f"each row: one draw of the top layer z{model.n_layers}, the layers below resampled",
        ),
        "loss_curves.png": figures.loss_curves(history),
        "layer_kl.png": figures.layer_kl(history, test_kl),
    }
    probes = pd.read_csv(paths.TIME_TO_QUALITY)
    if len(probes):
        t = params.train
        pictures["time_to_quality.png"] = figures.time_to_quality(
            probes, t.probe_iw_samples, t.probe_images
        )
    with atomic.atomic_dir(paths.FIGURES) as out:
        for name, fig in pictures.items():
            figures.save(fig, out / name)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_artifacts(str(paths.FIGURES), artifact_path="figures")
    print(f"render: {len(pictures)} figures -> {paths.FIGURES}")
