"""Where the CLI promises one line, one line, and it is the last line of stderr.

Each test runs `python -m hvae.cli ...` in a throwaway project (the repository's params.yaml,
nothing else) and checks the exit code, that stderr's last line is the one-line error naming
the file or value, how many lines stderr has in all, and that the failed command wrote
nothing. No test trains; none leaves a server running. The logic that needs no process of
its own (the server supervision, the variants of a bad data file, the store check) is also
exercised in-process, which is fast.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hvae.data import sources
from hvae.errors import ConfigError, DataError, TrackingError

REPO = Path(__file__).resolve().parents[1]
# The environment the user gets by default: the variables hvae.logs sets must not be preset.
_UNSET = (
    "MLFLOW_TRACKING_URI",
    "HVAE_DATA_DIR",
    "TF_CPP_MIN_LOG_LEVEL",
    "MLFLOW_LOGGING_LEVEL",
    "DVC_ROOT",
)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _UNSET}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return {**env, **extra}


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    return root


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _hvae(
    project: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hvae.cli", *args],
        cwd=project,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _one_line(
    result: subprocess.CompletedProcess, command: str, *fragments: str, lines: int = 1
) -> str:
    """The error line; stderr holds at most `lines` lines and ends with it."""
    err = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert err, "nothing on stderr"
    assert err[-1].startswith(f"hvae {command}: error: "), result.stderr
    for fragment in fragments:
        assert fragment in err[-1], result.stderr
    assert len(err) <= lines, result.stderr
    assert "Traceback" not in result.stderr
    return err[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _listening() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def _processes_with(*words: str) -> list[int]:
    """Our processes whose command line holds every one of `words` as an argument."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if all(w.encode() in argv for w in words):
            found.append(int(entry.name))
    return found


# -- 1 and 6. hvae ui / hvae serve: the address --------------------------------------------------


def test_ui_refuses_a_port_out_of_range(project: Path) -> None:
    before = _files(project)
    result = _hvae(project, "ui", "--port", "99999", timeout=120)
    _one_line(result, "ui", "--port 99999: expected a port in 1..65535")
    assert _files(project) == before  # no mlflow.db: nothing was started or opened


def test_ui_refuses_a_port_in_use(project: Path) -> None:
    before = _files(project)
    with _listening() as port:
        result = _hvae(project, "ui", "--port", str(port), timeout=120)
    _one_line(result, "ui", f"cannot listen on 127.0.0.1:{port} (address already in use)")
    assert _files(project) == before


def test_serve_checks_its_arguments_before_anything(project: Path) -> None:
    before = _files(project)
    result = _hvae(project, "serve", "--max-body-mb", "0", timeout=120)
    _one_line(result, "serve", "--max-body-mb 0.0: expected a size in MB > 0 and <= 1024")
    assert _files(project) == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "0"], "--port 0: expected a port in 1..65535"),
        (["--max-body-mb", "-1"], "--max-body-mb -1.0: expected a size in MB > 0 and <= 1024"),
        (
            ["--max-body-mb", "1e6"],
            "--max-body-mb 1000000.0: expected a size in MB > 0 and <= 1024",
        ),
        (["--max-body-mb", "nan"], "--max-body-mb nan: expected a size in MB > 0 and <= 1024"),
        (["--workers", "0"], "--workers 0: expected 1 to 32"),
        (["--workers", "1000000"], "--workers 1000000: expected 1 to 32"),
    ],
)
def test_serve_argument_checks(argv, message, project: Path, monkeypatch, capsys) -> None:
    from hvae.cli import main

    monkeypatch.chdir(project)
    assert main(["serve", *argv]) == 1
    assert capsys.readouterr().err == f"hvae serve: error: {message}\n"
    assert _files(project) == {"params.yaml"}


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["serve", "--port", "abc"],
            "hvae serve: error: argument --port: invalid int value: 'abc'",
        ),
        (["ui", "--port", "1.5"], "hvae ui: error: argument --port: invalid int value: '1.5'"),
        (
            ["promote", "--mode", "up"],
            "hvae promote: error: argument --mode: invalid choice: 'up' (choose from 'min', 'max')",
        ),
        (["evaluate", "--bogus"], "hvae: error: unrecognized arguments: --bogus"),
    ],
)
def test_argparse_errors_are_one_line(argv, line, project: Path, monkeypatch, capsys) -> None:
    from hvae.cli import main

    monkeypatch.chdir(project)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert capsys.readouterr().err == f"{line}\n"  # no usage block before it
    assert _files(project) == {"params.yaml"}


def test_ui_and_serve_share_the_bind_check() -> None:
    from hvae.commands import check_listen

    with _listening() as port, pytest.raises(ConfigError) as info:
        check_listen("127.0.0.1", port)
    assert str(info.value).startswith(f"cannot listen on 127.0.0.1:{port} (address already in")
    check_listen("127.0.0.1", port)  # free again
    with pytest.raises(ConfigError, match=r"^--port 65536: expected a port in 1\.\.65535$"):
        check_listen("127.0.0.1", 65536)
    with pytest.raises(ConfigError, match=r"^--host no-such-host\.invalid: cannot listen there"):
        check_listen("no-such-host.invalid", 5000)


# -- 1. the server a command starts: dies while starting, or runs ---------------------------

_DIES = """
import sys, time
print("INFO starting", flush=True)
print("Traceback (most recent call last):", file=sys.stderr)
print("OSError: [Errno 98] address already in use", file=sys.stderr, flush=True)
sys.exit(0)  # mlflow server exits 0 whatever its web server did
"""

_SERVES = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"OK")
    def log_message(self, *a):
        print("served", self.path, file=sys.stderr, flush=True)
s = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H)
print("listening", flush=True)
s.handle_request()
sys.exit(3)
"""


def test_a_server_that_dies_while_starting_is_one_line(capsys) -> None:
    from hvae.commands import run_server
    from hvae.errors import ServerError

    port = _free_port()
    with pytest.raises(ServerError) as info:
        run_server(
            [sys.executable, "-c", _DIES],
            _env(),
            f"http://127.0.0.1:{port}/health",
            "the test server",
        )
    assert str(info.value).startswith("the test server exited with code 0 after ")
    assert str(info.value).endswith("before it served (OSError: [Errno 98] address already in use)")
    assert capsys.readouterr().err == ""  # its traceback is not shown, the cause is named


def test_a_running_servers_logs_are_shown_and_its_failure_named(capsys) -> None:
    from hvae.commands import run_server
    from hvae.errors import ServerError

    port = _free_port()
    with pytest.raises(ServerError, match=r"^the test server exited with code 3 \(served /health"):
        run_server(
            [sys.executable, "-c", _SERVES, str(port)],
            _env(),
            f"http://127.0.0.1:{port}/health",
            "the test server",
        )
    err = capsys.readouterr().err
    assert "listening" in err and "served /health" in err


# -- 5. SIGTERM ---------------------------------------------------------------------------


def _group(pgid: int) -> list[int]:
    """The live processes in process group `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # a zombie runs nothing
            members.append(int(entry.name))
    return members


def test_sigterm_stops_ui_and_its_mlflow_server(project: Path) -> None:
    """SIGTERM unwinds like Ctrl-C: exit 143, one line, and the mlflow server is gone too,
    with everything it started (its process group)."""
    port = _free_port()
    ui = subprocess.Popen(
        [sys.executable, "-m", "hvae.cli", "ui", "--port", str(port)],
        cwd=project,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    server_group = None
    try:
        assert ui.stdout.readline().startswith(f"ui: MLflow UI at http://127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        while not (servers := _processes_with("server", "--port", str(port))):
            assert ui.poll() is None, ui.stderr.read()
            assert time.monotonic() < deadline, "the mlflow server never started"
            time.sleep(0.1)
        server_group = os.getpgid(servers[0])
        assert server_group != os.getpgid(ui.pid)  # its own group, which ui stops
        ui.send_signal(signal.SIGTERM)
        assert ui.wait(timeout=60) == 143
        err = ui.stderr.read().strip().splitlines()
        assert err[-1] == "hvae ui: terminated", err
        assert "Traceback" not in "\n".join(err)
        deadline = time.monotonic() + 10
        while _group(server_group):
            assert time.monotonic() < deadline, [
                (pid, Path(f"/proc/{pid}/stat").read_text()[:80]) for pid in _group(server_group)
            ]
            time.sleep(0.2)
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGKILL)
        if server_group is not None and _group(server_group):
            os.killpg(server_group, signal.SIGKILL)
        ui.wait(timeout=10)


# -- 2. tracebacks where one line is promised ----------------------------------------------


def test_render_without_metrics_json(project: Path) -> None:
    reports = project / "reports"
    reports.mkdir()
    (reports / "train_history.csv").write_text("epoch,loss\n0,1.0\n")
    (reports / "time_to_quality.csv").write_text("epoch,train_seconds,val_nll\n")
    before = _files(project)
    result = _hvae(project, "render")
    _one_line(result, "render", "reports/metrics.json: not found (run `hvae evaluate` first)")
    assert _files(project) == before  # no figures, no mlflow.db: it stopped before both


def test_ood_refuses_missing_unreadable_or_mismatched_test_scores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ood reuses evaluate's per-image NLLs only if they were estimated with today's k."""
    import numpy as np

    from hvae.errors import DataError
    from hvae.stages import ood

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"^data/scores/test.npz: not found \(run `hvae evaluate`"):
        ood._read_test_scores(1000, 100)
    (tmp_path / "data/scores").mkdir(parents=True)
    path = tmp_path / "data/scores/test.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"^data/scores/test.npz: unreadable .*run `hvae evaluate`"):
        ood._read_test_scores(1000, 100)
    # A file from before evaluate kept L(x) at llr_samples: unreadable, re-run evaluate.
    np.savez(path, log_px=np.zeros(3), iw_samples=1000)
    with pytest.raises(DataError, match=r"unreadable .*log_px_llr.*run `hvae evaluate` again"):
        ood._read_test_scores(1000, 100)
    scores = {"log_px": np.zeros(3), "log_px_llr": np.ones(3)}
    np.savez(path, **scores, iw_samples=100, llr_samples=100)
    with pytest.raises(
        DataError,
        match=r"scored with evaluate.iw_samples 100, params say 1000; run `hvae evaluate` again",
    ):
        ood._read_test_scores(1000, 100)
    with pytest.raises(DataError, match=r"evaluate.llr_samples 100, params say 10; run"):
        ood._read_test_scores(100, 10)
    np.savez(path, log_px=np.zeros(3), log_px_llr=np.ones(2), iw_samples=100, llr_samples=10)
    with pytest.raises(DataError, match=r"3 log_px but 2 log_px_llr scores; run `hvae evaluate`"):
        ood._read_test_scores(100, 10)
    np.savez(path, **scores, iw_samples=100, llr_samples=10)
    log_px, log_px_llr = ood._read_test_scores(100, 10)
    assert (log_px == 0).all() and (log_px_llr == 1).all()


def test_models_on_a_damaged_store(project: Path) -> None:
    # A fresh store first: made quietly (MLflow's table-creation INFO lines are gone).
    fresh = _hvae(project, "models")
    _one_line(fresh, "models", "registered model 'hvae-mnist' not found")
    store = project / "mlflow.db"
    whole = store.read_bytes()
    assert len(whole) > 200_000

    store.write_bytes(whole[:100_000])  # a truncated copy
    result = _hvae(project, "models")
    _one_line(
        result,
        "models",
        f"{store}: cannot open the MLflow store (database disk image is malformed)",
        f"mv {store} {store}.broken",
    )
    assert _files(project) == {"params.yaml", "mlflow.db"}


def test_store_check_refuses_junk_a_folder_and_a_missing_folder(tmp_path: Path) -> None:
    """Random bytes; and what MLflow itself retries for about 100 s before failing."""
    from hvae.tracking import runs

    (tmp_path / "junk.db").write_bytes(os.urandom(20_000))
    with pytest.raises(TrackingError, match=r"junk\.db: cannot open the MLflow store \(file is"):
        runs.check_store(f"sqlite:///{tmp_path / 'junk.db'}")
    (tmp_path / "mlflow.db").mkdir()
    with pytest.raises(TrackingError, match=r"mlflow\.db: cannot open the MLflow store \(a dir"):
        runs.check_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(TrackingError, match=r"its folder .*/nowhere does not exist"):
        runs.check_store(f"sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}")


def test_a_store_damaged_deeper_in_is_one_line_too(tmp_path: Path) -> None:
    """Damage check_store does not read (it opens the file, no integrity check)."""
    from hvae.tracking import runs

    error = sqlite3.DatabaseError("database disk image is malformed")
    try:
        try:
            raise error
        except sqlite3.DatabaseError as exc:
            raise RuntimeError("wrapped by a library") from exc
    except RuntimeError as wrapped:
        found = runs.damaged_store_error(wrapped)
    assert isinstance(found, TrackingError)
    assert "the MLflow store is damaged (database disk image is malformed)" in str(found)
    assert runs.damaged_store_error(RuntimeError("other")) is None


# -- 3. a raw data file that is there but wrong ---------------------------------------------

IMAGES = "train-images-idx3-ubyte"


def test_prepare_names_a_symlink_to_dev_null(project: Path, tmp_path: Path) -> None:
    data = tmp_path / "datasets"
    (data / "mnist").mkdir(parents=True)
    (data / "mnist" / f"{IMAGES}.gz").symlink_to(os.devnull)
    before = _files(project)
    result = _hvae(project, "prepare", env=_env(HVAE_DATA_DIR=str(data)))
    line = _one_line(
        result,
        "prepare",
        f"{data}/mnist/{IMAGES}.gz: empty file (a symlink to /dev/null); expected the mnist "
        f"IDX file {IMAGES}",
        sources.MNIST.md5[IMAGES],
    )
    assert "download" not in line
    assert _files(project) == before  # no data/raw, no data/prepared


def _obtain_error(folder: Path) -> str:
    spec = sources.DatasetSpec("mnist", {IMAGES: "0" * 32}, mirrors=("http://127.0.0.1:9/",))
    with pytest.raises(DataError) as info:
        sources.obtain(spec, [IMAGES], folder)
    return str(info.value)


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda p: p.symlink_to(p.parent / "gone.gz"), "broken symlink -> {dir}/gone.gz"),
        (lambda p: p.mkdir(), "a directory, not a file"),
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: (p.parent / "e").write_bytes(b"") or p.symlink_to("e"), "empty file (a sym"),
    ],
    ids=["dangling symlink", "directory", "empty file", "symlink to an empty file"],
)
def test_a_wrong_local_file_is_not_missing(make, problem, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(sources.DATA_DIR_ENV, raising=False)
    folder = tmp_path / "raw" / "mnist"
    folder.mkdir(parents=True)
    make(folder / f"{IMAGES}.gz")
    message = _obtain_error(tmp_path / "raw")
    assert message.startswith(f"{folder}/{IMAGES}.gz: {problem.format(dir=folder)}")
    assert "download" not in message


# -- 4. a stage's error is the last line, after no start-up chatter -------------------------


def test_train_in_a_bad_state(project: Path) -> None:
    """No prepared data. Before: 8 lines (absl/CUDA notices twice, cuInit, MLflow's INFO)."""
    result = _hvae(project, "train")
    _one_line(result, "train", "data/prepared/manifest.json: not found (run `hvae prepare` first)")
    # It opened the store (before any training) and wrote nothing else.
    assert not (project / "reports").exists() and not (project / "models").exists()


def test_evaluate_without_models(project: Path) -> None:
    """Before: 5 lines."""
    result = _hvae(project, "evaluate")
    _one_line(result, "evaluate", "models/", "run `hvae train` first")
    assert not (project / "reports").exists()


def test_prepare_with_a_corrupt_file(project: Path, tmp_path: Path) -> None:
    data = tmp_path / "datasets"
    (data / "mnist").mkdir(parents=True)
    (data / "mnist" / f"{IMAGES}.gz").write_bytes(gzip.compress(os.urandom(1000))[:500])
    before = _files(project)
    result = _hvae(project, "prepare", env=_env(HVAE_DATA_DIR=str(data)))
    _one_line(result, "prepare", f"{data}/mnist/{IMAGES}.gz: corrupt or truncated gzip")
    assert _files(project) == before


def test_the_filter_keeps_what_is_not_known_noise() -> None:
    from hvae import logs

    lines = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
        "I0000 00:00:1.0  1 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
        "GPU will not be used.\n",
        "E0000 00:00:1.0  1 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n",
        "UserWarning: something real\n",
        # Printed on AVX-512 CPUs whatever TF_CPP_MIN_LOG_LEVEL says.
        "I0000 00:00:1.0  1 port.cc:153] oneDNN custom operations are on. You may see slightly "
        "different numerical results due to floating-point round-off errors from different "
        "computation orders. To turn them off, set the environment variable "
        "`TF_ENABLE_ONEDNN_OPTS=0`.\n",
    ]
    assert logs.drop_noise(lines) == ["UserWarning: something real\n"]
    # With a driver installed, a failing cuInit is news: kept.
    assert logs.drop_noise(lines[2:4]) == lines[2:4]


@pytest.mark.parametrize(
    ("level", "filtered"), [(None, True), ("2", True), ("3", True), ("1", False), ("0", False)]
)
def test_asking_tensorflow_for_its_notices_turns_the_filter_off(
    monkeypatch: pytest.MonkeyPatch, level: str | None, filtered: bool
) -> None:
    """Level 2 inherited from a parent hvae (or a test that ran main in-process) still
    filters; only a user who asks for INFO or WARNING lines gets the start-up notices."""
    from hvae import logs

    if level is None:
        monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    else:
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", level)
    assert logs._filtering() is filtered
