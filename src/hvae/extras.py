"""What evaluate packs beside the model's weights: semisup's classifier and calibrate's OOD
detector, in the model folder and in every registered version (hvae.tracking.registry)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from hvae import atomic
from hvae.errors import DataError
from hvae.evaluation.detector import MAX_REFERENCE, Detector
from hvae.evaluation.label_spreading import SpreadClassifier

CLASSIFIER = "classifier.npz"  # semisup's classifier
DETECTOR = "ood_detector.json"  # calibrate's OOD score and threshold
REFERENCE = "ood_reference.npz"  # its neighbour distance's reference images (may be empty)
FILES = (CLASSIFIER, DETECTOR, REFERENCE)
# The most bytes the reference npz may unpack to: the most reference images, 1 024 bytes (8 192
# pixels) each. A compressed file could otherwise claim gigabytes in a few kilobytes.
REFERENCE_BYTES = MAX_REFERENCE * 1024
HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def extras_digest(folder: str | Path) -> str:
    """sha256 of the classifier and OOD detector beside the model ("none" for a missing
    one): what a registered version was packed with."""
    digest = hashlib.sha256()
    for name in FILES:
        path = Path(folder) / name
        digest.update(path.read_bytes() if path.exists() else b"none")
    return digest.hexdigest()[:16]


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
    """The detector's JSON and its reference images' npz (empty without a reference), the
    npz first: the JSON names what it needs."""
    with atomic.atomic_path(Path(folder) / REFERENCE) as tmp, tmp.open("wb") as f:
        np.savez_compressed(f, **detector.to_arrays())
    atomic.write_json(Path(folder) / DETECTOR, detector.to_dict())


def load_detector(folder: str | Path) -> Detector | None:
    """The OOD detector beside the model, or None when the model has none."""
    path = Path(folder) / DETECTOR
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot load the OOD detector ({exc})") from None
    reference, arrays = Path(folder) / REFERENCE, None
    if isinstance(data, dict) and data.get("reference_images"):
        try:
            with np.load(reference, allow_pickle=False) as stored:
                arrays = _bounded_arrays(stored, REFERENCE_BYTES)
        except FileNotFoundError:
            raise DataError(f"{reference}: not found (run `hvae calibrate` again)") from None
        except (OSError, ValueError) as exc:
            raise DataError(f"{reference}: cannot load the reference images ({exc})") from None
    try:
        return Detector.from_dict(data, arrays)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        named = f"{path} with {reference.name}" if arrays is not None else str(path)
        raise DataError(f"{named}: cannot load the OOD detector ({exc})") from None


def _bounded_arrays(stored: np.lib.npyio.NpzFile, limit: int) -> dict[str, np.ndarray]:
    """Every array of `stored`, each read only after its header shows it within `limit`
    bytes (raises ValueError otherwise)."""
    arrays = {}
    for name in stored.files:
        with stored.zip.open(f"{name}.npy") as f:
            version = np.lib.format.read_magic(f)
            read = HEADER_READERS.get(version)
            if read is None:
                raise ValueError(f"{name}: npy format {version} not supported")
            shape, _, dtype = read(f)
        size = math.prod(shape) * dtype.itemsize
        if size > limit:
            raise ValueError(f"{name}: {shape} of {dtype} is {size} bytes, above {limit}")
        arrays[name] = stored[name]
    return arrays
