"""train: fit the hierarchical VAE, log the run to MLflow, keep the best-on-validation weights.

A killed run resumes: the next `hvae train` (or `dvc repro`) with the same params and data
carries on from the last completed epoch, in the same MLflow run (see hvae.resume).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import keras
import mlflow

from hvae import artifacts, atomic, paths, resume, tracking
from hvae.callbacks import Checkpoint, EpochRecorder, NllProbe, StopOnNonFiniteLoss
from hvae.config import Params, flatten
from hvae.data import pipeline, prepared
from hvae.distribute import choose_strategy
from hvae.model.hvae import pixel_logits
from hvae.training import compiled_model, training_callbacks


def _log_dataset(manifest: dict, train: prepared.Split) -> None:
    dataset = mlflow.data.from_numpy(
        train.flat(),
        targets=train.labels,
        name=f"{manifest['dataset']}-train",
        digest=manifest["digest"][:16],
    )
    mlflow.log_input(dataset, context="training")


def _resumable(
    state: resume.ResumeState | None, fingerprint: str, path: Path
) -> resume.ResumeState | None:
    """The saved state if this run should continue it, else None (and say why)."""
    if state is None:
        return None
    if state.fingerprint != fingerprint:
        print(f"train: {path} is from other params or data; starting from scratch", flush=True)
        return None
    if state.complete:
        print(f"train: {path} is from a finished run; starting from scratch", flush=True)
        return None
    try:
        mlflow.tracking.MlflowClient().get_run(state.run_id)
    except mlflow.exceptions.MlflowException:
        print(f"train: run {state.run_id} is not in this store; starting from scratch", flush=True)
        return None
    return state


def run(params: Params, root: Path) -> None:
    started = time.perf_counter()
    keras.utils.set_random_seed(params.seed)
    t = params.train
    manifest = prepared.read_manifest(paths.PREPARED)
    train = prepared.load_split(paths.PREPARED, paths.TRAIN_FILE, "train")
    valid = prepared.load_split(paths.PREPARED, paths.TRAIN_FILE, "valid")
    steps_per_epoch = len(train) // t.batch_size

    strategy = choose_strategy(t.strategy)
    with strategy.scope():
        model = compiled_model(params, steps_per_epoch, pixel_logits(train.images))

    train_ds = pipeline.train_dataset(train.images, t.batch_size, params.seed)
    valid_ds = pipeline.eval_dataset(valid.images, t.batch_size)

    tracking.configure(root)
    experiment_id = tracking.ensure_experiment(params.experiment, root)
    state_path = paths.CHECKPOINTS / resume.STATE_FILE
    # What the weights depend on; evaluate/render/mlflow settings may change in between.
    fingerprint = prepared.json_digest(
        {
            "seed": params.seed,
            "model": params.model.model_dump(),
            "train": params.train.model_dump(),
            "data": manifest["digest"],
        }
    )
    state = _resumable(resume.load(state_path), fingerprint, state_path)
    with mlflow.start_run(
        run_id=state.run_id if state else None,
        experiment_id=None if state else experiment_id,
        run_name=None if state else os.environ.get("DVC_EXP_NAME"),
        tags=None if state else tracking.run_tags(root),
        log_system_metrics=True,  # CPU, memory (and GPU when present) sampled during training
    ) as run:
        tracking.write_run_record(run.info.run_id, params.experiment)
        mlflow.log_params(flatten(params))
        mlflow.set_tags(
            {
                "dataset": manifest["dataset"],
                "data_digest": manifest["digest"],
                "params_digest": prepared.json_digest(flatten(params)),
                "replicas": str(strategy.num_replicas_in_sync),
            }
        )
        mlflow.log_param("model.parameters", model.count_params())
        _log_dataset(manifest, train)

        checkpoint = Checkpoint(best=paths.MODELS / artifacts.WEIGHTS)
        checkpoint.set_model(model)
        recorder = EpochRecorder(run.info.run_id, paths.HISTORY, t.log_every_steps)
        probe = None
        if t.probe_every_epochs:
            probe = NllProbe(
                run.info.run_id,
                paths.TIME_TO_QUALITY,
                valid.flat()[: t.probe_images].astype("float32"),
                t.probe_every_epochs,
                t.probe_iw_samples,
                chunk=min(t.probe_iw_samples, 100),
            )
        saver = None
        if t.ema_decay > 0:
            # Keras swaps the averaged weights in and out around each epoch's end, so a
            # saved state would hold them swapped; not supported yet.
            print("train: no resume checkpoints with train.ema_decay > 0", flush=True)
        else:
            saver = resume.ResumeCheckpoint(
                state_path, fingerprint, run.info.run_id, checkpoint, recorder, probe
            )
        if state is not None:
            resume.restore(state, model, checkpoint, recorder, probe)
            print(
                f"train: resuming from epoch {state.epoch}/{t.epochs} of run {state.run_id} "
                f"({state_path})",
                flush=True,
            )
        callbacks = [
            StopOnNonFiniteLoss(),
            *training_callbacks(params),
            recorder,
            checkpoint,
            *([probe] if probe else []),
            *([saver] if saver else []),  # last: it saves what the others recorded
        ]
        model.fit(
            train_ds,
            validation_data=valid_ds,
            epochs=t.epochs,
            initial_epoch=state.epoch if state else 0,
            callbacks=callbacks,
            shuffle=False,  # tf.data reshuffles every epoch itself
            # A progress bar for a person at a terminal, one line per epoch for logs and CI.
            verbose=1 if sys.stdout.isatty() else 2,
        )
        artifacts.save_config(model, paths.MODELS)
        if not t.probe_every_epochs:  # the stage's declared out exists either way
            atomic.write_text(paths.TIME_TO_QUALITY, "epoch,train_seconds,val_nll\n")
        seconds = time.perf_counter() - started
        mlflow.log_metrics(
            {
                "best_epoch": checkpoint.best_epoch,
                "best_val_elbo": checkpoint.best_value,
                "time/train_seconds": seconds,
            }
        )
        mlflow.log_artifact(str(paths.HISTORY))
        mlflow.log_artifact(str(paths.TIME_TO_QUALITY))
    print(
        f"train: best validation ELBO {checkpoint.best_value:.2f} nats at epoch "
        f"{checkpoint.best_epoch}/{t.epochs}; {seconds:.0f} s; run {run.info.run_id}"
    )
