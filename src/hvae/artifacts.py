"""The trained model on disk: weights plus the architecture config to rebuild it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from hvae import atomic
from hvae.errors import DataError
from hvae.model import HierarchicalVAE, build_model

WEIGHTS = "model.weights.h5"
CONFIG = "model.json"


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
