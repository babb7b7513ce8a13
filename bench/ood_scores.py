"""OOD scores beyond calibrate's candidates, compared on validation and test data.

    python -m bench.ood_scores [--params params.yaml] [--reference 20000] [--test-images 2000]

Run from a project whose `models/` and `data/prepared/` hold a trained model. It takes
calibrate's three sets, chosen as hvae.stages.calibrate chooses them (`calibrate.fit_images`
binarized training images; `calibrate.validation_images` in-distribution validation images
and as many of the other dataset's training images), and the first `--test-images` of both
test sets. For each it computes the 2L statistics that calibrate and ood read (bounds at
`evaluate.llr_samples`, reconstruction terms at `evaluate.recon_draws`) and the encoder's
bottom-up features d_1 … d_L, then prints the validation and test AUROC of:
- every candidate of hvae.evaluation.detector (typicality fitted on the fit set, as calibrate);
- `maha[d_l]`, `maha[d_all]`: the squared Mahalanobis distance of an image's encoder feature
  d_l (or of all of them side by side) from `--reference` binarized training images';
- `knn50[d_l]`, `knn50[d_all]`: the distance to the 50th nearest of those training images,
  standardized features on the unit sphere (after Sun et al. 2022); for d_all also the 10th
  and the 200th, and the 50th among the fit set's images alone;
- `sum[typicality_recon, …]`: both scores standardized by the fit set's mean and standard
  deviation, added.
The AUROC is the probability that an OOD image scores above an in-distribution one; the test
set's AUPRC and FPR at 80 % TPR follow it, as in reports/ood.json. Choose on the validation
column; the test columns are for reporting.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from bench.args import count
from hvae import artifacts, paths
from hvae.config import MNIST_TRAIN_SIZE, load_params
from hvae.data import prepared
from hvae.evaluation import anomaly, detector, ood
from hvae.stages import calibrate


def layer_features(model, images: np.ndarray) -> list[np.ndarray]:
    """d_1 … d_L (hidden_dim units each), then all of them side by side (d_all, last)."""
    features = anomaly.encoder_features(model, images, 500)
    return [*np.split(features, model.n_layers, axis=1), features]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--reference", type=count(1, MNIST_TRAIN_SIZE), default=20000)
    parser.add_argument("--test-images", type=count(1, 10_000), default=2000)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    params = load_params(args.params)
    e = params.evaluate
    model = artifacts.load_model(paths.MODELS)
    train = prepared.load_split(paths.PREPARED, paths.TRAIN_FILE, "train")
    valid = prepared.load_split(paths.PREPARED, paths.TRAIN_FILE, "valid")
    ood_valid = prepared.load_split(paths.PREPARED, paths.OOD_FILE, "valid")
    images = calibrate.image_sets(params, train, valid, ood_valid)  # calibrate's, draw for draw
    images.update(
        {
            "test": prepared.load_split(paths.PREPARED, paths.TRAIN_FILE, "test").images,
            "ood_test": prepared.load_split(paths.PREPARED, paths.OOD_FILE, "test").images,
        }
    )
    images["test"] = images["test"][: args.test_images]
    images["ood_test"] = images["ood_test"][: args.test_images]
    # calibrate's reference at the same seed, `--reference` images of it.
    sized = params.calibrate.model_copy(update={"reference_images": args.reference})
    reference = calibrate.reference_images(params.model_copy(update={"calibrate": sized}), train)

    started = time.perf_counter()
    stats = {
        name: anomaly.statistics(model, x, e.llr_samples, e.recon_draws, e.batch_size, e.chunk_size)
        for name, x in images.items()
    }
    stats_seconds = time.perf_counter() - started
    features = {name: layer_features(model, x) for name, x in images.items()}
    reference_features = layer_features(model, reference)
    names = [f"d{layer + 1}" for layer in range(model.n_layers)] + ["d_all"]

    scores: dict[str, dict[str, np.ndarray]] = {}
    typicality = detector.fit_typicalities(stats["fit"])
    for split, s in stats.items():
        for score, values in detector.scores(s, typicality).items():
            scores.setdefault(score, {})[split] = values
    for i, name in enumerate(names):
        maha = detector.Typicality.fit(reference_features[i])  # the same Mahalanobis distance
        knn = detector.NeighbourDistance.fit(reference_features[i], 50)
        for split, per_layer in features.items():
            scores.setdefault(f"maha[{name}]", {})[split] = maha(per_layer[i])
            scores.setdefault(f"knn50[{name}]", {})[split] = knn(per_layer[i])
    # All layers' features: other neighbour counts, and a reference of only the fit set's
    # images (what a served detector would have to carry: 2 000 x 1 024 floats, not 20 000).
    all_layers = len(names) - 1
    for k in (10, 200):
        knn = detector.NeighbourDistance.fit(reference_features[all_layers], k)
        scores[f"knn{k}[d_all]"] = {s: knn(f[all_layers]) for s, f in features.items()}
    knn = detector.NeighbourDistance.fit(features["fit"][all_layers], 50)
    scores["knn50[d_all], fit set as reference"] = {
        s: knn(f[all_layers]) for s, f in features.items()
    }
    for other in (f"maha[{names[-2]}]", "maha[d_all]", "knn50[d_all]"):
        parts = [scores["typicality_recon"], scores[other]]
        scores[f"sum[typicality_recon, {other}]"] = {
            split: sum((p[split] - p["fit"].mean()) / p["fit"].std() for p in parts)
            for split in images
        }

    print(
        f"{len(images['valid'])} + {len(images['ood_valid'])} validation, "
        f"{len(images['test'])} + {len(images['ood_test'])} test images; "
        f"statistics {stats_seconds:.0f} s"
    )
    print(f"{'score':44s} {'validation':>10s} {'test':>8s} {'AUPRC':>6s} {'FPR80':>6s}")
    for score, values in scores.items():
        test = ood.summary(values["test"], values["ood_test"])
        print(
            f"{score:44s} {ood.auroc(values['valid'], values['ood_valid']):10.4f} "
            f"{test['auroc']:8.4f} {test['auprc']:6.3f} {test['fpr80']:6.3f}"
        )


if __name__ == "__main__":
    main()
