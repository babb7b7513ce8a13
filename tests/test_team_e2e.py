"""The pipeline as a team runs it: a shared MLflow tracking server, and several workers.

Each test starts its own `mlflow server` (SQLite backend store, artifacts served by the server
from a local folder) on a free loopback port, points `MLFLOW_TRACKING_URI` at it and runs the
tiny pipeline in a fresh repo: once with `dvc exp run`, once as two queued experiments run at
once. Everything is checked through the server. A third test trains with two workers
(MultiWorkerMirroredStrategy) on loopback ports. Needs HVAE_DATA_DIR like the other e2e tests.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hvae.data import prepared
from test_pipeline_e2e import (
    BIN,
    DATA_DIR,
    TINY,
    _free_port,
    _new_repo,
    _run,
    _stop,
    _wait_for,
    tiny_params,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not DATA_DIR, reason="HVAE_DATA_DIR is not set (see README)"),
]

PNG = b"\x89PNG\r\n\x1a\n"
LOCAL_STORE = ("mlflow.db", "mlartifacts", "mlruns")  # what a run without a server would leave


@contextlib.contextmanager
def _tracking_server(folder: Path) -> Iterator[str]:
    """`mlflow server` on a free port: runs in folder/server.db, artifacts in folder/artifacts.

    Yields the server's URL; the server (and its workers) is stopped however the test ends.
    """
    folder.mkdir()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # mlflow starts uvicorn by name
    with (folder / "server.log").open("w") as log:
        server = subprocess.Popen(
            [str(BIN / "mlflow"), "server",
             "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
             "--serve-artifacts", "--artifacts-destination", str(folder / "artifacts"),
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: _stop ends the workers too
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_for(f"{url}/health", server)
        yield url
    finally:
        _stop(server)


def _client(url: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=url, registry_uri=url)


def _tiny_settings(*extra: str) -> list[str]:
    args = []
    for setting in [*TINY, *extra]:
        args += ["-S", setting]
    return args


def _assert_nothing_local(repo: Path) -> None:
    left = [name for name in LOCAL_STORE if (repo / name).exists()]
    assert not left, f"a local MLflow store was written next to the server: {left}"


def test_pipeline_against_a_shared_tracking_server(tmp_path: Path) -> None:
    import mlflow

    with _tracking_server(tmp_path / "server") as url:
        repo, env = _new_repo(tmp_path / "repo")
        env["MLFLOW_TRACKING_URI"] = url
        _run([str(BIN / "dvc"), "exp", "run", *_tiny_settings()], repo, env)

        client = _client(url)
        run_id = json.loads((repo / "reports/mlflow_run.json").read_text())["run_id"]
        experiment = client.get_experiment_by_name("hvae-mnist")
        assert experiment is not None
        runs = client.search_runs([experiment.experiment_id])
        assert [r.info.run_id for r in runs] == [run_id]
        run = runs[0]
        assert run.info.status == "FINISHED"
        # Artifacts go through the server's proxy, not to a path on this machine.
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")
        for key in ("val/elbo", "val/kl_z1", "val/kl_z2", "val/kl_z3", "train/elbo"):
            assert [m.step for m in client.get_metric_history(run_id, key)] == [1], key
        assert "test/nll" in run.data.metrics

        figures = {a.path for a in client.list_artifacts(run_id, "figures")}
        assert "figures/hierarchy.png" in figures
        local = client.download_artifacts(run_id, "figures/hierarchy.png", str(tmp_path))
        assert Path(local).read_bytes().startswith(PNG)
        stored = list((tmp_path / "server/artifacts").rglob("hierarchy.png"))
        assert len(stored) == 1, "the server keeps the artifact in its --artifacts-destination"

        # The model is a logged model (MLflow 3) output by this run, its files on the server.
        (output,) = run.outputs.model_outputs
        model = client.get_logged_model(output.model_id)
        assert model.source_run_id == run_id
        assert model.artifact_location.startswith("mlflow-artifacts:")
        model_files = {a.path for a in client.list_logged_model_artifacts(model.model_id)}
        assert {"MLmodel", "data"} <= model_files, model_files
        weights = mlflow.artifacts.download_artifacts(
            f"{model.artifact_location}/data/hvae/model.weights.h5",
            dst_path=str(tmp_path),
            tracking_uri=url,
        )
        assert Path(weights).read_bytes().startswith(b"\x89HDF\r\n\x1a\n")

        (version,) = client.search_model_versions("name = 'hvae-mnist'")
        assert version.run_id == run_id
        assert version.source == model.model_uri

        promoted = subprocess.run(
            [str(BIN / "hvae"), "promote"], cwd=repo, env=env, capture_output=True, text=True
        )
        assert promoted.returncode == 0, promoted.stderr
        champion = client.get_model_version_by_alias("hvae-mnist", "champion")
        assert champion.version == version.version and champion.run_id == run_id

        _assert_nothing_local(repo)


def _queue_status(repo: Path, env: dict[str, str]) -> dict[str, str]:
    """Task name -> status, from `dvc queue status`'s table."""
    out = _run([str(BIN / "dvc"), "queue", "status"], repo, env).stdout
    status = {}
    for line in out.splitlines():
        match = re.match(
            r"^\s*([0-9a-f]{7})\s+(\S+)\s+.*\s(Queued|Running|Success|Failed)\s*$", line
        )
        if match:
            status[match.group(2)] = match.group(3)
    return status


def _kill_workers(repo: Path) -> None:
    for record in (repo / ".dvc/tmp/exps/celery").glob("dvc-exp-worker-*.json"):
        with contextlib.suppress(ProcessLookupError, ValueError, KeyError, TypeError):
            os.kill(json.loads(record.read_text())["pid"], signal.SIGKILL)


def _run_queue(repo: Path, env: dict[str, str], names: list[str], log: Path) -> dict[str, str]:
    """`dvc exp run --run-all --jobs 2` until every task has ended; the final queue status.

    `--run-all` starts two workers and follows the tasks' logs; it returns once its workers
    exit. Seen here once (dvc 3.67, dvc-task 0.40): a worker's monitor logged "shutting down
    due to empty queue" while the worker ran a task, and the worker then idled forever. So
    when all tasks have ended and `--run-all` still waits a minute later, the workers are
    ended (`dvc queue stop`, as a user would, then a kill) and the test prints that it had to;
    the tasks' results are what it checks.
    """
    dvc = str(BIN / "dvc")
    with log.open("w") as out:
        run_all = subprocess.Popen(
            [dvc, "exp", "run", "--run-all", "--jobs", "2"],
            cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 900
    ended = None
    while run_all.poll() is None and time.monotonic() < deadline:
        time.sleep(10)
        status = _queue_status(repo, env)
        if ended is None and all(status.get(name) in ("Success", "Failed") for name in names):
            ended = time.monotonic()
        if ended is not None and time.monotonic() - ended > 60:
            print("dvc exp run --run-all still waits 60 s after all tasks ended: dvc queue stop")
            _run([dvc, "queue", "stop"], repo, env)
            try:
                run_all.wait(timeout=30)
            except subprocess.TimeoutExpired:
                print("dvc queue stop did not end the workers: killing them")
                _kill_workers(repo)
            break
    try:
        run_all.wait(timeout=60)
    except subprocess.TimeoutExpired:
        run_all.kill()
        run_all.wait()
        _kill_workers(repo)
        pytest.fail(f"dvc exp run --run-all did not end:\n{log.read_text()[-4000:]}")
    return _queue_status(repo, env)


def test_queued_experiments_run_in_parallel_against_the_server(tmp_path: Path) -> None:
    dvc = str(BIN / "dvc")
    # Two, as many as --jobs: concurrency against the server is what is tested, and a third
    # task only waited for a free worker (808 s of CI for three, close to the 900 s deadline).
    seeds = (1, 2)
    names = [f"seed-{seed}" for seed in seeds]
    with _tracking_server(tmp_path / "server") as url:
        repo, env = _new_repo(tmp_path / "repo")
        env["MLFLOW_TRACKING_URI"] = url
        try:
            for seed, name in zip(seeds, names, strict=True):
                _run([dvc, "exp", "run", "--queue", "-n", name, *_tiny_settings(f"seed={seed}")],
                     repo, env)  # fmt: skip
            assert _queue_status(repo, env) == dict.fromkeys(names, "Queued")
            started = time.monotonic()
            # It exits 0 even when a task failed, so the status decides.
            status = _run_queue(repo, env, names, tmp_path / "run_all.log")
            elapsed = time.monotonic() - started
            logs = {name: _run([dvc, "queue", "logs", name], repo, env).stdout for name in names}
        finally:
            # Workers stop by themselves once the queue is empty; make sure on failure too.
            subprocess.run([dvc, "queue", "stop", "--kill"], cwd=repo, env=env, capture_output=True)
        output = (tmp_path / "run_all.log").read_text()
        # `--run-all` follows only some tasks' logs; show the end of each failed task's own.
        failed = "".join(
            f"\n--- {name} log (end):\n{logs[name][-4000:]}"
            for name, state in status.items()
            if state != "Success"
        )
        assert status == dict.fromkeys(names, "Success"), f"{status}\n{output}{failed}"
        for name, log in logs.items():
            assert "hvae evaluate: done" in log and "hvae render: done" in log, log
            assert "database is locked" not in log, f"{name}:\n{log}"
        assert "database is locked" not in output

        client = _client(url)
        experiment = client.get_experiment_by_name("hvae-mnist")
        runs = client.search_runs([experiment.experiment_id])
        assert len(runs) == len(seeds)
        assert {r.info.status for r in runs} == {"FINISHED"}
        # Each run came from its queued task (DVC_EXP_NAME reached the worker) with its seed.
        assert {r.data.tags.get("dvc_exp_name") for r in runs} == set(names)
        assert {r.data.params["seed"] for r in runs} == {str(s) for s in seeds}
        versions = client.search_model_versions("name = 'hvae-mnist'")
        assert len(versions) == len(seeds)
        assert {v.run_id for v in versions} == {r.info.run_id for r in runs}
        # They ran at once: some pair of runs overlaps in time.
        spans = sorted((r.info.start_time, r.info.end_time) for r in runs)
        assert any(a[1] > b[0] for a, b in itertools.pairwise(spans)), spans
        server_log = (tmp_path / "server/server.log").read_text()
        assert "database is locked" not in server_log
        _assert_nothing_local(repo)
        print(f"{len(seeds)} queued tiny experiments, 2 at a time: {elapsed:.0f} s")


def test_two_workers_train_in_step_and_only_the_chief_logs(tmp_path: Path) -> None:
    """Two `hvae train` processes, as on two machines (each its own folder with the prepared
    data), train the tiny model for one epoch over 127.0.0.1: the same final weights, one
    MLflow run, and nothing written by the non-chief worker."""
    from mlflow.tracking import MlflowClient

    from hvae.training.distribute import tf_config

    settings = tiny_params()
    params = {k: v for k, v in settings.items() if k.startswith(("model.", "train."))}
    params["train.strategy"] = "multi_worker"
    chief, env = _new_repo(tmp_path / "chief", params)
    _run([str(BIN / "hvae"), "prepare"], chief, env)
    other = tmp_path / "worker"  # another machine: the project and `dvc pull`ed data only
    other.mkdir()
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy2(chief / name, other / name)
    shutil.copytree(chief / "data/prepared", other / "data/prepared")

    addresses = [f"127.0.0.1:{_free_port()}" for _ in range(2)]
    workers = []
    for index, folder in enumerate((chief, other)):
        worker_env = {**env, "TF_CONFIG": tf_config(addresses, index)}
        log = (tmp_path / f"worker{index}.log").open("w")
        workers.append(
            subprocess.Popen([str(BIN / "hvae"), "train"], cwd=folder, env=worker_env,
                             stdout=log, stderr=subprocess.STDOUT)
        )  # fmt: skip
    try:
        codes = [w.wait(timeout=600) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], "\n\n".join(log[-3000:] for log in logs)
    for index, log in enumerate(logs):
        assert f"worker {index} of 2 tasks, 2 replicas" in log, log[-3000:]
    digests = [re.findall(r"weights ([0-9a-f]{16})", log) for log in logs]
    assert len(digests[0]) == 1 and digests[0] == digests[1], digests

    client = MlflowClient(tracking_uri=f"sqlite:///{chief / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "hvae-mnist"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.strategy"] == "multi_worker"
    assert run.data.tags["replicas"] == "2"
    # train.batch_size is global: the training images / 250 steps, split over both workers
    # (a per-replica batch would halve them), logged every `log_every_steps`.
    manifest = prepared.read_manifest(chief / "data/prepared")
    total = manifest["counts"]["train"] // settings["train.batch_size"]
    every = settings["train.log_every_steps"]
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "step/loss")]
    assert steps == list(range(every, total + 1, every)), steps
    assert (chief / "models/model.weights.h5").is_file()
    written = sorted(p.name for p in other.iterdir())
    assert written == ["data", "dvc.yaml", "params.yaml"], written
    seconds = re.findall(r"\d+/\d+ - (\d+)s", logs[0])
    print(f"two workers, tiny config: one epoch in {seconds} s")
