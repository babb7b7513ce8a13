"""`hvae <command>`: the pipeline stages and the registry around them.

TensorFlow is imported only by the stages that need it, so `hvae --help`, `hvae models` and
`hvae promote` start quickly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

from hvae import __version__
from hvae.errors import ConfigError, HVAEError

STAGES = {
    "prepare": "verify and parse the MNIST IDX files, split and binarize -> data/prepared",
    "train": "train the hierarchical VAE -> models/, reports/train_history.csv, an MLflow run",
    "evaluate": "test ELBO, per-layer KL, active units, IW NLL -> reports/metrics.json, registry",
    "render": "figures -> reports/figures/",
}
COMMANDS = {
    "models": "list the registered model's versions: metrics, aliases, lineage",
    "promote": "move an alias (default champion) to a version if it passes the metric gate",
    "rollback": "move an alias back to the version it replaced",
    "ui": "start the MLflow UI on the project's store (127.0.0.1 by default)",
}


def _registry_options(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--alias", help="alias to move (default: promote.alias in params)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hvae", description=__doc__.splitlines()[0])
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
        if name == "ui":
            cmd.add_argument("--host", default="127.0.0.1", help="(default: %(default)s)")
            cmd.add_argument("--port", type=int, default=5000, help="(default: %(default)s)")
    return parser


def _run(args: argparse.Namespace) -> int | None:
    from hvae.config import GATE_METRICS, load_params
    from hvae.tracking import project_root

    params = load_params(args.params)
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
    stage = importlib.import_module(f"hvae.stages.{args.command}")
    if args.command == "prepare":
        return stage.run(params)
    return stage.run(params, root)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Quiet TensorFlow's C++ start-up chatter; users can still override it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.perf_counter()
    try:
        code = _run(args)
    except HVAEError as exc:
        print(f"hvae {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"hvae {args.command}: interrupted", file=sys.stderr)
        return 130
    if args.command in STAGES:
        print(f"hvae {args.command}: done in {time.perf_counter() - started:.1f} s")
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
