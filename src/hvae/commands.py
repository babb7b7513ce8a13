"""The commands around the pipeline: list versions, promote, roll back, open the UI.

Each takes the parsed CLI arguments, the params and the project root; none imports TensorFlow.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from hvae import locks, promotion, tracking
from hvae.config import Params
from hvae.errors import RegistryError


def _client(root: Path) -> MlflowClient:
    uri = tracking.configure(root)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def models(args: argparse.Namespace, params: Params, root: Path) -> None:
    table = promotion.versions_table(_client(root), params.registered_model)
    print(f"{params.registered_model} ({tracking.tracking_uri(root)})")
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


def ui(args: argparse.Namespace, params: Params, root: Path) -> int:
    uri = tracking.tracking_uri(root)
    if tracking.is_server(uri):
        print(f"ui: the project's store is a server; open {uri}")
        return 0
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", uri,
        # Runs keep their own absolute artifact locations (<root>/mlartifacts); this is only
        # the default for experiments created through the UI.
        "--default-artifact-root", (root / tracking.ARTIFACTS_DIR).as_uri(),
        "--host", args.host,
        "--port", str(args.port),
        "--workers", "1",
    ]  # fmt: skip
    base = f"http://{args.host}:{args.port}"
    print(f"ui: MLflow UI at {base} (store {uri}); Ctrl-C stops it")
    # MLflow 3.17's UI opens every experiment in its GenAI view unless told otherwise (the
    # experiments' mlflow.experimentKind tag is not enough there); this link opens training.
    training_view = f"{base}/#/experiments?workflowType=machine_learning"
    print(f"ui: runs and models in the training view: {training_view}")
    sys.stdout.flush()
    # mlflow starts its web server (uvicorn) by name: make this environment's scripts findable.
    scripts = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": os.pathsep.join([scripts, os.environ.get("PATH", "")])}
    return subprocess.call(command, env=env)
