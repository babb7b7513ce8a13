"""Seconds for the importance-weighted NLL over the full test set, as evaluate computes it,
and the sample throughput of its log-weights with and without the per-image posterior parts.

    python -m bench.evaluate_time [--params params.yaml] [--k 1000] [--images 10000]

(1) The IW NLL of the first `--images` test images at k = `--k`, through
bounds.iw_log_likelihood (evaluate's path). (2) Samples per second of one chunk of
log-weights (evaluate.batch_size images x evaluate.chunk_size samples), computed from the
tiled encoder features (each sample runs every posterior's whole hidden layer) and from the
tiled posterior parts (HierarchicalVAE.posterior_parts: the image-only share once per image),
alternated over the same rounds so a busy machine slows both alike; their ratio.
Needs a trained model in models/ and data/prepared (run `dvc repro` first).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from bench.args import count
from hvae import artifacts, paths
from hvae.config import MAX_IW_SAMPLES, load_params
from hvae.data import prepared
from hvae.evaluation import bounds


def chunk_throughputs(model, images: np.ndarray, chunk: int, rounds: int) -> dict[str, float]:
    """Samples/s of one (len(images) x chunk)-row chunk of log-weights, features vs parts."""
    x = tf.constant(images.reshape(len(images), -1).astype(np.float32))
    features = model.encode(x)
    parts = model.posterior_parts(features)
    tiled_x = tf.tile(x, [chunk, 1])

    @tf.function
    def from_features():
        return model.log_weights(tiled_x, [tf.tile(f, [chunk, 1]) for f in features])

    @tf.function
    def from_parts():
        return model.log_weights(tiled_x, parts=[tf.tile(p, [chunk, 1]) for p in parts])

    passes = {"features": from_features, "parts": from_parts}
    seconds = dict.fromkeys(passes, 0.0)
    for fn in passes.values():
        fn().numpy()  # trace and warm up
    for _ in range(rounds):
        for name, fn in passes.items():
            started = time.perf_counter()
            fn().numpy()
            seconds[name] += time.perf_counter() - started
    return {name: rounds * len(images) * chunk / s for name, s in seconds.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument(
        "--k", type=count(1, MAX_IW_SAMPLES), default=None, help="default: evaluate.iw_samples"
    )
    parser.add_argument(
        "--images", type=count(1, 10_000), default=10_000, help="test images for the NLL"
    )
    parser.add_argument("--rounds", type=count(1, 1000), default=10, help="chunks timed per path")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    e = load_params(args.params).evaluate
    k = args.k or e.iw_samples
    model = artifacts.load_model(paths.MODELS)
    test = prepared.load_split(paths.PREPARED, paths.TRAIN_FILE, "test").images[: args.images]
    rates = chunk_throughputs(model, test[: e.batch_size], e.chunk_size, args.rounds)
    print(
        f"log-weights, {e.batch_size} images x {e.chunk_size} samples a chunk, float32: "
        f"{rates['features']:.0f} samples/s from the features, {rates['parts']:.0f} from the "
        f"posterior parts ({rates['parts'] / rates['features']:.2f}x)"
    )
    started = time.perf_counter()
    log_px = bounds.iw_log_likelihood(model, test, k, e.batch_size, e.chunk_size)
    seconds = time.perf_counter() - started
    print(f"IW NLL, k={k}, {len(test)} test images: {-log_px.mean():.2f} nats in {seconds:.0f} s")


if __name__ == "__main__":
    main()
