"""Keras callbacks that record training: MLflow metrics, the history CSV, checkpoints."""

from __future__ import annotations

import math
import time
from pathlib import Path

import keras
import pandas as pd
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from hvae import atomic, interrupts
from hvae.errors import TrainingError
from hvae.evaluation import bounds


def _learning_rate(model: keras.Model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


class EpochRecorder(keras.callbacks.Callback):
    """One row per epoch, sent to MLflow and to a CSV for `dvc plots`: the same numbers.

    MLflow also gets `step/*` metrics about every `every_steps` optimizer steps, so a long
    epoch is visible while it runs: the mean over the steps since the previous callback
    (one compiled call of `steps_per_execution` steps), not the epoch's running mean.
    """

    def __init__(self, run_id: str, csv_path: Path, every_steps: int):
        super().__init__()
        self.client = MlflowClient()
        self.run_id = run_id
        self.csv_path = Path(csv_path)
        self.every_steps = every_steps
        self.rows: list[dict[str, float]] = []
        self._logged_step = 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started = time.perf_counter()
        self._previous: tuple[int, dict] = (0, {})

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        # Keras reports running means over the epoch. After n batches the mean of the batches
        # since the previous report (after n0) is (n*mean_n - n0*mean_n0) / (n - n0).
        logs = {k: float(v) for k, v in (logs or {}).items()}
        n0, previous = self._previous
        n = batch + 1
        self._previous = (n, logs)
        step = int(self.model.optimizer.iterations.numpy())
        if step // self.every_steps <= self._logged_step // self.every_steps or not logs:
            return
        self._logged_step = step
        now = int(time.time() * 1000)
        metrics = [
            Metric(f"step/{k}", (n * v - n0 * previous.get(k, v)) / (n - n0), now, step)
            for k, v in logs.items()
        ]
        self.client.log_batch(self.run_id, metrics=metrics)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        row = {"epoch": epoch + 1}
        for key, value in (logs or {}).items():
            split, name = ("val", key[4:]) if key.startswith("val_") else ("train", key)
            row[f"{split}_{name}"] = float(value)
        row["lr"] = _learning_rate(self.model)
        row["epoch_seconds"] = time.perf_counter() - self._started
        self.rows.append(row)
        atomic.write_text(self.csv_path, pd.DataFrame(self.rows).to_csv(index=False))
        now = int(time.time() * 1000)
        metrics = [
            Metric(k.replace("_", "/", 1), v, now, epoch + 1)
            for k, v in row.items()
            if k != "epoch" and math.isfinite(v)
        ]
        self.client.log_batch(self.run_id, metrics=metrics)


class Checkpoint(keras.callbacks.Callback):
    """Save the best-on-validation weights, atomically, and keep a copy for the resume state."""

    def __init__(self, best: Path, monitor: str = "val_elbo"):
        super().__init__()
        self.best, self.monitor = Path(best), monitor
        self.best_value = -math.inf
        self.best_epoch = 0
        self.best_weights: list | None = None

    def save_best(self, value: float, epoch: int) -> None:
        """Record the model's current weights as the best, reached at `epoch` (1-based)."""
        self.best_value, self.best_epoch = float(value), epoch
        self.best_weights = self.model.get_weights()
        self.best.parent.mkdir(parents=True, exist_ok=True)
        # Keras infers the format from the suffix, so the temporary file keeps it.
        tmp = self.best.with_name(f".{self.best.stem}.tmp.weights.h5")
        self.model.save_weights(tmp, overwrite=True)
        tmp.replace(self.best)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is not None and math.isfinite(value) and value > self.best_value:
            self.save_best(value, epoch + 1)


class RaiseIfInterrupted(keras.callbacks.Callback):
    """Ctrl-C or SIGTERM that TensorFlow or Keras swallowed mid-step (see hvae.interrupts)
    stops fit() at the next batch instead of letting it run every epoch."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        interrupts.raise_if_received()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        interrupts.raise_if_received()

    def on_test_batch_end(self, batch: int, logs: dict | None = None) -> None:
        interrupts.raise_if_received()


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """A non-finite training loss ends the run with an error naming where it happened.

    The train step already skips single non-finite *updates*; a NaN or inf loss means the
    forward pass itself broke, which no skip repairs. Raising (rather than keras'
    TerminateOnNaN, which ends fit() quietly) makes the stage fail, so DVC runs neither
    evaluate nor the registration. With several steps per call the step named is the last
    of the call in which it showed.
    """

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch = epoch + 1

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingError(
                f"the training loss became {float(loss)} at epoch {self._epoch}, step "
                f"{batch + 1}; stopped before saving a model (nothing is registered)"
            )


class NllProbe(keras.callbacks.Callback):
    """Time to quality: every `every` epochs, the importance-weighted NLL (k samples) of a
    fixed validation subset against the training wall-clock so far (the probe's own time
    excluded). Written to a CSV for `dvc plots` and to MLflow as `val/nll_k{k}`.
    """

    def __init__(self, run_id: str, csv_path: Path, images, every: int, k: int, chunk: int):
        super().__init__()
        self.client = MlflowClient()
        self.run_id, self.csv_path = run_id, Path(csv_path)
        self.images, self.every, self.k, self.chunk = images, every, k, chunk
        self.rows: list[dict[str, float]] = []
        self.train_seconds = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.train_seconds += time.perf_counter() - self._started
        if (epoch + 1) % self.every and epoch + 1 != self.params["epochs"]:
            return
        log_px = bounds.iw_log_likelihood(self.model, self.images, self.k, 100, self.chunk)
        nll = float(-log_px.mean())
        self.rows.append(
            {"epoch": epoch + 1, "train_seconds": round(self.train_seconds, 1), "val_nll": nll}
        )
        atomic.write_text(self.csv_path, pd.DataFrame(self.rows).to_csv(index=False))
        metric = Metric(f"val/nll_k{self.k}", nll, int(time.time() * 1000), epoch + 1)
        self.client.log_batch(self.run_id, metrics=[metric])
