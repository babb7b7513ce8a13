"""Strategy choice and the chief rule of multi-worker training (no cluster started here)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import tensorflow as tf

from hvae.errors import ConfigError
from hvae.training.distribute import choose_strategy, describe, is_chief, tf_config


def _strategy(cluster: dict, task_type: str, task_id: int) -> SimpleNamespace:
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id
    )
    return SimpleNamespace(cluster_resolver=resolver, num_replicas_in_sync=3)


WORKERS = {"worker": ["a:1", "b:1", "c:1"]}
WITH_CHIEF = {"chief": ["a:1"], "worker": ["b:1", "c:1"]}


@pytest.mark.parametrize(
    ("cluster", "task_type", "task_id", "chief"),
    [
        (WORKERS, "worker", 0, True),
        (WORKERS, "worker", 2, False),
        (WITH_CHIEF, "chief", 0, True),
        (WITH_CHIEF, "worker", 0, False),  # a named chief outranks worker 0
        (WITH_CHIEF, "worker", 1, False),
    ],
)
def test_exactly_one_chief(cluster: dict, task_type: str, task_id: int, chief: bool) -> None:
    assert is_chief(_strategy(cluster, task_type, task_id)) is chief


def test_one_process_is_its_own_chief() -> None:
    strategy = tf.distribute.get_strategy()
    assert is_chief(strategy)
    assert describe(strategy) == "1 replica"
    assert describe(_strategy(WITH_CHIEF, "worker", 1)) == "worker 1 of 3 tasks, 3 replicas"


def test_tf_config_names_the_task() -> None:
    config = json.loads(tf_config(["h:1", "h:2"], 1))
    assert config == {"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "worker", "index": 1}}


@pytest.mark.parametrize(
    "value",
    [
        "not json",
        json.dumps({"cluster": {"worker": ["h:1"]}}),  # no task
        json.dumps({"task": {"type": "worker", "index": 0}}),  # no cluster
        tf_config(["h:1", "h:2"], 2),  # index outside the cluster
        json.dumps({"cluster": {"worker": ["h:1"]}, "task": {"type": "chief", "index": 0}}),
    ],
)
def test_a_bad_tf_config_is_one_line(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(ConfigError, match=r"^TF_CONFIG: expected JSON") as error:
        choose_strategy("multi_worker")
    assert "\n" not in str(error.value)


def test_an_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match=r"train\.strategy"):
        choose_strategy("tpu")
