"""render: reconstructions, prior samples, the hierarchy figures, latent traversals,
loss and KL curves, OOD ROC curves and linear-probe accuracies; and the registered version's
model card as reports/model_card.md (the same text as its description in the registry)."""

from __future__ import annotations

import json
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
from hvae.evaluation import representations
from hvae.reporting import figures
from hvae.tracking import card, registry, runs


class _Metrics(dict):
    """A stage's metrics file: a metric it lacks is one line naming the file and the key."""

    def __init__(self, path: Path, stage: str, values: dict):
        super().__init__(values)
        self.path, self.stage = path, stage

    def __missing__(self, key: str) -> float:
        raise DataError(
            f"{self.path}: no metric {key!r} (written by an older or unfinished {self.stage}); "
            f"run `hvae {self.stage}`"
        )


def _read_csv(path: Path, stage: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except FileNotFoundError:
        raise DataError(f"{path}: not found (run `hvae {stage}` first)") from None
    except (OSError, ValueError) as exc:  # pandas' EmptyDataError and ParserError too
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: unreadable CSV ({first}); run `hvae {stage}` again") from None


def _read_metrics(path: Path, stage: str) -> _Metrics:
    try:
        metrics = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: not found (run `hvae {stage}` first)") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); run `hvae {stage}` again") from None
    if not isinstance(metrics, dict):
        raise DataError(
            f"{path}: expected a JSON object of metric names and values, got "
            f"{type(metrics).__name__}; run `hvae {stage}` again"
        )
    return _Metrics(path, stage, metrics)


def _read_reports() -> dict:
    """What train, evaluate, ood and probe wrote, checked before anything is loaded or opened."""
    reports = {
        "history": _read_csv(paths.HISTORY, "train"),
        "time_to_quality": _read_csv(paths.TIME_TO_QUALITY, "train"),
        "metrics": _read_metrics(paths.METRICS, "evaluate"),
        "ood": _read_metrics(paths.OOD_METRICS, "ood"),
        "probe": _read_metrics(paths.PROBE_METRICS, "probe"),
    }
    files = sorted(paths.OOD_ROC.glob("*.csv"))
    if not files:
        raise DataError(f"{paths.OOD_ROC}: no ROC curves (*.csv) (run `hvae ood` first)")
    reports["curves"] = {f.stem: _read_csv(f, "ood") for f in files}
    return reports


def run(params: Params, root: Path) -> None:
    started = time.perf_counter()
    r = params.render
    reports = _read_reports()
    history, metrics, curves = reports["history"], reports["metrics"], reports["curves"]
    keras.utils.set_random_seed(params.seed)
    runs.configure(root)
    run_id = runs.read_run_record(artifacts.files_digest(paths.MODELS))
    if registry.logged_model_of_run(params.registered_model, run_id) is None:
        raise DataError(
            f"run {run_id} has no version of {params.registered_model} to describe "
            "(run `hvae evaluate` first)"
        )
    model = artifacts.load_model(paths.MODELS)
    test = prepared.load_split(paths.PREPARED, paths.TRAIN_FILE, "test")
    manifest = prepared.read_manifest(paths.PREPARED)

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
    pictures.update(_layer_pictures(model, test, r))
    pictures["ood_roc.png"] = figures.ood_roc(
        curves,
        {name: reports["ood"][f"ood_{name}_auroc"] for name in curves},
        f"{manifest['dataset']} test vs {manifest['ood_dataset']} test (positives)",
    )
    probe = reports["probe"]
    budgets = sorted(
        int(k.rsplit("_n", 1)[1]) for k in probe if k.startswith("probe_z1_n") and "std" not in k
    )
    features = [f"z{i + 1}" for i in range(model.n_layers)] + ["all", "pixels"]
    pictures["probe_accuracy.png"] = figures.probe_accuracy(probe, budgets, features)
    if len(reports["time_to_quality"]):
        t = params.train
        pictures["time_to_quality.png"] = figures.time_to_quality(
            reports["time_to_quality"], t.probe_iw_samples, t.probe_images
        )
    with atomic.atomic_dir(paths.FIGURES) as out:
        for name, fig in pictures.items():
            figures.save(fig, out / name)
    version, text = card.publish(params.registered_model, run_id, model, params)
    atomic.write_text(paths.MODEL_CARD, text)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_artifacts(str(paths.FIGURES), artifact_path="figures")
        mlflow.log_artifact(str(paths.MODEL_CARD))
    runs.record_stage_time("render", run_id, {"seconds": time.perf_counter() - started})
    print(
        f"render: {len(pictures)} figures -> {paths.FIGURES}; model card of "
        f"{params.registered_model} version {version} -> {paths.MODEL_CARD}"
    )


def _layer_pictures(model, test: prepared.Split, r) -> dict:
    """What each layer holds: traversals of its most-used units, and test images whose
    upper layers are kept while the layers below are redrawn from the prior."""
    means = representations.posterior_means(model, test.images, batch_size=500)
    base = [m[0] for m in means]  # the first test image's posterior means
    spread = [m.std(axis=0) for m in means]
    pictures = {}
    for layer in range(model.n_layers):
        units = np.argsort(-spread[layer])[: r.traversal_units]
        grid = representations.traversal(model, base, spread, layer, units, r.traversal_steps)
        pictures[f"traversal_z{layer + 1}.png"] = figures.image_grid(
            grid,
            f"z{layer + 1}: each row moves one unit from -3 to +3 std, all else fixed",
            row_labels=[f"unit {u}" for u in units],
        )
    originals = test.flat()[: r.hierarchy_rows].astype(np.float32)
    for layer in range(1, model.n_layers):
        kept = representations.keep_upper_layers(
            model, [m[: r.hierarchy_rows] for m in means], layer, r.hierarchy_draws
        )
        grid = np.concatenate([originals[:, None, :], kept], axis=1)
        pictures[f"hierarchy_z{layer + 1}.png"] = figures.image_grid(
            grid,
            f"test image, then {_span(layer + 1, model.n_layers)} kept at its posterior means "
            f"and {_span(1, layer)} redrawn from the prior",
        )
    return pictures


def _span(first: int, last: int) -> str:
    return f"z{first}" if first == last else f"z{first}..z{last}"
