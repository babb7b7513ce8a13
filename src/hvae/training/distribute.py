"""Pick the tf.distribute strategy, and tell the chief worker from the others.

`auto`: one device, or MirroredStrategy over all local GPUs. `multi_worker`:
MultiWorkerMirroredStrategy over the cluster in TF_CONFIG, where every worker runs `hvae
train` and the chief alone logs to MLflow and writes files.
"""

from __future__ import annotations

import hashlib
import json
import os

import keras
import tensorflow as tf

from hvae.errors import ConfigError


def choose_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy named by train.strategy; create it before any other TensorFlow work."""
    if name == "multi_worker":
        _check_tf_config(os.environ.get("TF_CONFIG"))
        _reduce_scalar_logs_over_workers()
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    if name == "one_device" or name == "auto":
        return tf.distribute.get_strategy()
    raise ValueError(f"train.strategy: unknown strategy {name!r}")


def _check_tf_config(value: str | None) -> None:
    """One line about a malformed TF_CONFIG, instead of TensorFlow's traceback or a hang."""
    if value is None:
        return  # TensorFlow then trains on this machine alone
    try:
        config = json.loads(value)
        workers = config["cluster"]["worker"]
        task = config["task"]
        ok = isinstance(workers, list) and task["type"] in config["cluster"]
        ok = ok and 0 <= int(task["index"]) < len(config["cluster"][task["type"]])
    except (ValueError, TypeError, KeyError):
        ok = False
    if not ok:
        raise ConfigError(
            'TF_CONFIG: expected JSON like {"cluster": {"worker": ["host:port", ...]}, '
            '"task": {"type": "worker", "index": 0}} with the task in the cluster'
        )


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True for the worker that logs and saves: the `chief` task, else worker 0.

    Always true outside multi-worker training.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = resolver.task_type if resolver is not None else None
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and resolver.task_id == 0 and not has_chief


def describe(strategy: tf.distribute.Strategy) -> str:
    """e.g. 'worker 1 of 2, 2 replicas' (multi-worker) or '1 replica'."""
    replicas = strategy.num_replicas_in_sync
    text = f"{replicas} replica{'s' if replicas > 1 else ''}"
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is not None and resolver.task_type is not None:
        workers = sum(len(v) for v in resolver.cluster_spec().as_dict().values())
        text = f"{resolver.task_type} {resolver.task_id} of {workers} tasks, {text}"
    return text


def weights_digest(model: keras.Model) -> str:
    """A short hash of every weight's bytes: equal on all workers that trained in step."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(weight.tobytes())
    return digest.hexdigest()[:16]


def _reduce_scalar_logs_over_workers() -> None:
    """Work around Keras 3 failing on fit()'s scalar logs under MultiWorkerMirroredStrategy.

    keras reduces each step's logs with strategy.reduce(MEAN, value, axis=0), which raises
    "Invalid reduction dimension 0 for input with 0 dimensions" for scalars
    (tensorflow/tensorflow#72388, open with Keras 3.15). Scalars are reduced over the
    replicas alone; anything else goes to keras unchanged.
    """
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    original = trainer.reduce_per_replica
    if getattr(original, "scalar_safe", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction not in ("auto", "mean") or not trainer._collective_all_reduce_multi_worker(
            strategy
        ):
            return original(values, strategy, reduction)

        def reduce(value):
            if value.shape.rank == 0:
                return strategy.reduce("MEAN", value, axis=None)
            return original(value, strategy, reduction)

        return tree.map_structure(reduce, values)

    reduce_per_replica.scalar_safe = True
    trainer.reduce_per_replica = reduce_per_replica


def tf_config(workers: list[str], index: int) -> str:
    """TF_CONFIG for worker `index` of a cluster of plain workers (worker 0 is the chief)."""
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
