"""A train that fails or is stopped leaves nothing evaluate would register as its model.

CLI-level on real MNIST and a tiny model: one good train, then a train that breaks down
(a learning rate that makes the loss non-finite) and one stopped by SIGINT in its second
epoch. After each, `hvae evaluate` (and render) refuse in one line, write and register
nothing, and leave the run as train left it (FAILED or KILLED, never flipped to FINISHED).
That evaluate tags the version with the same digest is checked in test_pipeline_e2e.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = os.environ.get("HVAE_DATA_DIR")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not DATA, reason="HVAE_DATA_DIR (the raw MNIST files) is not set"),
]

TINY = {
    "train": {
        "epochs": 1,
        "batch_size": 500,
        "kl_warmup_epochs": 0,
        "probe_every_epochs": 0,
        "log_every_steps": 20,
    },
    "model": {"latent_dims": [4, 2], "hidden_dim": 16},
    "evaluate": {"iw_samples": 2, "chunk_size": 2, "llr_samples": 1, "probe_labels": [100]},
    "semisup": {"labels": [100], "serve_labels": 100, "draws": 1, "graph_images": 2000},
    "calibrate": {"fit_images": 100, "validation_images": 100},
}


def _params(tmp: Path, name: str, **overrides: dict) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in {**TINY, **overrides}.items():
        params[section] = {**params[section], **TINY.get(section, {}), **values}
    path = tmp / name
    path.write_text(yaml.safe_dump(params))
    return path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "HVAE_DATA_DIR": str(DATA)}


def _hvae(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hvae.cli", *args],
        cwd=project,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )


def _client(project: Path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{project / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _record(project: Path) -> dict:
    return json.loads((project / "reports" / "mlflow_run.json").read_text())


def _refused(project: Path, stage: str, run_id: str) -> None:
    """`hvae <stage>` on the record of an unfinished train: one line, nothing done."""
    client = _client(project)
    versions = len(client.search_model_versions("name = 'hvae-mnist'"))
    status = client.get_run(run_id).info.status
    result = _hvae(project, stage, "--params", "good.yaml")
    assert result.returncode == 1, result.stderr
    unfinished = (
        f"reports/mlflow_run.json: run {run_id} did not finish training (it "
        "failed, was killed or is still running), so models/ holds no weights of it; "
        "run `hvae train`"
    )
    # ood and render stop even earlier here: evaluate never wrote what they read.
    expected = {
        "evaluate": unfinished,
        "probe": unfinished,
        "semisup": unfinished,
        "calibrate": unfinished,
        "ood": "data/scores/test.npz: not found (run `hvae evaluate` first)",
        "render": "reports/metrics.json: not found (run `hvae evaluate` first)",
    }
    assert result.stderr.strip().splitlines() == [f"hvae {stage}: error: {expected[stage]}"]
    assert len(client.search_model_versions("name = 'hvae-mnist'")) == versions
    assert client.get_run(run_id).info.status == status
    written_by_stages = ("metrics.json", "ood.json", "probe.json", "semisup.json", "figures")
    written_by_stages += ("calibrate.json",)
    for written in (*written_by_stages, "model_card.md"):
        assert not (project / "reports" / written).exists(), written


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """prepare and train once on the tiny configuration."""
    project = tmp_path_factory.mktemp("lineage")
    _params(project, "good.yaml")
    for stage in ("prepare", "train"):
        result = _hvae(project, stage, "--params", "good.yaml")
        assert result.returncode == 0, result.stderr
    return project


def test_a_finished_train_ties_record_run_and_files(project: Path) -> None:
    from hvae import artifacts

    record = _record(project)
    digest = artifacts.files_digest(project / "models")
    assert record["model_digest"] == digest
    run = _client(project).get_run(record["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["model_digest"] == digest


def test_a_failed_train_is_never_registered(project: Path) -> None:
    _params(project, "doomed.yaml", train={"learning_rate": 1e30})
    first = _record(project)["run_id"]
    result = _hvae(project, "train", "--params", "doomed.yaml")
    assert result.returncode == 1
    assert "hvae train: error: " in result.stderr.strip().splitlines()[-1]
    failed = _record(project)["run_id"]
    assert failed != first and "model_digest" not in _record(project)
    assert _client(project).get_run(failed).info.status == "FAILED"
    for stage in ("evaluate", "ood", "probe", "semisup", "calibrate", "render"):
        _refused(project, stage, failed)


def test_an_interrupted_train_is_killed_and_never_registered(project: Path) -> None:
    _params(project, "long.yaml", train={"epochs": 50})
    train = subprocess.Popen(
        [sys.executable, "-m", "hvae.cli", "train", "--params", "long.yaml"],
        cwd=project,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # A shell starts background jobs with SIGINT ignored, and the child would inherit it
        # (Python then keeps ignoring Ctrl-C): give train the disposition a terminal gives it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 300
        for line in train.stdout:  # one line per epoch: stop it once training is under way
            if line.startswith("Epoch 2/") or time.monotonic() > deadline:
                break
        train.send_signal(signal.SIGINT)
        # communicate, not wait: the rest of its output must be read or a full pipe blocks it.
        output, _ = train.communicate(timeout=300)
        assert train.returncode == 130, output[-3000:]
    finally:
        train.kill()
    killed = _record(project)["run_id"]
    assert "model_digest" not in _record(project)
    assert _client(project).get_run(killed).info.status == "KILLED"
    _refused(project, "evaluate", killed)
