"""The commands around the pipeline: list versions, promote, roll back, open the UI, serve.

Each takes the parsed CLI arguments, the params and the project root; none imports TensorFlow.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from hvae import logs
from hvae.config import Params
from hvae.errors import ConfigError, RegistryError, ServerError
from hvae.tracking import locks, promotion, runs


def _client(root: Path) -> MlflowClient:
    uri = runs.configure(root)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def models(args: argparse.Namespace, params: Params, root: Path) -> None:
    table = promotion.versions_table(_client(root), params.registered_model)
    print(f"{params.registered_model} ({runs.tracking_uri(root)})")
    print(table.to_string(index=False) if len(table) else "(no versions)")


def _registry_lock(root: Path, command: str):
    """Serialise read-decide-move commands: two promotions at once must not both compare
    against the same holder. This covers commands on one machine; MLflow offers no
    compare-and-set on aliases, so hosts sharing a server are not serialised (README)."""
    return locks.exclusive(root / locks.REGISTRY_LOCK, f"hvae {command}")


def promote(args: argparse.Namespace, params: Params, root: Path) -> None:
    if args.dry_run:
        _promote(args, params, root)
        return
    with _registry_lock(root, "promote"):
        _promote(args, params, root)


def _promote(args: argparse.Namespace, params: Params, root: Path) -> None:
    p = params.promote
    decision = promotion.decide(
        _client(root),
        params.registered_model,
        alias=args.alias or p.alias,
        version=args.version,
        metric=args.metric or p.metric,
        mode=args.mode or p.mode,
        margin=p.margin if args.margin is None else args.margin,
        force=args.force,
    )
    if args.dry_run:
        action = "would move" if decision.acts else "would refuse"
        print(f"promote (dry run): {decision.describe()}; {action} '{decision.alias}'")
        if not decision.acts:
            raise RegistryError(f"{decision.describe()} (dry run, nothing changed)")
        return
    if not decision.acts:
        raise RegistryError(f"{decision.describe()}; '{decision.alias}' unchanged")
    promotion.promote(_client(root), decision)
    print(f"promote: {decision.describe()}; '{decision.alias}' -> version {decision.candidate}")


def rollback(args: argparse.Namespace, params: Params, root: Path) -> None:
    alias = args.alias or params.promote.alias
    with _registry_lock(root, "rollback"):
        old, new = promotion.rollback(_client(root), params.registered_model, alias)
    print(f"rollback: '{alias}' moved from version {old} back to version {new}")


def check_listen(host: str, port: int, flag: str = "--port") -> None:
    """Refuse, in one line, an address a server could not listen on: a port outside
    1..65535, an unknown host, or a port something else holds (bound here for a moment)."""
    if not 1 <= port <= 65535:
        raise ConfigError(f"{flag} {port}: expected a port in 1..65535")
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host}: cannot listen there ({exc.strerror})") from None
    with socket.socket(family, kind, proto) as probe:
        # As uvicorn does: a port left in TIME_WAIT by an earlier server is free to use.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
            raise ConfigError(
                f"cannot listen on {where} ({reason}); stop what holds it or choose another {flag}"
            ) from None


# A server that has not answered /health by then is probably just slow: its logs go live.
_STARTUP_SECONDS = 120.0
_TAIL_LINES = 40


class _LogRelay:
    """Pass a child's output on to our stderr, line by line, and keep its last lines.

    Until `live()` the lines are held back: a server that dies while starting is reported
    in one line (its cause taken from the held lines), not with its traceback.
    """

    def __init__(self, stream) -> None:
        self._stream = stream
        self._held: list[str] = []
        self._live = False
        self._lock = threading.Lock()
        self.tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        for line in iter(self._stream.readline, ""):
            with self._lock:
                self.tail.append(line)
                if self._live:
                    sys.stderr.write(line)
                    sys.stderr.flush()
                else:
                    self._held.append(line)

    def live(self) -> None:
        with self._lock:
            self._live = True
            sys.stderr.write("".join(self._held))
            sys.stderr.flush()
            self._held.clear()

    def finish(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout)

    def cause(self) -> str:
        """The child's last error line, else its last line."""
        lines = [line.strip() for line in self.tail if line.strip()]
        errors = [line for line in lines if "error" in line.lower() or "exception" in line]
        found = (errors or lines or ["no output"])[-1]
        return found if len(found) <= 300 else found[:297] + "..."


# The server is on this machine: a user's HTTP(S)_PROXY must not be asked for it.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _healthy(url: str) -> bool:
    try:
        with _DIRECT.open(url, timeout=2) as reply:
            return reply.status == 200
    except (OSError, ValueError):
        return False


def _stop(process: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop the child and everything it started (its own process group): SIGTERM, then
    SIGKILL after `grace` seconds."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired, KeyboardInterrupt):
            process.wait(grace)
    # Workers the server started may outlive it: the group goes, whatever is left of it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)


class _HeldSignals:
    """From creation to `release()`: SIGINT and SIGTERM are noted, not acted on; release
    restores the handlers and raises the first one noted (in the main thread only)."""

    def __init__(self) -> None:
        self._noted: list[int] = []
        self._previous: dict[int, object] = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._note)
            except (ValueError, TypeError):  # not the main thread
                break

    def _note(self, signum: int, frame: object) -> None:
        self._noted.append(signum)

    def release(self) -> None:
        previous, self._previous = self._previous, {}
        for signum, handler in previous.items():
            if handler is not None:
                signal.signal(signum, handler)
        if previous and self._noted:
            signal.raise_signal(self._noted[0])


def run_server(command: list[str], env: dict[str, str], health_url: str, name: str) -> int:
    """Run a server in its own process group until it exits (or Ctrl-C / SIGTERM here,
    which stop it and its workers). One-line error if it exits non-zero, or before it
    ever answered `health_url`; its logs go to stderr once it answers."""
    started = time.monotonic()
    # A Ctrl-C or SIGTERM while the child starts would leave it running unseen: held until
    # the child is known, then acted on inside the try below, which stops it.
    held = _HeldSignals()
    relay = None
    try:
        process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
            process_group=0,  # Ctrl-C reaches this process only; _stop stops the whole group
        )
    except BaseException:
        held.release()
        raise
    served = False
    try:
        relay = _LogRelay(process.stdout)
        held.release()  # a signal noted meanwhile is raised here, and the child stopped
        while process.poll() is None and not served:
            if _healthy(health_url):
                served = True
            elif time.monotonic() - started > _STARTUP_SECONDS:
                break
            else:
                time.sleep(0.5)
        if served or process.poll() is None:
            relay.live()  # running: the user sees its logs from now on
        code = process.wait()
    finally:
        _stop(process)
        if relay is not None:
            relay.finish()
        held.release()  # if it was not released above
    seconds = time.monotonic() - started
    if not served:
        raise ServerError(
            f"{name} exited with code {code} after {seconds:.0f} s, before it served "
            f"({relay.cause()})"
        )
    if code != 0:
        raise ServerError(f"{name} exited with code {code} ({relay.cause()})")
    return 0


def _url_host(host: str) -> str:
    """Where this machine reaches a server listening on `host` (wildcards: loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


def ui(args: argparse.Namespace, params: Params, root: Path) -> int:
    uri = runs.tracking_uri(root)
    if runs.is_server(uri):
        print(f"ui: the project's store is a server; open {uri}")
        return 0
    check_listen(args.host, args.port)
    runs.check_store(uri)  # a damaged store: one line now, not the server's traceback
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", uri,
        # Runs keep their own absolute artifact locations (<root>/mlartifacts); this is only
        # the default for experiments created through the UI.
        "--default-artifact-root", (root / runs.ARTIFACTS_DIR).as_uri(),
        "--host", args.host,
        "--port", str(args.port),
        "--workers", "1",
    ]  # fmt: skip
    base = f"http://{_url_host(args.host)}:{args.port}"
    print(f"ui: MLflow UI at {base} (store {uri}); Ctrl-C stops it")
    # MLflow 3.17's UI opens every experiment in its GenAI view unless told otherwise (the
    # experiments' mlflow.experimentKind tag is not enough there); this link opens training.
    training_view = f"{base}/#/experiments?workflowType=machine_learning"
    print(f"ui: runs and models in the training view: {training_view}")
    sys.stdout.flush()
    # mlflow starts its web server (uvicorn) by name: make this environment's scripts findable.
    scripts = str(Path(sys.executable).parent)
    env = logs.child_env({"PATH": os.pathsep.join([scripts, os.environ.get("PATH", "")])})
    return run_server(command, env, f"{base}/health", "the MLflow server")


def serve(args: argparse.Namespace, params: Params, root: Path) -> None:
    # The CLI checked --port, --max-body-mb and --workers (cli.check_server_args).
    check_listen(args.host, args.port)
    model_uri = args.model or f"models:/{params.registered_model}@{params.promote.alias}"
    if model_uri.startswith(("models:", "runs:")):
        runs.configure(root)  # the registry (and its runs) the URI names
    from hvae.serving import server

    if args.workers == 1:  # the model loads here: TensorFlow without its notices
        logs.import_tensorflow()
    try:
        server.serve(model_uri, args.host, args.port, int(args.max_body_mb * 2**20), args.workers)
    except MlflowException as exc:  # the model (or its alias) could not be loaded
        first = str(exc.message).strip().splitlines()[0] if str(exc.message).strip() else ""
        label = "--model" if args.model else "model"
        raise RegistryError(f"{label} {model_uri}: cannot load it ({first})") from None
