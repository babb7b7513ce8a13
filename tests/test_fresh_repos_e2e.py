"""End-to-end runs that each need a repo of their own: Fashion-MNIST as the trained set, and a
`dvc repro` killed mid-epoch then resumed.

Apart from test_pipeline_e2e.py (whose tests share one repo) so that `make test`'s two workers
run them beside it. Needs HVAE_DATA_DIR, as there.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from test_pipeline_e2e import (
    BIN,
    DATA_DIR,
    TINY,
    _check_ood_and_probes,
    _new_repo,
    _run,
    tiny_params,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not DATA_DIR, reason="HVAE_DATA_DIR is not set (see README)"),
]


def test_fashion_mnist_is_one_setting_away(tmp_path: Path) -> None:
    """The README's line: the same pipeline on Fashion-MNIST, MNIST as the OOD set, in its
    own experiment and registered model."""
    repo, env = _new_repo(tmp_path / "repo")
    args = [str(BIN / "dvc"), "exp", "run", "-S", "data.dataset=fashion-mnist"]
    for setting in TINY:
        args += ["-S", setting]
    output = _run(args, repo, env).stdout
    assert "fashion-mnist" in output and "vs mnist test, AUROC likelihood" in output
    manifest = json.loads((repo / "data/prepared/manifest.json").read_text())
    assert (manifest["dataset"], manifest["ood_dataset"]) == ("fashion-mnist", "mnist")
    _check_ood_and_probes(repo)

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    (version,) = client.search_model_versions("name = 'hvae-fashion-mnist'")
    assert version.tags["dataset"] == "fashion-mnist"
    assert client.search_model_versions("name = 'hvae-mnist'") == []
    run = client.get_run(version.run_id)
    assert client.get_experiment(run.info.experiment_id).name == "hvae-fashion-mnist"
    assert run.data.tags["dataset"] == "fashion-mnist"


def test_sigkill_mid_epoch_then_dvc_repro_resumes_the_same_run(tmp_path: Path) -> None:
    import signal

    import numpy as np
    from mlflow.tracking import MlflowClient

    epochs = 8
    # The shared tiny settings (the OOD and probe stages at their tiny sizes too: they run
    # after the resume), with more epochs and a probe every other one.
    tiny = tiny_params()
    tiny.update({
        "train.epochs": epochs,
        "train.probe_every_epochs": 2,
        "train.probe_iw_samples": 5,
        "train.probe_images": 200,
        "semisup.draws": 1,
        "train.resume_every_seconds": 0,  # a state after every epoch, to be killed between
    })  # fmt: skip
    repo, env = _new_repo(tmp_path / "repo", tiny)
    dvc = str(BIN / "dvc")
    log = tmp_path / "killed.log"
    with log.open("w") as out:
        first = subprocess.Popen(
            [dvc, "repro"],
            cwd=repo,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: dvc and the hvae train under it
        )
    deadline = time.monotonic() + 300
    while "Epoch 4/" not in log.read_text():
        assert first.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    time.sleep(0.5)  # into epoch 4: three epochs done and saved, the fourth half-run
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()

    state_file = repo / "models" / "checkpoints" / "resume.npz"
    with np.load(state_file) as saved:
        done = json.loads(str(saved["meta"]))
    assert 3 <= done["epoch"] < epochs
    killed_run = done["run_id"]

    again = _run([dvc, "repro"], repo, env).stdout
    assert "Stage 'prepare' didn't change, skipping" in again
    assert f"train: resuming from epoch {done['epoch']}/{epochs} of run {killed_run}" in again
    assert f"Epoch {done['epoch'] + 1}/{epochs}" in again
    assert f"Epoch {done['epoch']}/{epochs}" not in again
    assert json.loads(_run([dvc, "status", "--json"], repo, env).stdout) == {}

    # The same MLflow run carried on: every epoch once, finished, and it is the registered one.
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert json.loads((repo / "reports" / "mlflow_run.json").read_text())["run_id"] == killed_run
    run = client.get_run(killed_run)
    assert run.info.status == "FINISHED"
    steps = {m.step for m in client.get_metric_history(killed_run, "val/elbo")}
    assert steps == set(range(1, epochs + 1))
    history = (repo / "reports" / "train_history.csv").read_text().splitlines()
    assert [int(row.split(",")[0]) for row in history[1:]] == list(range(1, epochs + 1))
    (version,) = client.search_model_versions("name = 'hvae-mnist'")
    assert version.run_id == killed_run
    assert len(client.search_runs(run.info.experiment_id)) == 1
