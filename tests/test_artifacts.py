"""Loading the trained model: every broken file is a one-line DataError naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from hvae import artifacts
from hvae.errors import DataError
from hvae.model import build_model

TINY = {"latent_dims": [4, 2], "hidden_dim": 8, "blocks_per_layer": 1}


@pytest.fixture()
def saved(tmp_path: Path) -> Path:
    model = build_model(TINY)
    model.save_weights(tmp_path / artifacts.WEIGHTS)
    artifacts.save_config(model, tmp_path)
    return tmp_path


def test_round_trip(saved: Path) -> None:
    assert artifacts.load_model(saved).latent_dims == [4, 2]


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(b"not an HDF5 file at all"),
        lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),  # killed mid-copy
        lambda p: p.write_bytes(b""),
    ],
    ids=["garbage", "truncated", "empty"],
)
def test_corrupt_weights(saved: Path, damage) -> None:
    damage(saved / artifacts.WEIGHTS)
    with pytest.raises(DataError, match=r"model\.weights\.h5: cannot load weights") as info:
        artifacts.load_model(saved)
    assert "\n" not in str(info.value)


def test_weights_of_another_architecture(saved: Path) -> None:
    build_model({**TINY, "hidden_dim": 16}).save_weights(saved / artifacts.WEIGHTS)
    with pytest.raises(DataError, match=r"model\.weights\.h5: cannot load weights"):
        artifacts.load_model(saved)


def test_missing_weights(saved: Path) -> None:
    (saved / artifacts.WEIGHTS).unlink()
    with pytest.raises(DataError, match=r"model\.weights\.h5: not found \(run `hvae train`"):
        artifacts.load_model(saved)


@pytest.mark.parametrize("text", ["{", ""])
def test_corrupt_config(saved: Path, text: str) -> None:
    (saved / artifacts.CONFIG).write_text(text)
    with pytest.raises(DataError, match=r"model\.json: not valid JSON"):
        artifacts.load_model(saved)
