"""Quiet the libraries' start-up chatter, so a command's own error line is its last line.

What printed before a stage's one-line error (measured, TensorFlow 2.21 and MLflow 3.17 on a
CPU machine):

- TensorFlow's C++ notices: TF_CPP_MIN_LOG_LEVEL=2 drops INFO and WARNING lines (oneDNN,
  CPU instructions), but not the lines its bundled Abseil writes before anything initialises
  logging ("All log messages before absl::InitializeLog() ...", "Could not find cuda drivers
  on your machine", then "failed call to cuInit"; on AVX-512 CPUs "oneDNN custom operations
  are on"), twice at import and once at the first device query. Those are dropped by
  `import_tensorflow`, which does both with file descriptor 2 redirected; every other line
  it caught is written out afterwards.
- MLflow's INFO lines ("Creating initial MLflow database tables...", "Updating database
  tables", system-metrics monitoring): MLFLOW_LOGGING_LEVEL=WARNING keeps its warnings.

Anything the user set wins: TF_CPP_MIN_LOG_LEVEL=0 or 1 also turns the filter off.
Our own code reports through print and HVAEError, which none of this touches.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

DEFAULTS = {
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    # A bar per tiny artifact read (the stages read each other's metrics files): noise.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
# The values quiet() put in the environment (so child processes can be given the user's).
_set_here: dict[str, str] = {}

_ABSL_PREINIT = re.compile(
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"
)
_NO_DRIVER = re.compile(r"\] Could not find cuda drivers on your machine, GPU will not be used\.$")
# Without a driver this failure is the expected consequence; with one it is news: kept.
_CUINIT = re.compile(r"\] failed call to cuInit: ")
# On CPUs with AVX-512 (seen on an AMD EPYC with AVX-512 BF16) this INFO line comes before
# logging is initialised too, so TF_CPP_MIN_LOG_LEVEL=2 does not hide it.
_ONEDNN = re.compile(r"\] oneDNN custom operations are on\. ")
# GPU builds of TensorFlow on a machine without CUDA register these plugins twice.
_DOUBLE_REGISTRATION = re.compile(
    r"\] (Unable to register cu(DNN|FFT|BLAS) factory: Attempting to register factory for "
    r"plugin .* when one has already been registered|computation placer already registered)"
)


def quiet() -> None:
    """Set the libraries' log levels; call before importing TensorFlow or MLflow."""
    for key, value in DEFAULTS.items():
        if key not in os.environ:
            os.environ[key] = value
            _set_here[key] = value


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ as the user had it (without quiet()'s defaults), plus `extra`: for a
    long-running child such as the MLflow server, whose own logs the user wants."""
    env = {k: v for k, v in os.environ.items() if _set_here.get(k) != v}
    return {**env, **(extra or {})}


def _filtering() -> bool:
    # The notices dropped are the INFO/WARNING lines level 2 is meant to hide; a user who asks
    # for them (level 0 or 1) gets them. Level 2 inherited from a parent hvae filters too.
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", DEFAULTS["TF_CPP_MIN_LOG_LEVEL"]).strip()
    return not level.isdigit() or int(level) >= 2


def drop_noise(lines: list[str]) -> list[str]:
    """The lines that are not TensorFlow's known harmless start-up notices."""
    no_driver = any(_NO_DRIVER.search(line) for line in lines)
    noise = [_ABSL_PREINIT, _NO_DRIVER, _ONEDNN, _DOUBLE_REGISTRATION]
    noise += [_CUINIT] if no_driver else []
    return [line for line in lines if not any(p.search(line.rstrip("\n")) for p in noise)]


@contextlib.contextmanager
def native_stderr_filtered() -> Iterator[None]:
    """Catch what is written to file descriptor 2 (C++ libraries write there directly) and
    write it back without the known start-up notices when the block ends."""
    if not _filtering():
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no fd 2 (a daemon) or no sys.stderr: nothing to do
        yield
        return
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            text = caught.read().decode(errors="replace")
            kept = "".join(drop_noise(text.splitlines(keepends=True)))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def import_tensorflow() -> None:
    """Import TensorFlow and let it look for devices (its first query prints the cuInit
    line), without the notices. Listing physical devices initialises no runtime, so
    determinism and distribution strategies can still be set up afterwards."""
    with native_stderr_filtered():
        import tensorflow as tf

        tf.config.list_physical_devices()
