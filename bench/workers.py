"""Epoch time of multi-worker training: 1 worker against 2, on loopback, same configuration.

    python -m bench.workers [--params params.yaml] [--epochs 2] [--rounds 2] [--set key=value ...]

Needs data/prepared (run `dvc repro prepare` first). Each worker is an `hvae train` process
with `train.strategy: multi_worker` and its own TF_CONFIG, in its own temporary folder (as on
its own machine) and logging to a throwaway MLflow store, so the project's store is untouched.
The default --set is the tiny configuration of the end-to-end tests. Rounds alternate 1 and
2 workers, so a busy machine slows both alike.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml

from bench.args import count
from hvae import paths
from hvae.training.distribute import tf_config

TINY = ["model.hidden_dim=32", "train.batch_size=250", "train.kl_warmup_epochs=1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _params(source: Path, epochs: int, settings: list[str]) -> dict:
    values = yaml.safe_load(source.read_text())
    for setting in [*settings, f"train.epochs={epochs}", "train.strategy=multi_worker"]:
        key, value = setting.split("=", 1)
        section, name = key.split(".")
        values[section][name] = yaml.safe_load(value)
    values["train"]["probe_every_epochs"] = 0  # the probe runs on the chief alone
    return values


def epoch_seconds(n_workers: int, params: dict, scratch: Path) -> list[float]:
    """Train with n workers; the chief's per-epoch wall times."""
    addresses = [f"127.0.0.1:{_free_port()}" for _ in range(n_workers)]
    hvae = str(Path(sys.executable).parent / "hvae")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch / 'mlflow.db'}"
    processes = []
    for index in range(n_workers):
        folder = scratch / f"{n_workers}-workers-{index}"
        (folder / "data").mkdir(parents=True)
        (folder / "data/prepared").symlink_to(paths.PREPARED.resolve())
        (folder / "params.yaml").write_text(yaml.safe_dump(params))
        log = (folder / "train.log").open("w")
        processes.append(
            subprocess.Popen(
                [hvae, "train"],
                cwd=folder,
                env={**env, "TF_CONFIG": tf_config(addresses, index)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    if any(p.wait() != 0 for p in processes):
        raise SystemExit(f"a worker failed; see {scratch}/{n_workers}-workers-*/train.log")
    history = pd.read_csv(scratch / f"{n_workers}-workers-0" / paths.HISTORY)
    return history["epoch_seconds"].tolist()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--epochs", type=count(1, 1000), default=2)
    parser.add_argument("--rounds", type=count(1, 100), default=2)
    parser.add_argument("--set", nargs="*", default=TINY, metavar="KEY=VALUE")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    params = _params(Path(args.params), args.epochs, args.set)
    times: dict[int, list[list[float]]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="hvae-workers-") as tmp:
        for round_ in range(args.rounds):
            for n in times:
                seconds = epoch_seconds(n, params, Path(tmp) / f"round{round_}")
                times[n].append(seconds)
                shown = ", ".join(f"{s:.1f}" for s in seconds)
                print(f"round {round_ + 1}, {n} worker(s): epochs {shown} s", flush=True)
    print(f"settings: {' '.join(args.set)}, {args.epochs} epochs, {args.rounds} rounds; medians:")
    for epoch in range(args.epochs):
        one, two = (statistics.median(r[epoch] for r in times[n]) for n in (1, 2))
        print(f"  epoch {epoch + 1}: 1 worker {one:.1f} s, 2 workers {two:.1f} s, {two / one:.2f}x")


if __name__ == "__main__":
    main()
