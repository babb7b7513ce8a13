"""Seconds for the importance-weighted NLL over the full test set, as evaluate computes it.

    python -m bench.evaluate_time [--params params.yaml] [--k 1000]

Needs a trained model in models/ and data/prepared (run `dvc repro` first).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from hvae import artifacts, paths
from hvae.config import load_params
from hvae.data import prepared
from hvae.evaluation import bounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--k", type=int, default=None, help="default: evaluate.iw_samples")
    args = parser.parse_args()
    e = load_params(args.params).evaluate
    k = args.k or e.iw_samples
    model = artifacts.load_model(paths.MODELS)
    test = prepared.load_split(paths.PREPARED, paths.TRAIN_FILE, "test")
    started = time.perf_counter()
    log_px = bounds.iw_log_likelihood(model, test.images, k, e.batch_size, e.chunk_size)
    seconds = time.perf_counter() - started
    print(f"IW NLL, k={k}, {len(test)} test images: {-log_px.mean():.2f} nats in {seconds:.0f} s")


if __name__ == "__main__":
    main()
