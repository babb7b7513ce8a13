"""The trained model on disk: weights plus the architecture config to rebuild it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from hvae import atomic
from hvae.errors import DataError
from hvae.evaluation.detector import Detector
from hvae.evaluation.label_spreading import SpreadClassifier
from hvae.model import HierarchicalVAE, build_model

WEIGHTS = "model.weights.h5"
CONFIG = "model.json"
CLASSIFIER = "classifier.npz"  # semisup's classifier, packed into the logged model
DETECTOR = "ood_detector.json"  # calibrate's OOD score and threshold, packed likewise


def files_digest(folder: str | Path) -> str:
    """sha256 of the architecture and weights files as stored: what ties them to the run
    that wrote them (tracking.write_run_record). Missing files make no digest."""
    digest = hashlib.sha256()
    for name in (CONFIG, WEIGHTS):
        try:
            digest.update((Path(folder) / name).read_bytes())
        except FileNotFoundError:
            raise DataError(f"{Path(folder) / name}: not found (run `hvae train` first)") from None
    return digest.hexdigest()[:16]


def extras_digest(folder: str | Path) -> str:
    """sha256 of the classifier and OOD detector beside the model ("none" for a missing
    one): what a registered version was packed with."""
    digest = hashlib.sha256()
    for name in (CLASSIFIER, DETECTOR):
        path = Path(folder) / name
        digest.update(path.read_bytes() if path.exists() else b"none")
    return digest.hexdigest()[:16]


def save_config(model: HierarchicalVAE, folder: Path) -> None:
    atomic.write_json(Path(folder) / CONFIG, model.get_config())


def load_model(folder: str | Path) -> HierarchicalVAE:
    folder = Path(folder)
    try:
        config = json.loads((folder / CONFIG).read_text())
    except FileNotFoundError:
        raise DataError(f"{folder / CONFIG}: not found (run `hvae train` first)") from None
    except ValueError:
        raise DataError(f"{folder / CONFIG}: not valid JSON") from None
    model = build_model(config)
    try:
        model.load_weights(folder / WEIGHTS)
    except FileNotFoundError:
        raise DataError(f"{folder / WEIGHTS}: not found (run `hvae train` first)") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{folder / WEIGHTS}: cannot load weights ({exc})") from None
    return model


def save_classifier(classifier: SpreadClassifier, folder: Path) -> None:
    with atomic.atomic_path(Path(folder) / CLASSIFIER) as tmp, tmp.open("wb") as f:
        np.savez(f, **classifier.to_arrays())


def load_classifier(folder: str | Path) -> SpreadClassifier | None:
    """The classifier beside the model, or None when the model has none."""
    path = Path(folder) / CLASSIFIER
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return SpreadClassifier.from_arrays(arrays)
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: cannot load the classifier ({exc})") from None


def save_detector(detector: Detector, folder: Path) -> None:
    atomic.write_json(Path(folder) / DETECTOR, detector.to_dict())


def load_detector(folder: str | Path) -> Detector | None:
    """The OOD detector beside the model, or None when the model has none."""
    path = Path(folder) / DETECTOR
    if not path.exists():
        return None
    try:
        return Detector.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: cannot load the OOD detector ({exc})") from None
