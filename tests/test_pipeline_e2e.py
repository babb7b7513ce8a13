"""The real pipeline, end to end: `dvc exp run` in a throwaway git repo on real MNIST.

Needs HVAE_DATA_DIR (a folder with mnist/ and fashion-mnist/ IDX files) because these
machines cannot reach the public mirrors; `.ci/run` sets it.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DATA_DIR = os.environ.get("HVAE_DATA_DIR")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not DATA_DIR, reason="HVAE_DATA_DIR is not set (see README)"),
]

TINY = [
    "train.epochs=1",
    "evaluate.iw_samples=10",
    "evaluate.chunk_size=10",
    "model.hidden_dim=32",
    "train.batch_size=250",
    "train.kl_warmup_epochs=1",
    "train.log_every_steps=100",
    "render.n_samples=16",
    "render.hierarchy_rows=2",
]
PROJECT_FILES = ["dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", ".dvc/config"]


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory):
    repo = tmp_path_factory.mktemp("e2e") / "repo"
    repo.mkdir()
    for name in PROJECT_FILES:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, repo / name)
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        HVAE_DATA_DIR=str(Path(DATA_DIR).resolve()),
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="e2e",
        GIT_AUTHOR_EMAIL="e2e@example.invalid",
        GIT_COMMITTER_NAME="e2e",
        GIT_COMMITTER_EMAIL="e2e@example.invalid",
    )
    _run(["git", "init", "-q", "-b", "main"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "baseline"], repo, env)
    args = [str(BIN / "dvc"), "exp", "run"]
    for setting in TINY:
        args += ["-S", setting]
    result = _run(args, repo, env)
    return repo, env, result.stdout + result.stderr


def test_every_stage_ran(pipeline_run) -> None:
    repo, _, output = pipeline_run
    for stage in ("prepare", "train", "evaluate", "render"):
        assert f"Running stage '{stage}'" in output
        assert f"hvae {stage}: done" in output
    lock = (repo / "dvc.lock").read_text()
    for stage in ("prepare", "train", "evaluate", "render"):
        assert f"  {stage}:" in lock


def test_metrics_are_consistent(pipeline_run) -> None:
    repo, _, _ = pipeline_run
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert math.isfinite(metrics["test_nll"])
    assert metrics["iw_samples"] == 10
    assert metrics["test_images"] == 10_000
    # The IW estimate is a tighter bound than the ELBO, so NLL <= -ELBO.
    assert metrics["test_nll"] <= -metrics["test_elbo"]
    for layer, dim in enumerate((32, 16, 8), start=1):
        assert metrics[f"test_kl_z{layer}"] >= 0
        assert metrics[f"active_units_z{layer}"] in range(dim + 1)


def test_mlflow_run_and_registry(pipeline_run) -> None:
    from mlflow.tracking import MlflowClient

    repo, _, _ = pipeline_run
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run_id = json.loads((repo / "reports/mlflow_run.json").read_text())["run_id"]
    run = client.get_run(run_id)
    assert run.data.params["train.epochs"] == "1"
    for split in ("train", "val"):
        for layer in (1, 2):
            history = client.get_metric_history(run_id, f"{split}/kl_z{layer}")
            assert [m.step for m in history] == [1]
    assert "test/nll" in run.data.metrics
    # 50 000 images / batch 250 = 200 steps; per-step metrics every 100 steps.
    assert [m.step for m in client.get_metric_history(run_id, "step/elbo")] == [100, 200]
    # beta = step/200; each point is the mean over the 10 steps of its compiled call
    # (steps 91-100 and 191-200), not the epoch's running mean (0.2525 at step 100).
    betas = [m.value for m in client.get_metric_history(run_id, "step/beta")]
    assert betas == pytest.approx([95.5 / 200, 195.5 / 200], abs=1e-4)
    assert client.get_metric_history(run_id, "train/skip_rate")[0].value == 0.0
    assert client.get_metric_history(run_id, "train/grad_norm")[0].value > 0.0
    # Time to quality: one probe at the last (only) epoch, in MLflow and in the CSV.
    (probe,) = client.get_metric_history(run_id, "val/nll_k100")
    rows = (repo / "reports/time_to_quality.csv").read_text().splitlines()
    assert rows[0] == "epoch,train_seconds,val_nll" and len(rows) == 2
    assert float(rows[1].split(",")[2]) == pytest.approx(probe.value, rel=1e-6)
    assert 0 < float(rows[1].split(",")[1]) < 600
    assert run.data.tags["data_digest"]
    assert run.inputs.dataset_inputs, "the training data is logged as a run input"

    versions = client.search_model_versions("name = 'hvae-mnist'")
    assert [v.run_id for v in versions] == [run_id]
    version = versions[0]
    assert float(version.tags["test_nll"]) == pytest.approx(run.data.metrics["test/nll"], abs=1e-3)
    for tag in ("git_commit", "params_digest", "data_digest"):
        assert version.tags[tag] not in ("", "unknown")

    artifacts = {a.path for a in client.list_artifacts(run_id, "figures")}
    assert "figures/hierarchy.png" in artifacts


def test_figures_are_pngs(pipeline_run) -> None:
    repo, _, _ = pipeline_run
    names = ["reconstructions", "samples", "hierarchy", "loss_curves", "layer_kl"]
    names.append("time_to_quality")
    for name in names:
        data = (repo / "reports/figures" / f"{name}.png").read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 2_000, name


def test_dvc_status_clean_and_second_repro_does_nothing(pipeline_run) -> None:
    repo, env, _ = pipeline_run
    dvc = str(BIN / "dvc")
    assert json.loads(_run([dvc, "status", "--json"], repo, env).stdout) == {}
    again = _run([dvc, "repro"], repo, env).stdout
    assert "Running stage" not in again


def test_train_change_reruns_train_onwards_never_prepare(pipeline_run) -> None:
    """Runs last: it trains a second experiment in the same workspace."""
    repo, env, _ = pipeline_run
    args = [str(BIN / "dvc"), "exp", "run"]
    for setting in [*TINY[1:], "train.epochs=2"]:
        args += ["-S", setting]
    output = _run(args, repo, env).stdout
    assert "Stage 'prepare' didn't change, skipping" in output
    assert set(re.findall(r"Running stage '(\w+)'", output)) == {"train", "evaluate", "render"}

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    runs = {v.run_id for v in client.search_model_versions("name = 'hvae-mnist'")}
    assert len(runs) == 2, "one registered version per training run, no duplicates"
