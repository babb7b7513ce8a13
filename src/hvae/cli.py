"""`hvae <stage>`: every pipeline stage as a command. TensorFlow is imported only when needed."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

from hvae import __version__
from hvae.errors import HVAEError

STAGES = {
    "prepare": "verify and parse the MNIST IDX files, split and binarize -> data/prepared",
    "train": "train the hierarchical VAE -> models/, reports/train_history.csv, an MLflow run",
    "evaluate": "test ELBO, per-layer KL, active units, IW NLL -> reports/metrics.json, registry",
    "render": "figures -> reports/figures/",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hvae", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"hvae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in STAGES.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument(
            "--params", default="params.yaml", help="params file (default: %(default)s)"
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Quiet TensorFlow's C++ start-up chatter; users can still override it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.perf_counter()
    try:
        from hvae.config import load_params
        from hvae.tracking import project_root

        params = load_params(args.params)
        stage = importlib.import_module(f"hvae.stages.{args.command}")
        if args.command == "prepare":
            stage.run(params)
        else:
            stage.run(params, project_root(Path.cwd()))
    except HVAEError as exc:
        print(f"hvae {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"hvae {args.command}: interrupted", file=sys.stderr)
        return 130
    print(f"hvae {args.command}: done in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
