"""`hvae models / promote / rollback` on a throwaway MLflow store with hand-made versions."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from hvae.cli import main
from params_helpers import REPO_PARAMS

NAME = "hvae-mnist"


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    """Three versions with test NLLs 85, 83 and 84, and a fourth with no metric at all."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(REPO_PARAMS.read_text())
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "a").as_uri())
    client.create_registered_model(NAME)
    for nll in ("85.0", "83.0", "84.0", None):
        run = client.create_run(experiment)
        tags = {"git_commit": "abc123"} if nll is None else {"test_nll": nll, "test_elbo": "-88"}
        client.create_model_version(NAME, (tmp_path / "m").as_uri(), run.info.run_id, tags=tags)
    return client


def _champion(client: MlflowClient) -> str | None:
    version = client.get_registered_model(NAME).aliases.get("champion")
    return None if version is None else str(version)


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_first_promotion_then_better_then_refused_then_rollback(store, capsys) -> None:
    assert _cli(capsys, "promote", "--version", "1")[0] == 0
    assert _champion(store) == "1"

    code, out, _ = _cli(capsys, "promote", "--version", "2")
    assert code == 0 and "passes" in out
    assert _champion(store) == "2"
    tags = store.get_model_version(NAME, "2").tags
    assert tags["promotion.champion.previous_version"] == "1"
    assert tags["promotion.champion.value"] == "83.0000"
    assert tags["promotion.champion.previous_value"] == "85.0000"
    assert tags["promotion.champion.forced"] == "false"
    assert tags["promotion.champion.time"]

    code, _, err = _cli(capsys, "promote", "--version", "3")
    assert code == 1
    assert err.count("\n") == 1 and "84.0000" in err and "83.0000" in err and "fails" in err
    assert _champion(store) == "2"
    assert "promotion.champion.previous_version" not in store.get_model_version(NAME, "3").tags

    code, out, _ = _cli(capsys, "rollback")
    assert code == 0 and "from version 2 back to version 1" in out
    assert _champion(store) == "1"
    assert store.get_model_version(NAME, "2").tags["rollback.champion.to_version"] == "1"


def test_margin_is_required(store, capsys) -> None:
    _cli(capsys, "promote", "--version", "1")
    code, _, err = _cli(capsys, "promote", "--version", "2", "--margin", "2.5")
    assert code == 1 and "by at least 2.5" in err
    assert _champion(store) == "1"
    assert _cli(capsys, "promote", "--version", "2", "--margin", "2.0")[0] == 0


def test_force_overrides_and_is_recorded(store, capsys) -> None:
    _cli(capsys, "promote", "--version", "2")
    code, out, _ = _cli(capsys, "promote", "--version", "1", "--force")
    assert code == 0 and "forced" in out
    assert _champion(store) == "1"
    assert store.get_model_version(NAME, "1").tags["promotion.champion.forced"] == "true"


def test_dry_run_changes_nothing(store, capsys) -> None:
    _cli(capsys, "promote", "--version", "2")
    code, out, _ = _cli(capsys, "promote", "--version", "1", "--dry-run")
    assert code == 1 and "would refuse" in out
    code, out, _ = _cli(capsys, "promote", "--version", "3", "--dry-run", "--mode", "max")
    assert code == 0 and "would move" in out  # 84 > 83 when higher is better
    assert _champion(store) == "2"
    assert "promotion.champion.time" not in store.get_model_version(NAME, "3").tags


def test_default_candidate_is_the_newest(store, capsys) -> None:
    # Version 4 is the newest and has no metric: a clear error, no change.
    code, _, err = _cli(capsys, "promote")
    assert code == 1 and "version 4" in err and "'test_nll'" in err
    assert _champion(store) is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["promote", "--version", "9"],
            "version 9 of 'hvae-mnist' not found (versions: 1, 2, 3, 4)",
        ),
        (["promote", "--version", "1", "--metric", "test_recon"], "no numeric 'test_recon' tag"),
        (
            ["promote", "--version", "1", "--metric", "probe_z1_n100"],
            "--metric: expected one of test_nll, test_elbo, test_recon, test_kl, ood_test_nll, "
            "ood_likelihood_auroc (the metrics evaluate tags versions with); got 'probe_z1_n100'",
        ),
        (["rollback", "--alias", "nobody"], "alias 'nobody' is not set"),
        (["promote", "--version", "1", "--margin", "-1"], "--margin: must be >= 0"),
    ],
)
def test_errors_are_one_line_and_change_nothing(store, capsys, args, message) -> None:
    code, _, err = _cli(capsys, *args)
    assert code == 1
    assert err.count("\n") == 1 and message in err, err
    assert store.get_registered_model(NAME).aliases == {}


def test_rollback_without_a_previous_holder(store, capsys) -> None:
    _cli(capsys, "promote", "--version", "1")
    code, _, err = _cli(capsys, "rollback")
    assert code == 1 and "replaced no earlier version" in err
    assert _champion(store) == "1"


def test_promoting_the_holder_again_is_an_error(store, capsys) -> None:
    _cli(capsys, "promote", "--version", "2")
    code, _, err = _cli(capsys, "promote", "--version", "2")
    assert code == 1 and "already holds 'champion'" in err


def test_missing_registered_model(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(REPO_PARAMS.read_text())
    for command in (["models"], ["promote"], ["rollback"]):
        code, _, err = _cli(capsys, *command)
        assert code == 1 and "registered model 'hvae-mnist' not found" in err


def test_models_table(store, capsys) -> None:
    _cli(capsys, "promote", "--version", "2")
    code, out, _ = _cli(capsys, "models")
    assert code == 0
    lines = out.splitlines()
    assert lines[1].split() == [
        "version", "created", "run", "test_nll", "test_elbo", "aliases", "git_commit"
    ]  # fmt: skip
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) == {"1", "2", "3", "4"}
    assert "83.0" in rows["2"] and "champion" in rows["2"]
    assert "champion" not in rows["1"] and "abc123" in rows["4"]


def test_force_over_a_holder_without_the_metric(store, capsys) -> None:
    # Version 4 has no test_nll, so it cannot be promoted even with --force...
    code, _, err = _cli(capsys, "promote", "--version", "4", "--force")
    assert code == 1 and "'test_nll'" in err and _champion(store) is None
    # ...but an alias set by other means may point at it: replacing it then needs --force.
    store.set_registered_model_alias(NAME, "champion", "4")
    code, _, err = _cli(capsys, "promote", "--version", "2")
    assert code == 1 and "version 4" in err and "'test_nll'" in err
    assert _champion(store) == "4"
    code, out, _ = _cli(capsys, "promote", "--version", "2", "--force")
    assert code == 0 and "version 4 (test_nll none)" in out and "forced" in out
    assert _champion(store) == "2"
    assert store.get_model_version(NAME, "2").tags["promotion.champion.previous_value"] == ""


def test_concurrent_promotions_leave_one_consistent_alias(tmp_path: Path) -> None:
    """Five `hvae promote` processes released at once: the gate decisions form one chain."""
    import subprocess
    import sys
    import time

    from hvae.tracking import locks

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "params.yaml").write_text(REPO_PARAMS.read_text())
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "a").as_uri())
    client.create_registered_model(NAME)
    nlls = {"1": 90.0, "2": 86.0, "3": 88.0, "4": 84.0, "5": 87.0}
    for nll in nlls.values():
        run = client.create_run(experiment)
        client.create_model_version(
            NAME, (tmp_path / "m").as_uri(), run.info.run_id, tags={"test_nll": str(nll)}
        )
    hvae = Path(sys.executable).parent / "hvae"
    env = {**__import__("os").environ, "MLFLOW_TRACKING_URI": uri}
    logs = {v: tmp_path / f"promote-{v}.err" for v in nlls}
    # Hold the lock while all five start, so they contend for it together once released.
    with locks.exclusive(tmp_path / locks.REGISTRY_LOCK, "test"):
        procs = {
            v: subprocess.Popen(
                [str(hvae), "promote", "--version", v],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=logs[v].open("w"),
                text=True,
            )
            for v in nlls
        }
        deadline = time.monotonic() + 60
        while not all("waiting for" in p.read_text() for p in logs.values()):
            assert time.monotonic() < deadline, "the promotions did not wait for the lock"
            time.sleep(0.1)
        assert _champion(client) is None  # nobody got past the held lock
    codes = {v: p.wait(timeout=120) for v, p in procs.items()}

    assert _champion(client) == "4"  # the best version, whatever the order
    assert set(codes.values()) <= {0, 1}
    for v, code in codes.items():
        if code == 1:
            assert "fails" in logs[v].read_text()
    # Every successful promotion compared against the holder of its moment: following
    # previous_version from the champion visits each winner once, each better than the last.
    chain, version = [], "4"
    while version:
        chain.append(version)
        version = client.get_model_version(NAME, version).tags[
            "promotion.champion.previous_version"
        ]
    assert sorted(chain) == sorted(v for v, c in codes.items() if c == 0)
    assert [nlls[v] for v in chain] == sorted(nlls[v] for v in chain)
