"""Validation NLL against wall-clock training time for the default configuration.

    python -m bench.time_to_quality [--params params.yaml] [--every 5] [--epochs N]

Trains the default model from scratch (as the train stage does, without MLflow) and, every
`--every` epochs, estimates the NLL (k = 100) of a fixed 1000-image validation subset.
Evaluation time is excluded from the clock. Writes reports/bench/time_to_quality.csv and
reports/bench/time_to_quality.png. Needs data/prepared (run `dvc repro prepare`).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import matplotlib.pyplot as plt
import pandas as pd

from hvae import atomic, evaluation, figures, paths
from hvae.config import load_params
from hvae.data import pipeline, prepared
from hvae.model.hvae import pixel_logits
from hvae.training import compiled_model, training_callbacks

OUT = Path("reports/bench")
SUBSET, K = 1000, 100


class NllProbe(keras.callbacks.Callback):
    def __init__(self, images, every: int):
        super().__init__()
        self.images, self.every = images, every
        self.rows: list[dict] = []
        self.training_seconds = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.training_seconds += time.perf_counter() - self._started
        if (epoch + 1) % self.every == 0 or epoch + 1 == self.params["epochs"]:
            log_px = evaluation.iw_log_likelihood(self.model, self.images, K, 100, K)
            self.rows.append(
                {
                    "epoch": epoch + 1,
                    "train_seconds": round(self.training_seconds, 1),
                    "val_nll_k100": float(-log_px.mean()),
                }
            )
            print(self.rows[-1], flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=None, help="default: train.epochs")
    args = parser.parse_args()
    params = load_params(args.params)
    keras.utils.set_random_seed(params.seed)
    train = prepared.load_split(paths.PREPARED, paths.TRAIN_FILE, "train")
    valid = prepared.load_split(paths.PREPARED, paths.TRAIN_FILE, "valid")
    batch = params.train.batch_size
    model = compiled_model(params, len(train) // batch, pixel_logits(train.images))
    probe = NllProbe(valid.images[:SUBSET], args.every)
    model.fit(
        pipeline.train_dataset(train.images, batch, params.seed),
        epochs=args.epochs or params.train.epochs,
        callbacks=[*training_callbacks(params), probe],
        verbose=0,
    )
    table = pd.DataFrame(probe.rows)
    atomic.write_text(OUT / "time_to_quality.csv", table.to_csv(index=False))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(table["train_seconds"] / 60, table["val_nll_k100"], "o-")
    ax.set(
        xlabel="training wall-clock minutes (evaluation excluded)",
        ylabel=f"validation NLL, k={K}, {SUBSET} images (nats)",
        title="time to quality, default configuration",
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    figures.save(fig, OUT / "time_to_quality.png")
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
