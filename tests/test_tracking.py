"""Where MLflow records go: the store must be the repo's own, even from DVC's temp workspaces."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from hvae.errors import TrackingError
from hvae.tracking import runs


def test_project_root_sees_through_dvc_temp_workspaces(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("DVC_ROOT", raising=False)
    repo = tmp_path / "repo"
    workspace = repo / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    workspace.mkdir(parents=True)
    (workspace / ".dvc").mkdir()  # the temp workspace is itself a DVC repo
    assert runs.project_root(workspace) == repo.resolve()


def test_project_root_walks_up_to_the_dvc_repo(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("DVC_ROOT", raising=False)
    (tmp_path / ".dvc").mkdir()
    nested = tmp_path / "reports" / "figures"
    nested.mkdir(parents=True)
    assert runs.project_root(nested) == tmp_path.resolve()


def test_default_uri_is_absolute_sqlite_in_repo_root(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(runs.TRACKING_ENV, raising=False)
    uri = runs.tracking_uri(tmp_path)
    assert uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert Path(uri.removeprefix("sqlite:///")).is_absolute()


def test_environment_uri_overrides_default(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(runs.TRACKING_ENV, "http://127.0.0.1:5000")
    assert runs.tracking_uri(tmp_path) == "http://127.0.0.1:5000"


def test_run_record_round_trip_and_errors(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(runs.TRACKING_ENV, raising=False)
    runs.configure(tmp_path)
    record = tmp_path / "run.json"
    with pytest.raises(TrackingError, match="not found"):
        runs.read_run_record("d1", record)
    record.write_text("[]")
    with pytest.raises(TrackingError, match="run_id"):
        runs.read_run_record("d1", record)
    runs.write_run_record("0123456789abcdef", "hvae-mnist", "d1", record)
    assert json.loads(record.read_text())["run_id"] == "0123456789abcdef"
    with pytest.raises(TrackingError, match="not in"):
        runs.read_run_record("d1", record)


def test_run_record_ties_the_run_to_the_model_files(tmp_path: Path, monkeypatch) -> None:
    """Only a finished train's record, with the files it wrote, on a run that says so."""
    monkeypatch.delenv(runs.TRACKING_ENV, raising=False)
    runs.configure(tmp_path)
    experiment = runs.ensure_experiment("lineage", tmp_path)
    record = tmp_path / "run.json"
    with mlflow.start_run(experiment_id=experiment) as run:
        run_id = run.info.run_id
        runs.write_run_record(run_id, "lineage", path=record)  # what train writes first
    with pytest.raises(TrackingError, match=f"run {run_id} did not finish training"):
        runs.read_run_record("d1", record)
    runs.write_run_record(run_id, "lineage", "d1", record)
    with pytest.raises(TrackingError, match=r"^models/: model files d2 are not the d1 that run"):
        runs.read_run_record("d2", record)
    # The record says d1 but the run never tagged it: another store's or a hand-made record.
    with pytest.raises(TrackingError, match=r"did not train model d1 \(its model_digest tag"):
        runs.read_run_record("d1", record)
    MlflowClient().set_tag(run_id, runs.MODEL_DIGEST, "d1")
    assert runs.read_run_record("d1", record) == run_id


def test_interrupt_marks_the_run_killed_and_other_errors_failed(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(runs.TRACKING_ENV, raising=False)
    runs.configure(tmp_path)
    experiment = runs.ensure_experiment("interrupts", tmp_path)
    ids = {}
    for name, exc in (("killed", KeyboardInterrupt), ("failed", RuntimeError)):
        with (
            pytest.raises(exc),
            mlflow.start_run(experiment_id=experiment) as run,
            runs.killed_on_interrupt(),
        ):
            ids[name] = run.info.run_id
            raise exc()
    assert mlflow.active_run() is None
    client = MlflowClient()
    assert client.get_run(ids["killed"]).info.status == "KILLED"
    assert client.get_run(ids["failed"]).info.status == "FAILED"


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_fails_in_seconds(tmp_path: Path, monkeypatch) -> None:
    import time

    uri = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    started = time.monotonic()
    with pytest.raises(TrackingError, match=f"MLFLOW_TRACKING_URI={uri}: .*does not answer"):
        runs.configure(tmp_path)
    assert time.monotonic() - started < 5
    # A password in the URI is never printed.
    port = _closed_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:s3cret@127.0.0.1:{port}")
    with pytest.raises(TrackingError) as refused:
        runs.configure(tmp_path)
    assert "s3cret" not in str(refused.value)
    assert str(refused.value).startswith(f"MLFLOW_TRACKING_URI=http://alice:***@127.0.0.1:{port}:")


@pytest.mark.parametrize("status", [200, 401])
def test_a_server_that_answers_is_reachable(status: int) -> None:
    import http.server
    import threading

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        runs.check_reachable(f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()


def test_local_stores_need_no_server() -> None:
    runs.check_reachable("sqlite:////nonexistent/mlflow.db")
    runs.check_reachable("file:///nonexistent/mlruns")


def test_ensure_experiment_survives_a_concurrent_create(tmp_path: Path, monkeypatch) -> None:
    """Two queued experiments start together: both see no experiment, one creates it first."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv(runs.TRACKING_ENV, raising=False)
    runs.configure(tmp_path)
    location = tmp_path / "mlartifacts" / "race"
    location.mkdir(parents=True)
    # The other process, just before.
    winner = MlflowClient().create_experiment("hvae-race", artifact_location=location.as_uri())
    looked_up = MlflowClient.get_experiment_by_name
    calls = []

    def stale_first_lookup(self, name):
        calls.append(name)
        return None if len(calls) == 1 else looked_up(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", stale_first_lookup)
    assert runs.ensure_experiment("hvae-race", tmp_path) == winner
    assert len(calls) == 2
    # Any other failure to create still surfaces.
    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", lambda self, name: None)
    monkeypatch.setattr(
        MlflowClient,
        "create_experiment",
        lambda self, *a, **k: (_ for _ in ()).throw(MlflowException("boom")),
    )
    with pytest.raises(MlflowException, match="boom"):
        runs.ensure_experiment("hvae-other", tmp_path)


def test_training_data_survives_a_concurrent_insert(tmp_path: Path, monkeypatch) -> None:
    """The slower of two runs logging the same dataset at once fails on the unique key once."""
    import mlflow
    import numpy as np
    from mlflow.exceptions import MlflowException

    monkeypatch.delenv(runs.TRACKING_ENV, raising=False)
    runs.configure(tmp_path)
    images, labels = np.zeros((4, 784), np.uint8), np.arange(4, dtype=np.uint8)
    real = mlflow.log_input
    calls = []

    def lose_the_race_once(dataset, context):
        calls.append(context)
        if len(calls) == 1:
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets")
        return real(dataset, context=context)

    monkeypatch.setattr(mlflow, "log_input", lose_the_race_once)
    experiment = runs.ensure_experiment("hvae-data", tmp_path)
    with mlflow.start_run(experiment_id=experiment) as run:
        runs.log_training_data("mnist-train", "0123456789abcdef", images, labels)
    assert calls == ["training", "training"]
    (logged,) = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    assert (logged.dataset.name, logged.dataset.digest) == ("mnist-train", "0123456789abcdef")

    monkeypatch.setattr(
        mlflow, "log_input", lambda *a, **k: (_ for _ in ()).throw(MlflowException("boom"))
    )
    with mlflow.start_run(experiment_id=experiment), pytest.raises(MlflowException, match="boom"):
        runs.log_training_data("mnist-train", "0123456789abcdef", images, labels)


def _experiment(name: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient().get_experiment_by_name(name)


def test_artifacts_go_under_the_repo_root_whatever_the_current_directory(
    tmp_path: Path, monkeypatch
) -> None:
    """`mlflow.set_tracking_uri` exports MLFLOW_TRACKING_URI; that is not the user's choice,
    so a DVC temp workspace as the current directory must not get the artifacts."""
    monkeypatch.delenv(runs.TRACKING_ENV, raising=False)
    repo = tmp_path / "repo"
    workspace = repo / ".dvc" / "tmp" / "exps" / "standalone" / "tmpx1"
    workspace.mkdir(parents=True)
    monkeypatch.chdir(workspace)
    uri = runs.configure(repo)
    assert uri == f"sqlite:///{repo}/mlflow.db"
    assert runs.user_tracking_uri() is None  # though the variable is now set
    runs.ensure_experiment("hvae-first", repo)
    runs.configure(repo)  # a second stage in the same process
    runs.ensure_experiment("hvae-second", repo)
    for name in ("hvae-first", "hvae-second"):
        experiment = _experiment(name)
        assert experiment.artifact_location == (repo / "mlartifacts").resolve().as_uri()
        assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert (repo / "mlartifacts").is_dir() and not (workspace / "mlruns").exists()


def test_a_user_set_uri_is_still_the_users(tmp_path: Path, monkeypatch) -> None:
    other = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv(runs.TRACKING_ENV, other)
    assert runs.configure(tmp_path) == other
    assert runs.user_tracking_uri() == other
    runs.ensure_experiment("hvae-user", tmp_path)
    # A store on this machine: artifacts still absolute, under the repository.
    assert _experiment("hvae-user").artifact_location == (tmp_path / "mlartifacts").as_uri()


def test_an_experiment_inside_a_dvc_workspace_is_refused_before_training(
    tmp_path: Path, monkeypatch
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv(runs.TRACKING_ENV, raising=False)
    runs.configure(tmp_path)
    doomed = tmp_path / ".dvc" / "tmp" / "exps" / "standalone" / "tmpq" / "mlruns" / "1"
    doomed.mkdir(parents=True)
    MlflowClient().create_experiment("hvae-doomed", artifact_location=doomed.as_uri())
    with pytest.raises(TrackingError) as error:
        runs.ensure_experiment("hvae-doomed", tmp_path)
    message = str(error.value)
    assert "\n" not in message
    assert "experiment 'hvae-doomed'" in message and str(doomed) in message
    assert "DVC temporary workspace" in message and "rename or delete" in message


def test_an_experiment_whose_artifacts_are_gone_is_refused(tmp_path: Path, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv(runs.TRACKING_ENV, raising=False)
    runs.configure(tmp_path)
    client = MlflowClient()
    gone = tmp_path / "moved-away"
    unused = tmp_path / "made-in-the-ui"
    used = client.create_experiment("hvae-gone", artifact_location=gone.as_uri())
    client.create_run(used)
    client.create_experiment("hvae-unused", artifact_location=unused.as_uri())
    with pytest.raises(TrackingError, match=r"'hvae-gone' .* does not exist: its runs' artifacts"):
        runs.ensure_experiment("hvae-gone", tmp_path)
    # No run has stored anything there yet: nothing is lost, the folder is made.
    runs.ensure_experiment("hvae-unused", tmp_path)
    assert unused.is_dir()


@pytest.mark.parametrize(
    ("uri", "server"),
    [
        ("http://127.0.0.1:5000", True),
        ("https://mlflow.example.invalid", True),
        ("databricks", True),
        ("databricks://profile", True),
        ("sqlite:////tmp/mlflow.db", False),
        ("file:///tmp/mlruns", False),
        ("/tmp/mlruns", False),
    ],
)
def test_servers_decide_their_own_artifact_store(uri: str, server: bool) -> None:
    assert runs.is_server(uri) is server
