"""Semi-supervised classifiers on a trained model's posterior means, compared on one machine.

    python -m bench.semisup_methods [--params params.yaml] [--draws 5]
        [--features posterior_means encoder pixels]

Run from a project whose `models/` and `data/prepared/` hold a trained model. For each feature
set (every layer's posterior means; the encoder's deepest feature d_L; the raw pixels as the
baseline) it builds the k-nearest-
neighbour graph of the 50 000 training images once, then for k in (10, 20) and 100 and 1 000
balanced labels prints the error of label spreading after 20, 50, 100 and 200 steps on the
validation split (for choosing) and the test set, and of a linear probe on the same labels.
Each line gives the graph's CPU seconds, so methods compare as error per CPU-minute.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from bench.args import count
from hvae import artifacts, paths
from hvae.config import load_params
from hvae.data import prepared
from hvae.evaluation import label_spreading as ls
from hvae.evaluation.linear_probe import balanced_subset, fit_softmax
from hvae.evaluation.representations import image_features

STEPS = (20, 50, 100, 200)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--draws", type=count(1, 100), default=5)
    parser.add_argument(
        "--features",
        nargs="+",
        choices=[*ls.FEATURES, "pixels"],
        default=[*ls.FEATURES, "pixels"],
    )
    return parser


def main() -> None:
    args = build_parser().parse_args()
    params = load_params(args.params)
    model = artifacts.load_model(paths.MODELS)
    splits = {
        s: prepared.load_split(paths.PREPARED, paths.TRAIN_FILE, s)
        for s in ("train", "valid", "test")
    }
    images = {s: split.images for s, split in splits.items()}
    images["train"] = prepared.binarize_once(images["train"], params.prepare.seed + 3)
    labels = {s: split.labels for s, split in splits.items()}
    features = {}
    for kind in ls.FEATURES:
        if kind in args.features:
            features[kind] = {s: image_features(model, x, kind, 500) for s, x in images.items()}
    if "pixels" in args.features:
        features["pixels"] = {
            s: x.reshape(len(x), -1).astype(np.float32) for s, x in images.items()
        }
    for name, feats in features.items():
        mean, scale = ls.standardizer(feats["train"])
        std = {s: (x - mean) / scale for s, x in feats.items()}
        for k in (10, 20):
            started = time.process_time()
            graph = ls.Graph.build(*ls.nearest(std["train"], std["train"], k, exclude_self=True))
            queries = {s: ls.nearest(std[s], std["train"], k) for s in ("valid", "test")}
            graph_cpu = time.process_time() - started
            for budget in (100, 1000):
                errors: dict[tuple, list[float]] = {}
                for r in range(args.draws):
                    chosen = balanced_subset(labels["train"], budget, seed=r)
                    probe = fit_softmax(feats["train"][chosen], labels["train"][chosen])
                    errors.setdefault(("linear probe", "test"), []).append(
                        1 - probe.accuracy(feats["test"], labels["test"])
                    )
                    for steps in STEPS:
                        fitted = ls.fit(graph, std["train"], mean, scale, chosen,
                                        labels["train"][chosen], 0.99, steps)  # fmt: skip
                        for split, near in queries.items():
                            guess = fitted.vote(*near).argmax(axis=1)
                            errors.setdefault((f"spreading, {steps} steps", split), []).append(
                                float(np.mean(guess != labels[split]))
                            )
                for (method, split), values in errors.items():
                    print(
                        f"{name:10s} k={k:2d} ({graph_cpu:4.0f} CPU s) {budget:4d} labels  "
                        f"{method:22s} {split:5s} error "
                        f"{np.mean(values):.4f} ± {np.std(values):.4f}",
                        flush=True,
                    )
            if name == "pixels":
                break  # k = 10 only: the baseline


if __name__ == "__main__":
    main()
