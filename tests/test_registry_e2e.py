"""Registered versions a team can ship: nothing lost, loadable anywhere, reproducible.

In a fresh repo with no MLflow store, the very first run is `dvc exp run --temp` and the
second a queued one (`--queue`): both run in DVC workspaces that DVC deletes afterwards, so
their artifacts must still live under the repository. Then a version is loaded in a clean
virtualenv built from its own requirements.txt alone, its Dockerfile is generated, and the
tiny training runs twice (once under load) to the same weights. Needs HVAE_DATA_DIR like the
other e2e tests.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_pipeline_e2e import BIN, DATA_DIR, _hvae, _new_repo, _run, _test_frame, tiny_params
from test_team_e2e import _run_queue, _tiny_settings

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not DATA_DIR, reason="HVAE_DATA_DIR is not set (see README)"),
]

NAME = "hvae-mnist"
SCORE = """\
import json, sys
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
frame = pd.read_json(sys.argv[2], orient="split")
print(json.dumps(model.predict(frame, params={"iw_samples": 8}).to_dict(orient="list")))
"""


def _client(repo: Path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{repo / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture(scope="module")
def first_runs(tmp_path_factory: pytest.TempPathFactory):
    """A fresh store whose first run is `--temp` and whose second is queued."""
    base = tmp_path_factory.mktemp("registry-e2e")
    repo, env = _new_repo(base / "repo")
    assert not (repo / "mlflow.db").exists()
    dvc = str(BIN / "dvc")
    _run([dvc, "exp", "run", "--temp", *_tiny_settings()], repo, env)
    queued = [arg.replace("train.epochs=1", "train.epochs=2") for arg in _tiny_settings()]
    _run([dvc, "exp", "run", "--queue", "-n", "queued", *queued], repo, env)
    status = _run_queue(repo, env, ["queued"], base / "queue.log")
    assert status.get("queued") == "Success", (status, (base / "queue.log").read_text()[-3000:])
    # Neither run touched the workspace; its test images come from a prepare of its own.
    assert not (repo / "data" / "prepared").exists() and not (repo / "models").exists()
    _run([str(BIN / "hvae"), "prepare"], repo, env)
    frame = _test_frame(repo)
    frame.to_json(base / "input.json", orient="split", index=False)
    return repo, env, base


def _score(python: Path, model_uri: str, repo: Path, env: dict, base: Path, cwd: Path) -> dict:
    """Scores from a fresh `python -I` process (no PYTHONPATH, no user site) in `cwd`."""
    cwd.mkdir(exist_ok=True)
    result = subprocess.run(
        [str(python), "-I", "-c", SCORE, model_uri, str(base / "input.json")],
        cwd=cwd, capture_output=True, text=True, timeout=600,
        env={**env, "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_artifacts_live_under_the_repository_not_in_dvc_workspaces(first_runs) -> None:
    repo, _, _ = first_runs
    client = _client(repo)
    experiment = client.get_experiment_by_name(NAME)
    assert experiment.artifact_location == (repo / "mlartifacts").resolve().as_uri()
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    versions = sorted(client.search_model_versions(f"name = '{NAME}'"), key=lambda v: v.version)
    assert [v.version for v in versions] == [1, 2]
    for version in versions:
        run = client.get_run(version.run_id)
        assert run.info.artifact_uri.startswith(experiment.artifact_location + "/")
        figures = {a.path for a in client.list_artifacts(version.run_id, "figures")}
        assert "figures/hierarchy.png" in figures
    assert not (repo / "mlruns").exists()
    assert not list((repo / ".dvc" / "tmp").rglob("mlruns"))


def test_every_version_loads_and_scores_in_a_fresh_process_elsewhere(first_runs) -> None:
    repo, env, base = first_runs
    for version in ("1", "2"):
        scores = _score(
            Path(sys.executable), f"models:/{NAME}/{version}", repo, env, base, base / "elsewhere"
        )
        assert len(scores["elbo"]) == 5
        assert all(v < 0 for v in scores["elbo"] + scores["iw_log_likelihood"])


def test_a_version_runs_in_a_clean_venv_built_from_its_own_requirements(first_runs) -> None:
    """No project install, no repo on sys.path: only the model's requirements.txt, pinned."""
    import mlflow

    repo, env, base = first_runs
    assert _hvae(repo, env, "promote", "--version", "1").returncode == 0
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}@champion"))
    finally:
        mlflow.set_tracking_uri(None)
    requirements = (local / "requirements.txt").read_text().split()
    pinned = r"[a-z0-9_.-]+==[0-9][\w.+]*"
    assert requirements and all(re.fullmatch(pinned, r) for r in requirements), requirements

    venv = base / "clean-venv"
    uv = str(BIN / "uv")
    _run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], base, env)
    python = venv / "bin" / "python"
    install = [uv, "pip", "install", "--quiet", "--python", str(python)]
    _run([*install, "-r", str(local / "requirements.txt")], base, env)
    no_hvae = subprocess.run(
        [str(python), "-I", "-c", "import importlib.util as u; print(u.find_spec('hvae'))"],
        cwd=base, capture_output=True, text=True,
    )  # fmt: skip
    assert no_hvae.stdout.strip() == "None", "the clean venv must not hold the project"

    clean = _score(python, f"models:/{NAME}/1", repo, env, base, base / "clean-cwd")
    here = _score(Path(sys.executable), f"models:/{NAME}/1", repo, env, base, base / "here-cwd")
    assert clean == here  # bit for bit: the same pinned libraries and the same code

    docker = base / "docker"
    _run(
        [str(BIN / "mlflow"), "models", "generate-dockerfile",
         "-m", f"models:/{NAME}@champion", "-d", str(docker)],
        base, {**env, "MLFLOW_TRACKING_URI": uri},
    )  # fmt: skip
    dockerfile = (docker / "Dockerfile").read_text()
    assert "model_dir" in dockerfile
    (shipped,) = (docker / "model_dir").rglob("requirements.txt")
    assert shipped.read_text().split() == requirements
    assert any(r.startswith("tensorflow==") for r in requirements)


def test_an_experiment_left_in_a_dvc_workspace_stops_train_before_it_trains(first_runs) -> None:
    repo, env, _ = first_runs
    doomed = repo / ".dvc" / "tmp" / "exps" / "standalone" / "tmpgone" / "mlruns" / "9"
    doomed.mkdir(parents=True)
    _client(repo).create_experiment("hvae-doomed", artifact_location=doomed.as_uri())
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["mlflow"]["experiment"] = "hvae-doomed"
    (repo / "doomed.yaml").write_text(yaml.safe_dump(params))
    result = _hvae(repo, env, "train", "--params", "doomed.yaml")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("hvae train: error: experiment 'hvae-doomed' keeps its artifacts in")
    assert "DVC temporary workspace" in last
    assert "Epoch" not in result.stdout
    assert not (repo / "models").exists() and not (repo / "reports" / "mlflow_run.json").exists()


def _weights_digest(output: str) -> str:
    (digest,) = re.findall(r"; weights ([0-9a-f]{16})", output)
    return digest


def test_training_twice_gives_the_same_weights_even_under_load(tmp_path: Path) -> None:
    repo, env = _new_repo(tmp_path / "repo", tiny_params())
    _run([str(BIN / "hvae"), "prepare"], repo, env)
    first = _weights_digest(_run([str(BIN / "hvae"), "train"], repo, env).stdout)
    busy = [
        subprocess.Popen([sys.executable, "-c", "import time\nt = time.time() + 300\n"
                          "while time.time() < t: pass"])
        for _ in range(2)
    ]  # fmt: skip
    try:
        second = _weights_digest(_run([str(BIN / "hvae"), "train"], repo, env).stdout)
    finally:
        for process in busy:
            process.kill()
            process.wait()
    assert first == second
