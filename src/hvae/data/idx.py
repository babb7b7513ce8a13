"""Strict reader for the IDX format MNIST ships in (http://yann.lecun.com/exdb/mnist/)."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from hvae.errors import DataError

_UBYTE = 0x08
IMAGE_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABEL_MAGIC = 0x00000801  # unsigned bytes, 1 dimension


def read_bytes(path: Path) -> bytes:
    """The uncompressed content of `path` (plain or gzip), or a DataError naming it."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip ({exc})") from None


def parse_idx(data: bytes, expected_magic: int, name: str) -> np.ndarray:
    """Parse IDX bytes into a uint8 array; any deviation from the header is an error."""
    if len(data) < 4:
        raise DataError(f"{name}: empty or truncated IDX file ({len(data)} bytes)")
    magic = struct.unpack(">I", data[:4])[0]
    if magic != expected_magic:
        raise DataError(
            f"{name}: wrong IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x}"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: truncated IDX header ({len(data)} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    count = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != count:
        raise DataError(
            f"{name}: IDX header promises {count} bytes of data for shape {dims}, "
            f"file holds {len(data) - header}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_images(data: bytes, name: str, rows: int = 28, cols: int = 28) -> np.ndarray:
    images = parse_idx(data, IMAGE_MAGIC, name)
    if images.shape[1:] != (rows, cols):
        raise DataError(
            f"{name}: images are {images.shape[1]}x{images.shape[2]}, expected {rows}x{cols}"
        )
    return images


def read_labels(data: bytes, name: str) -> np.ndarray:
    labels = parse_idx(data, LABEL_MAGIC, name)
    if labels.size and labels.max() > 9:
        raise DataError(f"{name}: label {int(labels.max())} out of range, expected 0-9")
    return labels


def write_idx(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX (used by tests and tools that make small files)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = (_UBYTE << 8) | array.ndim
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes()
