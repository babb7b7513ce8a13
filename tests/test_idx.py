"""The strict IDX reader, on tiny files made with write_idx (plain and gzip)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from hvae.data.idx import (
    IMAGE_MAGIC,
    LABEL_MAGIC,
    parse_idx,
    read_bytes,
    read_images,
    read_labels,
    write_idx,
)
from hvae.errors import DataError


def _images(n: int = 5, rows: int = 28, cols: int = 28, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, rows, cols), dtype=np.uint8)


def _labels(n: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 10, n, dtype=np.uint8)


def _write(path: Path, payload: bytes, compress: bool) -> Path:
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def _load_images(path: Path) -> np.ndarray:
    return read_images(read_bytes(path), str(path))


def _load_labels(path: Path) -> np.ndarray:
    return read_labels(read_bytes(path), str(path))


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_images_round_trip(tmp_path: Path, compress: bool) -> None:
    images = _images()
    path = _write(tmp_path / "train-images-idx3-ubyte", write_idx(images), compress)
    loaded = _load_images(path)
    assert loaded.dtype == np.uint8
    assert loaded.shape == (5, 28, 28)
    np.testing.assert_array_equal(loaded, images)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_labels_round_trip(tmp_path: Path, compress: bool) -> None:
    labels = _labels(12)
    path = _write(tmp_path / "train-labels-idx1-ubyte", write_idx(labels), compress)
    loaded = _load_labels(path)
    assert loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded, labels)


def test_read_bytes_gives_identical_bytes_for_plain_and_gzip(tmp_path: Path) -> None:
    payload = write_idx(_images(2))
    plain = _write(tmp_path / "plain", payload, compress=False)
    packed = _write(tmp_path / "packed.gz", payload, compress=True)
    assert packed.read_bytes() != payload  # really compressed on disk
    assert read_bytes(plain) == read_bytes(packed) == payload


def test_write_idx_header_layout() -> None:
    data = write_idx(_images(3, rows=4, cols=5))
    assert struct.unpack(">4I", data[:16]) == (IMAGE_MAGIC, 3, 4, 5)
    assert len(data) == 16 + 3 * 4 * 5
    assert struct.unpack(">2I", write_idx(_labels(7))[:8]) == (LABEL_MAGIC, 7)


def test_non_default_image_size_is_accepted_when_asked_for() -> None:
    images = _images(2, rows=27, cols=28)
    assert read_images(write_idx(images), "small", rows=27, cols=28).shape == (2, 27, 28)


def test_empty_label_file_is_valid() -> None:
    assert read_labels(write_idx(np.zeros(0, np.uint8)), "none").shape == (0,)


# -- errors: each one is a DataError naming the file --------------------------------------------


def _expect_error(path: Path, loader, match: str) -> str:
    with pytest.raises(DataError, match=match) as info:
        loader(path)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message
    return message


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_wrong_magic(tmp_path: Path, compress: bool) -> None:
    # A label file handed to the image reader, and vice versa.
    labels = _write(tmp_path / "labels", write_idx(_labels()), compress)
    message = _expect_error(labels, _load_images, "wrong IDX magic number")
    assert "0x00000801" in message and "0x00000803" in message
    images = _write(tmp_path / "images", write_idx(_images()), compress)
    _expect_error(images, _load_labels, "wrong IDX magic number")


def test_wrong_element_type_in_magic(tmp_path: Path) -> None:
    # 0x0D = float32 elements: right dimension count, wrong type.
    data = struct.pack(">4I", 0x00000D03, 1, 28, 28) + bytes(28 * 28 * 4)
    _expect_error(_write(tmp_path / "floats", data, False), _load_images, "wrong IDX magic")


def test_truncated_header(tmp_path: Path) -> None:
    header_only = write_idx(_images())[:10]  # magic + 1.5 of the 3 dimensions
    path = _write(tmp_path / "short", header_only, compress=False)
    _expect_error(path, _load_images, "truncated IDX header")


@pytest.mark.parametrize("delta", [-1, 1], ids=["missing-byte", "extra-byte"])
def test_data_length_must_match_dims(tmp_path: Path, delta: int) -> None:
    data = write_idx(_images(3))
    data = data[:-1] if delta < 0 else data + b"\x00"
    path = _write(tmp_path / "odd", data, compress=True)
    message = _expect_error(path, _load_images, "promises 2352 bytes")
    assert f"file holds {2352 + delta}" in message


def test_wrong_image_dimensions(tmp_path: Path) -> None:
    path = _write(tmp_path / "27x28", write_idx(_images(2, rows=27, cols=28)), compress=False)
    message = _expect_error(path, _load_images, "27x28")
    assert "expected 28x28" in message


@pytest.mark.parametrize("loader", [_load_images, _load_labels], ids=["images", "labels"])
def test_empty_file(tmp_path: Path, loader) -> None:
    path = _write(tmp_path / "empty", b"", compress=False)
    _expect_error(path, loader, r"empty or truncated IDX file \(0 bytes\)")


def test_gzip_of_nothing_is_an_empty_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "empty.gz", b"", compress=True)
    _expect_error(path, _load_labels, "empty or truncated")


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda gz: gz[: len(gz) // 2], id="truncated"),
        pytest.param(lambda gz: gz[:-4], id="missing-size-trailer"),
        pytest.param(lambda gz: gz[:2], id="magic-only"),
        pytest.param(lambda gz: gz[:12] + bytes(8) + gz[20:], id="zeroed-deflate-stream"),
    ],
)
def test_corrupt_gzip(tmp_path: Path, damage) -> None:
    packed = gzip.compress(write_idx(_images(4)))
    path = tmp_path / "broken.gz"
    path.write_bytes(damage(packed))
    with pytest.raises(DataError, match="corrupt or truncated gzip") as info:
        read_bytes(path)
    assert str(path) in str(info.value)


def test_gzip_with_bad_crc(tmp_path: Path) -> None:
    packed = bytearray(gzip.compress(write_idx(_labels())))
    packed[-8] ^= 0xFF  # CRC32 of the trailer
    path = tmp_path / "crc.gz"
    path.write_bytes(bytes(packed))
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        read_bytes(path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere"
    _expect_error(path, read_bytes, "cannot read")


@pytest.mark.parametrize("bad", [10, 255])
def test_label_out_of_range(tmp_path: Path, bad: int) -> None:
    labels = _labels(6)
    labels[3] = bad
    path = _write(tmp_path / "labels.gz", write_idx(labels), compress=True)
    _expect_error(path, _load_labels, f"label {bad} out of range")


def test_parse_idx_names_the_given_source() -> None:
    with pytest.raises(DataError, match=r"^my-source: "):
        parse_idx(b"\x00\x00", IMAGE_MAGIC, "my-source")
