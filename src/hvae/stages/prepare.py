"""prepare: verified IDX files -> train/validation/test arrays and a manifest."""

from __future__ import annotations

import time

import numpy as np

from hvae import atomic, paths
from hvae.config import Params
from hvae.data import idx, prepared, sources
from hvae.errors import DataError

TRAIN_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
TEST_STEMS = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _images_and_labels(files: dict[str, bytes], stems: tuple[str, str], dataset: str):
    images = idx.read_images(files[stems[0]], f"{dataset}/{stems[0]}")
    labels = idx.read_labels(files[stems[1]], f"{dataset}/{stems[1]}")
    if len(images) != len(labels):
        raise DataError(
            f"{dataset}/{stems[0]}: {len(images)} images but {stems[1]} has {len(labels)} labels"
        )
    return images, labels


def run(params: Params) -> None:
    started = time.perf_counter()
    p = params.prepare
    split_seed, binarize_seed = np.random.SeedSequence(p.seed).spawn(2)
    split_seed = int(split_seed.generate_state(1)[0])
    binarize_seed = int(binarize_seed.generate_state(1)[0])

    spec = sources.DATASETS[params.data.dataset]
    files = sources.obtain(spec, TRAIN_STEMS + TEST_STEMS, paths.RAW)
    train_x, train_y = _images_and_labels(files, TRAIN_STEMS, spec.name)
    test_x, test_y = _images_and_labels(files, TEST_STEMS, spec.name)
    (train_x, train_y), (val_x, val_y) = prepared.split_validation(
        train_x, train_y, p.validation_size, split_seed
    )
    main = {
        "train_images": train_x,
        "train_labels": train_y,
        "valid_images": prepared.binarize_once(val_x, binarize_seed),
        "valid_labels": val_y,
        "test_images": prepared.binarize_once(test_x, binarize_seed + 1),
        "test_labels": test_y,
    }

    ood_spec = sources.DATASETS[params.data.ood_dataset]
    ood_files = sources.obtain(ood_spec, TEST_STEMS + TRAIN_STEMS, paths.RAW)
    ood_x, ood_y = _images_and_labels(ood_files, TEST_STEMS, ood_spec.name)
    # The OOD validation set comes from the other dataset's *training* images, so that
    # choosing and thresholding an OOD score never sees either test set.
    ood_train_x, ood_train_y = _images_and_labels(ood_files, TRAIN_STEMS, ood_spec.name)
    if p.ood_validation_size > len(ood_train_y):
        raise DataError(
            f"prepare.ood_validation_size: {p.ood_validation_size} is more than the "
            f"{len(ood_train_y)} images of {ood_spec.name}/{TRAIN_STEMS[0]}"
        )
    _, (ood_val_x, ood_val_y) = prepared.split_validation(
        ood_train_x, ood_train_y, p.ood_validation_size, split_seed + 1
    )
    ood = {
        "valid_images": prepared.binarize_once(ood_val_x, binarize_seed + 3),
        "valid_labels": ood_val_y,
        "test_images": prepared.binarize_once(ood_x, binarize_seed + 2),
        "test_labels": ood_y,
    }

    with atomic.atomic_dir(paths.PREPARED) as out:
        manifest = {
            "dataset": spec.name,
            "ood_dataset": ood_spec.name,
            "sources": {
                **{f"{spec.name}/{s}": spec.md5[s] for s in TRAIN_STEMS + TEST_STEMS},
                **{f"{ood_spec.name}/{s}": ood_spec.md5[s] for s in TEST_STEMS + TRAIN_STEMS},
            },
            "split": {"seed": p.seed, "train": len(train_y), "validation": len(val_y)},
            "binarization": "validation and test: one Bernoulli draw, p = pixel/255, fixed seed",
            "counts": {
                "train": len(train_y),
                "valid": len(val_y),
                "test": len(test_y),
                "ood_valid": len(ood_val_y),
                "ood_test": len(ood_y),
            },
            "files": {
                paths.TRAIN_FILE: {"sha256": prepared.save_arrays(out / paths.TRAIN_FILE, main)},
                paths.OOD_FILE: {"sha256": prepared.save_arrays(out / paths.OOD_FILE, ood)},
            },
        }
        # One digest for the whole prepared data set: MLflow's dataset input and lineage tags.
        manifest["digest"] = prepared.json_digest(
            {k: v["sha256"] for k, v in manifest["files"].items()}
        )
        atomic.write_json(out / prepared.MANIFEST, manifest)
    atomic.write_json(paths.timings("prepare"), {"seconds": time.perf_counter() - started})
    print(
        f"prepare: {len(train_y)} train / {len(val_y)} validation / {len(test_y)} test "
        f"{spec.name} images, {len(ood_val_y)} validation / {len(ood_y)} test "
        f"{ood_spec.name} images -> {paths.PREPARED}"
    )
