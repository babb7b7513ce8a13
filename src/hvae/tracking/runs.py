"""Where MLflow records go, and the small git-tracked file that ties stages to one run.

The default store is `sqlite:///<repo root>/mlflow.db` with artifacts in
`<repo root>/mlartifacts`; a user's `MLFLOW_TRACKING_URI` overrides the store (a server
decides its own artifact store). Train opens the run; evaluate and render attach to it by id.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import mlflow
import numpy as np
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient

from hvae import atomic, paths
from hvae.errors import TrackingError
from hvae.paths import RUN_RECORD

TRACKING_ENV = "MLFLOW_TRACKING_URI"
ARTIFACTS_DIR = "mlartifacts"
# Experiments open in the MLflow UI's training view, not the GenAI one.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
_SERVER_SCHEMES = ("http", "https")

# `mlflow.set_tracking_uri` exports the URI it is given to the environment (for child
# processes). What this module set must not pass for the user's own choice afterwards.
_uri_set_here: str | None = None


def project_root(start: str | Path | None = None) -> Path:
    """The repository root, seen through DVC's temporary experiment workspaces.

    `dvc exp run --temp/--queue` runs stages in <repo>/.dvc/tmp/exps/<tmp>; the store must
    still be the one in <repo>, so every run of the project logs to the same place.
    """
    here = Path(start or os.environ.get("DVC_ROOT") or os.getcwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    for candidate in (here, *here.parents):
        if (candidate / ".dvc").is_dir() or (candidate / "dvc.yaml").is_file():
            return candidate
    return here


def user_tracking_uri() -> str | None:
    """MLFLOW_TRACKING_URI as the user set it, None when unset or set by `configure`."""
    value = os.environ.get(TRACKING_ENV) or None
    return None if value == _uri_set_here else value


def tracking_uri(root: Path) -> str:
    return user_tracking_uri() or f"sqlite:///{root / 'mlflow.db'}"


def is_server(uri: str) -> bool:
    """A tracking server (or Databricks, spelled `databricks` or `databricks://profile`)."""
    return uri.startswith("databricks") or urllib.parse.urlparse(uri).scheme in _SERVER_SCHEMES


def check_reachable(uri: str, timeout: float = 10.0) -> None:
    """Fail in seconds when a tracking server does not answer.

    MLflow's own client retries a dead server with back-off for minutes, and train would
    only find out after building the model; a server's /health answers without auth.
    """
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme not in ("http", "https"):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as reply:
            reply.read()
    except urllib.error.HTTPError:
        return  # it answered (an auth proxy may refuse /health): reachable
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise TrackingError(
            f"{_store_name(uri)}: the tracking server does not answer ({reason}); "
            "start it or unset the variable to use the local store"
        ) from None


def configure(root: Path) -> str:
    """Point MLflow at the project's store and return the URI in use."""
    global _uri_set_here
    user = user_tracking_uri()
    uri = user or tracking_uri(root)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if user is None:
        _uri_set_here = os.environ.get(TRACKING_ENV)
    check_store(uri)
    return uri


def _store_name(uri: str) -> str:
    """The store as a user knows it: a SQLite store's file, another URI without password."""
    if uri.startswith("sqlite:///"):
        return uri.removeprefix("sqlite:///").split("?", 1)[0] or uri
    parsed = urllib.parse.urlsplit(uri)
    if parsed.password:
        netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
        return f"{TRACKING_ENV}={urllib.parse.urlunsplit(parsed._replace(netloc=netloc))}"
    return f"{TRACKING_ENV}={uri}"


def _check_sqlite_file(path: Path) -> None:
    """What MLflow would only find out after retrying for minutes (a folder, a file it
    cannot open) or in a traceback (not a database): OSError, sqlite3.Error, TrackingError."""
    import sqlite3

    if path.is_dir():
        raise IsADirectoryError("a directory, not an SQLite file")
    if not path.exists():
        if not path.parent.is_dir():
            raise TrackingError(
                f"{path}: cannot create the MLflow store: its folder {path.parent} does not "
                f"exist (create it, or set {TRACKING_ENV} to another store)"
            )
        return  # MLflow creates it
    query = urllib.parse.quote(str(path.resolve()))
    try:
        with contextlib.closing(sqlite3.connect(f"file:{query}?mode=ro", uri=True)) as db:
            db.execute("SELECT name FROM sqlite_master").fetchall()  # the header and schema
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc) and "busy" not in str(exc):
            raise
        # Another command is writing to it: not damage. MLflow waits for its turn itself.


def check_store(uri: str) -> None:
    """Open a database or file store once, so that a damaged or unreadable one stops the
    command in one line naming it, instead of a SQLAlchemy traceback from whatever touched
    it first. MLflow keeps the opened store (one per URI) for every later call."""
    if is_server(uri):
        return  # check_reachable asked it already
    import sqlite3

    from alembic.util.exc import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    name = _store_name(uri)
    failures = (MlflowException, SQLAlchemyError, CommandError, sqlite3.Error, OSError, ImportError)
    try:
        if uri.startswith("sqlite:///"):
            _check_sqlite_file(Path(name))
        MlflowClient(tracking_uri=uri)
    except failures as exc:
        raise _store_error(uri, exc, "cannot open the MLflow store") from None


def _store_error(uri: str, exc: BaseException, what: str) -> TrackingError:
    """One line: the store, what failed and why (the first line of the cause), the fix."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    name = _store_name(uri)
    if "mlflow db upgrade" in text:  # written by an older MLflow: MLflow's own advice
        fix = f"back it up, then run `mlflow db upgrade {uri}`"
    elif "Can't locate revision" in text:
        fix = f"a newer MLflow than this {mlflow.__version__} wrote it: upgrade mlflow"
    elif "unable to open" in text or "readonly" in text:
        fix = "check that this user may read and write it, and its folder"
    elif uri.startswith("sqlite:"):
        fix = (
            f"restore it from a backup, or move it aside (`mv {name} {name}.broken`) "
            "so the next command starts an empty store"
        )
    else:
        fix = "check the URI and the database"
    return TrackingError(f"{name}: {what} ({reason}); {fix}")


_DAMAGED = ("database disk image is malformed", "file is not a database")


def damaged_store_error(exc: BaseException) -> TrackingError | None:
    """For an exception a command let through: if SQLite found the store damaged (deeper in
    the file than check_store reads), the one line check_store gives; else None."""
    import sqlite3

    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, sqlite3.DatabaseError) and str(e).strip() in _DAMAGED:
            return _store_error(mlflow.get_tracking_uri(), e, "the MLflow store is damaged")
        stack += [getattr(e, "orig", None), e.__cause__, e.__context__]
    return None


def artifact_root(root: Path) -> Path | None:
    """Where a new experiment's artifacts go: absolute, under the repository root, for any
    store on this machine; None for a server, which decides itself.

    Left to MLflow, a file or SQLite store puts them in ./mlruns under the current directory,
    which inside `dvc exp run --temp/--queue` is a workspace DVC deletes after the run.
    """
    return None if is_server(mlflow.get_tracking_uri()) else (root / ARTIFACTS_DIR).resolve()


def ensure_experiment(name: str, root: Path) -> str:
    """The experiment's id, creating it (with artifacts beside the local store) if needed.

    An existing experiment whose artifacts would be lost (inside a DVC temporary workspace)
    or are gone is refused before anything trains.
    """
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        experiment = _create_experiment(client, name, artifact_root(root))
    check_artifact_location(client, experiment)
    if not experiment.tags.get("mlflow.experimentKind"):
        for key, value in EXPERIMENT_KIND.items():
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def _create_experiment(client: MlflowClient, name: str, folder: Path | None):
    # The folder itself is made by check_artifact_location, as for any run-less experiment.
    location = None if folder is None else folder.as_uri()
    try:
        experiment_id = client.create_experiment(
            name, artifact_location=location, tags=EXPERIMENT_KIND
        )
    except MlflowException as exc:
        # Two queued experiments starting together both find no experiment; the loser of
        # the race uses the one the winner created.
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment
    return client.get_experiment(experiment_id)


def _local_path(location: str) -> Path | None:
    """The folder a file:// (or plain path) artifact location names; None for other schemes."""
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme == "file":
        return Path(urllib.parse.unquote(parsed.path))
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # a path (or a Windows drive)
        return Path(location)
    return None


def check_artifact_location(client: MlflowClient, experiment) -> None:
    """Refuse an experiment whose artifacts DVC deletes, or whose runs' artifacts are gone."""
    folder = _local_path(experiment.artifact_location)
    if folder is None:
        return  # a server's or a cloud store's: not ours to check
    folder = folder.resolve()
    where = f"experiment '{experiment.name}' keeps its artifacts in {folder}"
    fix = (
        "rename or delete the experiment (`mlflow experiments rename/delete`, then `mlflow gc`) "
        "so the next run creates it again under the repository"
    )
    if ".dvc/tmp/" in folder.as_posix() + "/":
        raise TrackingError(f"{where}, a DVC temporary workspace that DVC deletes; {fix}")
    if folder.is_dir():
        return
    if client.search_runs([experiment.experiment_id], max_results=1):
        raise TrackingError(f"{where}, which does not exist: its runs' artifacts are lost; {fix}")
    folder.mkdir(parents=True)  # made (e.g. in the UI) but never used: nothing is lost


def log_training_data(name: str, digest: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Record the training set as the run's input (name, digest, schema and shape).

    MLflow's store looks a dataset up, then inserts it: two queued runs logging the same
    data at once can both miss it, and the slower insert fails on the unique key. A second
    call finds the row and only links it to this run.
    """
    dataset = mlflow.data.from_numpy(images, targets=labels, name=name, digest=digest)
    try:
        mlflow.log_input(dataset, context="training")
    except MlflowException as exc:
        message = str(exc).lower()
        if "unique" not in message and "duplicate" not in message:
            raise
        mlflow.log_input(dataset, context="training")


def git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def run_tags(root: Path) -> dict[str, str]:
    """Lineage and system information attached to every training run."""
    import keras
    import tensorflow as tf

    tags = {
        "hvae.python": platform.python_version(),
        "hvae.platform": platform.platform(),
        "hvae.cpu_count": str(os.cpu_count()),
        "hvae.tensorflow": tf.__version__,
        "hvae.keras": keras.__version__,
        "hvae.gpus": str(len(tf.config.list_physical_devices("GPU"))),
    }
    commit = git_commit(root)
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["git_commit"] = commit
    for env, tag in (("DVC_EXP_NAME", "dvc_exp_name"), ("DVC_EXP_BASELINE_REV", "dvc_baseline")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


# sha256 of models/ (architecture and weights files): on the run and in the run record.
MODEL_DIGEST = "model_digest"


def write_run_record(
    run_id: str, experiment: str, model_digest: str | None = None, path: Path = RUN_RECORD
) -> None:
    """The run the later stages attach to. Train writes it without a digest when its run
    opens and with the weights' digest once they are final, so a train that fails or is
    killed in between leaves a record that evaluate and render refuse."""
    record = {"run_id": run_id, "experiment": experiment}
    if model_digest is not None:
        record[MODEL_DIGEST] = model_digest
    atomic.write_json(path, record)


def read_run_record(model_digest: str, path: Path = RUN_RECORD) -> str:
    """The id of the run that produced the model files whose digest is given
    (artifacts.files_digest of models/).

    Refused: a record of a train that never finished, weights that are not the ones the
    run recorded, and a run that is not in the current store or did not record them.
    """
    try:
        record = json.loads(path.read_text())
        run_id = record["run_id"]
    except FileNotFoundError:
        raise TrackingError(f"{path}: not found (run `hvae train` first)") from None
    except (ValueError, KeyError, TypeError):
        raise TrackingError(f"{path}: expected JSON with a 'run_id'") from None
    recorded = record.get(MODEL_DIGEST)
    if recorded is None:
        raise TrackingError(
            f"{path}: run {run_id} did not finish training (it failed, was killed or is "
            "still running), so models/ holds no weights of it; run `hvae train`"
        )
    if recorded != model_digest:
        raise TrackingError(
            f"models/: model files {model_digest} are not the {recorded} that run {run_id} "
            f"trained ({path}); run `hvae train` (or `dvc repro`) to make them agree"
        )
    try:
        run = MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise TrackingError(
            f"{path}: run {run_id} is not in {mlflow.get_tracking_uri()} "
            "(re-log with `dvc repro --force`)"
        ) from None
    if run.data.tags.get(MODEL_DIGEST) != recorded:
        raise TrackingError(
            f"{path}: run {run_id} in {mlflow.get_tracking_uri()} did not train model "
            f"{recorded} (its {MODEL_DIGEST} tag is {run.data.tags.get(MODEL_DIGEST)!r}); "
            "re-log with `dvc repro --force`"
        )
    return run_id


def record_stage_time(stage: str, run_id: str | None, timings: Mapping[str, float]) -> None:
    """A stage's wall times: reports/timings/<stage>.json (a DVC metrics file) and, when the
    stage has a run, its `time/<stage>_<key>` metrics."""
    atomic.write_json(paths.timings(stage), dict(timings))
    if run_id is not None:
        with mlflow.start_run(run_id=run_id):
            mlflow.log_metrics({f"time/{stage}_{key}": value for key, value in timings.items()})


@contextlib.contextmanager
def killed_on_interrupt() -> Iterator[None]:
    """Inside `mlflow.start_run()`: a Ctrl-C or SIGTERM (which the CLI turns into
    KeyboardInterrupt) ends the run as KILLED; MLflow's own exit would call it FAILED."""
    try:
        yield
    except KeyboardInterrupt:
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
