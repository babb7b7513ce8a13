"""Where MLflow records go: the store must be the repo's own, even from DVC's temp workspaces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hvae import tracking
from hvae.errors import TrackingError


def test_project_root_sees_through_dvc_temp_workspaces(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("DVC_ROOT", raising=False)
    repo = tmp_path / "repo"
    workspace = repo / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    workspace.mkdir(parents=True)
    (workspace / ".dvc").mkdir()  # the temp workspace is itself a DVC repo
    assert tracking.project_root(workspace) == repo.resolve()


def test_project_root_walks_up_to_the_dvc_repo(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("DVC_ROOT", raising=False)
    (tmp_path / ".dvc").mkdir()
    nested = tmp_path / "reports" / "figures"
    nested.mkdir(parents=True)
    assert tracking.project_root(nested) == tmp_path.resolve()


def test_default_uri_is_absolute_sqlite_in_repo_root(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(tracking.TRACKING_ENV, raising=False)
    uri = tracking.tracking_uri(tmp_path)
    assert uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert Path(uri.removeprefix("sqlite:///")).is_absolute()


def test_environment_uri_overrides_default(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(tracking.TRACKING_ENV, "http://127.0.0.1:5000")
    assert tracking.tracking_uri(tmp_path) == "http://127.0.0.1:5000"


def test_run_record_round_trip_and_errors(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(tracking.TRACKING_ENV, raising=False)
    tracking.configure(tmp_path)
    record = tmp_path / "run.json"
    with pytest.raises(TrackingError, match="not found"):
        tracking.read_run_record(record)
    record.write_text("[]")
    with pytest.raises(TrackingError, match="run_id"):
        tracking.read_run_record(record)
    tracking.write_run_record("0123456789abcdef", "hvae-mnist", record)
    assert json.loads(record.read_text())["run_id"] == "0123456789abcdef"
    with pytest.raises(TrackingError, match="not in"):
        tracking.read_run_record(record)
