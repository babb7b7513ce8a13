"""The prepared arrays: split, binarize once, save compactly, load back with a digest check."""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hvae.errors import DataError

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Split:
    """uint8 images (N, 28, 28) with labels; `binary` says whether pixels are {0, 1}."""

    images: np.ndarray
    labels: np.ndarray
    binary: bool

    def __len__(self) -> int:
        return len(self.labels)

    def flat(self) -> np.ndarray:
        return self.images.reshape(len(self.images), -1)


def split_validation(
    images: np.ndarray, labels: np.ndarray, size: int, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A seeded random hold-out: (train, validation), each (images, labels)."""
    order = np.random.default_rng(seed).permutation(len(labels))
    val, train = np.sort(order[:size]), np.sort(order[size:])
    return (images[train], labels[train]), (images[val], labels[val])


def binarize_once(images: np.ndarray, seed: int) -> np.ndarray:
    """Bernoulli draw per pixel with p = intensity/255; fixed by `seed`."""
    rng = np.random.default_rng(seed)
    return (rng.random(images.shape) < images / 255.0).astype(np.uint8)


def array_digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        h.update(key.encode())
        h.update(str(arrays[key].shape).encode())
        h.update(np.ascontiguousarray(arrays[key]).tobytes())
    return h.hexdigest()


def json_digest(obj: object) -> str:
    """sha256 of a JSON-able object, stable across key order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> str:
    np.savez(path, **arrays)
    return array_digest(arrays)


def load_split(folder: str | Path, file: str, split: str) -> Split:
    """One split ('train', 'valid', 'test') of a prepared .npz, verified against the manifest."""
    folder = Path(folder)
    path = folder / file
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError as exc:
        raise DataError(f"{exc.filename}: not found (run `hvae prepare` first)") from None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: unreadable prepared data ({exc})") from None
    expected = manifest.get("files", {}).get(file, {}).get("sha256")
    if array_digest(arrays) != expected:
        raise DataError(f"{path}: content does not match {folder / MANIFEST}; re-run prepare")
    return Split(
        images=arrays[f"{split}_images"],
        labels=arrays[f"{split}_labels"],
        binary=split != "train",
    )


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: not found (run `hvae prepare` first)") from None
