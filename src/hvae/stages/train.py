"""train: fit the hierarchical VAE, log the run to MLflow, keep the best-on-validation weights.

A killed run resumes: the next `hvae train` (or `dvc repro`) with the same params and data
carries on from the last completed epoch, in the same MLflow run (see hvae.training.resume).
"""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path

import keras
import mlflow
import pandas as pd
import tensorflow as tf

from hvae import artifacts, atomic, paths
from hvae.config import Params, flatten
from hvae.data import pipeline, prepared
from hvae.model.hvae import pixel_logits
from hvae.tracking import runs
from hvae.training import determinism, distribute, resume
from hvae.training.callbacks import Checkpoint, EpochRecorder, NllProbe, StopOnNonFiniteLoss
from hvae.training.fit import compiled_model, training_callbacks


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
    t = params.train
    # First: determinism and multi-worker collectives must be set up before any other
    # TensorFlow work.
    determinism.configure(t.deterministic)
    strategy = distribute.choose_strategy(t.strategy)
    keras.utils.set_random_seed(params.seed)
    chief = distribute.is_chief(strategy)
    manifest = prepared.read_manifest(paths.PREPARED)  # no prepared data: stop before the store
    if chief:
        # Before any training: a store or experiment that would lose the run's artifacts
        # stops the stage now, not after an hour of training.
        runs.configure(root)
        experiment_id = runs.ensure_experiment(params.experiment, root)
    train = prepared.load_split(paths.PREPARED, paths.TRAIN_FILE, "train")
    valid = prepared.load_split(paths.PREPARED, paths.TRAIN_FILE, "valid")
    # train.batch_size is global: each step splits it over the replicas (of all workers),
    # so steps per epoch, the learning rate and its schedule do not depend on their number.
    steps_per_epoch = len(train) // t.batch_size
    with strategy.scope():
        model = compiled_model(params, steps_per_epoch, pixel_logits(train.images))
    # train.precision auto depends on the hardware: say what it became.
    print(f"train: {distribute.describe(strategy)}, {model.dtype_policy.name}", flush=True)

    fit = functools.partial(
        model.fit,
        pipeline.train_dataset(train.images, t.batch_size, params.seed),
        validation_data=pipeline.eval_dataset(valid.images, t.batch_size),
        epochs=t.epochs,
        shuffle=False,  # tf.data reshuffles every epoch itself
        # A progress bar for a person at a terminal, one line per epoch for logs and CI.
        verbose=1 if sys.stdout.isatty() else 2,
    )
    if not chief:
        # Another worker trains in lock step with the chief, which alone logs and writes.
        fit(callbacks=[StopOnNonFiniteLoss(), *training_callbacks(params)])
        print(f"train: done; weights {distribute.weights_digest(model)}", flush=True)
        return
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)

    state_path = paths.CHECKPOINTS / resume.STATE_FILE
    # What the weights depend on; evaluate/render/mlflow settings may change in between.
    fingerprint = prepared.json_digest(
        {
            "seed": params.seed,
            "model": params.model.model_dump(),
            # Not how often the state is saved: that changes no weight.
            "train": params.train.model_dump(exclude={"resume_every_seconds"}),
            "data": manifest["digest"],
        }
    )
    state = None
    if not multi_worker:  # other workers could not restore the chief's saved state
        state = _resumable(resume.load(state_path), fingerprint, state_path)
    with (
        mlflow.start_run(
            run_id=state.run_id if state else None,
            experiment_id=None if state else experiment_id,
            run_name=None if state else os.environ.get("DVC_EXP_NAME"),
            tags=None if state else runs.run_tags(root),
            log_system_metrics=True,  # CPU, memory (and GPU when present) sampled during training
        ) as run,
        runs.killed_on_interrupt(),
    ):
        # No digest yet: until this train finishes, evaluate and render refuse the record.
        runs.write_run_record(run.info.run_id, params.experiment)
        mlflow.log_params(flatten(params))
        mlflow.set_tags(
            {
                "dataset": manifest["dataset"],
                "data_digest": manifest["digest"],
                "params_digest": prepared.json_digest(flatten(params)),
                "replicas": str(strategy.num_replicas_in_sync),
                "strategy": type(strategy).__name__,
                "precision": model.dtype_policy.name,
            }
        )
        mlflow.log_param("model.parameters", model.count_params())
        runs.log_training_data(
            f"{manifest['dataset']}-train", manifest["digest"][:16], train.flat(), train.labels
        )

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
        elif multi_worker:
            print("train: no resume checkpoints with train.strategy multi_worker", flush=True)
        else:
            saver = resume.ResumeCheckpoint(
                state_path,
                fingerprint,
                run.info.run_id,
                checkpoint,
                recorder,
                probe,
                every_seconds=t.resume_every_seconds,
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
        fit(initial_epoch=state.epoch if state else 0, callbacks=callbacks)
        digest = distribute.weights_digest(model)
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
        _write_kl_per_layer(model.kl_names)
        atomic.write_json(paths.timings("train"), {"seconds": seconds})
        mlflow.log_artifact(str(paths.HISTORY))
        mlflow.log_artifact(str(paths.TIME_TO_QUALITY))
        # Last: the run and the record name the model files only once they are final.
        model_digest = artifacts.files_digest(paths.MODELS)
        mlflow.set_tag(runs.MODEL_DIGEST, model_digest)
        runs.write_run_record(run.info.run_id, params.experiment, model_digest)
    print(
        f"train: best validation ELBO {checkpoint.best_value:.2f} nats at epoch "
        f"{checkpoint.best_epoch}/{t.epochs}; {seconds:.0f} s; run {run.info.run_id}; "
        f"weights {digest}; model files {model_digest}"
    )


def _write_kl_per_layer(kl_names: list[str]) -> None:
    """reports/kl_per_layer/<layer>.csv from the history: one file per layer, so that the
    dvc.yaml plot draws every layer, however many model.latent_dims has."""
    history = pd.read_csv(paths.HISTORY)
    with atomic.atomic_dir(paths.KL_PER_LAYER) as out:
        for name in kl_names:
            layer = name.removeprefix("kl_")
            frame = pd.DataFrame(
                {
                    "epoch": history["epoch"],
                    "train_kl": history[f"train_{name}"],
                    "val_kl": history[f"val_{name}"],
                }
            )
            frame.to_csv(out / f"{layer}.csv", index=False)
