"""`hvae <command>`: the pipeline stages and the registry around them.

TensorFlow is imported only by the stages that need it, so `hvae --help`, `hvae models` and
`hvae promote` start quickly.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path
from typing import NoReturn

from hvae import __version__, interrupts, logs
from hvae.errors import ConfigError, HVAEError

STAGES = {
    "prepare": "verify and parse the MNIST IDX files, split and binarize -> data/prepared",
    "train": "train the hierarchical VAE -> models/, reports/train_history.csv, an MLflow run",
    "calibrate": "choose and threshold the served OOD score on validation data -> "
    "models/ood_detector.json, models/ood_reference.npz, reports/calibrate.json",
    "evaluate": "test ELBO, per-layer KL, active units, IW NLL -> reports/metrics.json, registry",
    "ood": "OOD detection (every score, the served one) -> reports/ood.json, reports/ood_roc/",
    "probe": "linear probes of every layer from a few labels -> reports/probe.json",
    "semisup": "label spreading from a few labels -> reports/semisup.json, models/classifier.npz",
    "render": "figures and the model card -> reports/figures/, reports/model_card.md",
}
COMMANDS = {
    "models": "list the registered model's versions: metrics, aliases, lineage",
    "promote": "move an alias (default champion) to a version if it passes the metric gate",
    "rollback": "move an alias back to the version it replaced",
    "ui": "start the MLflow UI on the project's store (127.0.0.1 by default)",
    "serve": "serve a registered model over HTTP (default: the promote.alias version)",
}
# The stages that run TensorFlow: imported up front, without its start-up notices.
TENSORFLOW_STAGES = ("train", "calibrate", "evaluate", "ood", "probe", "semisup", "render")
# `hvae serve` bounds: each worker holds a model (~0.8 GB here), and every body is read whole.
MAX_WORKERS = 32
MAX_BODY_MB = 1024


def _registry_options(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--alias", help="alias to move (default: promote.alias in params)")


class _OneLineParser(argparse.ArgumentParser):
    """argparse prints its whole usage before an error; the CLI's errors are one line, such as
    `hvae serve: error: argument --port: invalid int value: 'abc'` (`--help` shows the usage).
    Sub-commands' parsers are of the same class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="hvae", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"hvae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in STAGES.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument(
            "--params", default="params.yaml", help="params file (default: %(default)s)"
        )
    for name, help_text in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument(
            "--params", default="params.yaml", help="params file (default: %(default)s)"
        )
        if name in ("promote", "rollback"):
            _registry_options(cmd)
        if name == "promote":
            cmd.add_argument("--version", help="candidate version (default: the newest)")
            cmd.add_argument("--metric", help="version tag to compare (default: promote.metric)")
            cmd.add_argument("--mode", choices=["min", "max"], help="min: lower is better")
            cmd.add_argument("--margin", type=float, help="required improvement (>= 0)")
            cmd.add_argument("--force", action="store_true", help="move even if the gate fails")
            cmd.add_argument("--dry-run", action="store_true", help="decide, change nothing")
        if name in ("ui", "serve"):
            port = 5000 if name == "ui" else 5001
            cmd.add_argument("--host", default="127.0.0.1", help="(default: %(default)s)")
            cmd.add_argument(
                "--port", type=int, default=port, help="1..65535 (default: %(default)s)"
            )
        if name == "serve":
            cmd.add_argument(
                "--model",
                help="model URI (default: models:/<mlflow.registered_model>@<promote.alias>)",
            )
            cmd.add_argument(
                "--max-body-mb",
                type=float,
                # 10 000 rows (the scorer's limit) of integer grey levels fit in 32 MB of JSON.
                default=32.0,
                help="largest request body in MB, > 0 (default: %(default)s)",
            )
            cmd.add_argument(
                "--workers", type=int, default=1, help="server processes (default: %(default)s)"
            )
    return parser


def check_server_args(args: argparse.Namespace) -> None:
    """`hvae ui` and `hvae serve`: the arguments checked before anything is imported or read
    (whether the address is free is checked later, by commands.check_listen)."""
    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: expected a port in 1..65535")
    if args.command != "serve":
        return
    if not 0 < args.max_body_mb <= MAX_BODY_MB:  # also refuses nan
        raise ConfigError(
            f"--max-body-mb {args.max_body_mb}: expected a size in MB > 0 and <= {MAX_BODY_MB}"
        )
    if not 1 <= args.workers <= MAX_WORKERS:
        raise ConfigError(f"--workers {args.workers}: expected 1 to {MAX_WORKERS}")


def _run(args: argparse.Namespace) -> int | None:
    if args.command in ("ui", "serve"):
        check_server_args(args)
    from hvae.config import GATE_METRICS, load_params

    params = load_params(args.params)
    if args.command == "prepare":  # needs no store: MLflow is not even imported
        return importlib.import_module("hvae.stages.prepare").run(params)
    from hvae.tracking.runs import project_root

    root = project_root(Path.cwd())
    if args.command in COMMANDS:
        from hvae import commands

        if getattr(args, "margin", None) is not None and args.margin < 0:
            raise ConfigError(f"--margin: must be >= 0 (got {args.margin})")
        if getattr(args, "metric", None) is not None and args.metric not in GATE_METRICS:
            raise ConfigError(
                f"--metric: expected one of {', '.join(GATE_METRICS)} (the metrics evaluate "
                f"tags versions with); got {args.metric!r}"
            )
        return getattr(commands, args.command)(args, params, root)
    if args.command in TENSORFLOW_STAGES:
        logs.import_tensorflow()
    return importlib.import_module(f"hvae.stages.{args.command}").run(params, root)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Before TensorFlow or MLflow is imported: their start-up chatter must not bury the
    # command's own line (users can still override the levels, see hvae.logs).
    logs.quiet()
    started = time.perf_counter()
    try:
        with interrupts.recorded():
            code = _run(args)
            # A signal that library code swallowed still ends the command as interrupted.
            interrupts.raise_if_received()
    except HVAEError as exc:
        print(f"hvae {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except interrupts.Terminated:
        print(f"hvae {args.command}: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"hvae {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # A store that opened but is damaged further in: one line too, not SQLAlchemy's.
        runs = sys.modules.get("hvae.tracking.runs")
        damaged = runs.damaged_store_error(exc) if runs else None
        if damaged is None:
            raise
        print(f"hvae {args.command}: error: {damaged}", file=sys.stderr)
        return 1
    if args.command in STAGES:
        print(f"hvae {args.command}: done in {time.perf_counter() - started:.1f} s")
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
