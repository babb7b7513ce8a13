"""Where the raw files come from (sources.obtain) and the prepared arrays (prepared.*).

obtain() is exercised with a fake DatasetSpec over tiny generated IDX files, and downloads
come from a throwaway http.server on 127.0.0.1 -- no network is touched.
"""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from hvae.data import prepared, sources
from hvae.data.idx import write_idx
from hvae.data.sources import DATA_DIR_ENV, DatasetSpec, md5_hex, obtain
from hvae.errors import DataError

IMAGES = "train-images-idx3-ubyte"
LABELS = "train-labels-idx1-ubyte"


def _payloads() -> dict[str, bytes]:
    rng = np.random.default_rng(7)
    return {
        IMAGES: write_idx(rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)),
        LABELS: write_idx(rng.integers(0, 10, 3, dtype=np.uint8)),
    }


PAYLOADS = _payloads()
SPEC = DatasetSpec(
    name="tinyset",
    md5={stem: md5_hex(data) for stem, data in PAYLOADS.items()},
    mirrors=(),
)


def _place(folder: Path, stem: str, compress: bool, payload: bytes | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = PAYLOADS[stem] if payload is None else payload
    path = folder / (f"{stem}.gz" if compress else stem)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.fixture(autouse=True)
def _no_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own HVAE_DATA_DIR must not leak into these tests."""
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


@pytest.fixture
def raw_dir(tmp_path: Path) -> Path:
    path = tmp_path / "raw"
    path.mkdir()
    return path


# -- local files --------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_found_in_raw_dir(raw_dir: Path, compress: bool) -> None:
    for stem in PAYLOADS:
        _place(raw_dir / SPEC.name, stem, compress)
    assert obtain(SPEC, list(PAYLOADS), raw_dir) == PAYLOADS


def test_gzip_and_plain_share_one_md5(raw_dir: Path) -> None:
    # The spec holds one MD5 per file; it is of the uncompressed bytes, so both forms pass.
    _place(raw_dir / SPEC.name, IMAGES, compress=True)
    _place(raw_dir / SPEC.name, LABELS, compress=False)
    assert obtain(SPEC, [IMAGES, LABELS], raw_dir) == PAYLOADS


def test_found_via_data_dir_env_first(
    tmp_path: Path, raw_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared"
    _place(shared / SPEC.name, IMAGES, compress=True)
    # A bad copy in raw_dir proves the environment directory is searched first.
    _place(raw_dir / SPEC.name, IMAGES, compress=False, payload=b"not the file")
    monkeypatch.setenv(DATA_DIR_ENV, str(shared))
    assert obtain(SPEC, [IMAGES], raw_dir) == {IMAGES: PAYLOADS[IMAGES]}


def test_data_dir_env_falls_back_to_raw_dir(
    tmp_path: Path, raw_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()  # exists but has no <dataset>/ folder
    _place(raw_dir / SPEC.name, LABELS, compress=True)
    monkeypatch.setenv(DATA_DIR_ENV, str(shared))
    assert obtain(SPEC, [LABELS], raw_dir) == {LABELS: PAYLOADS[LABELS]}


def test_data_dir_env_must_be_a_directory(
    tmp_path: Path, raw_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    not_a_dir = tmp_path / "file.txt"
    not_a_dir.write_text("x")
    _place(raw_dir / SPEC.name, LABELS, compress=True)  # would otherwise be found
    for value in (str(not_a_dir), str(tmp_path / "missing")):
        monkeypatch.setenv(DATA_DIR_ENV, value)
        with pytest.raises(DataError, match=f"{DATA_DIR_ENV}=.*not a directory") as info:
            obtain(SPEC, [LABELS], raw_dir)
        assert value in str(info.value)


def test_md5_mismatch_names_both_digests(raw_dir: Path) -> None:
    wrong = write_idx(np.zeros(3, np.uint8))
    path = _place(raw_dir / SPEC.name, LABELS, compress=True, payload=wrong)
    with pytest.raises(DataError) as info:
        obtain(SPEC, [LABELS], raw_dir)
    message = str(info.value)
    assert str(path) in message
    assert md5_hex(wrong) in message
    assert SPEC.md5[LABELS] in message


def test_missing_file_without_mirrors(tmp_path: Path, raw_dir: Path, monkeypatch) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setenv(DATA_DIR_ENV, str(shared))
    with pytest.raises(DataError, match="no mirror configured") as info:
        obtain(SPEC, [IMAGES], raw_dir, mirrors=())
    message = str(info.value)
    assert message.startswith(IMAGES)
    assert str(shared / SPEC.name) in message and str(raw_dir / SPEC.name) in message
    assert not (raw_dir / SPEC.name).exists()  # nothing was created on the way


# -- downloads from a local server --------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:
        pass


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL ending in '/', served folder) of a threaded HTTP server on 127.0.0.1."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"  # nothing listens here any more


def test_download_into_raw_dir(mirror, raw_dir: Path) -> None:
    url, served = mirror
    for stem in PAYLOADS:
        _place(served, stem, compress=True)
    assert obtain(SPEC, list(PAYLOADS), raw_dir, mirrors=[url], timeout=5) == PAYLOADS
    for stem, payload in PAYLOADS.items():
        kept = raw_dir / SPEC.name / f"{stem}.gz"
        assert gzip.decompress(kept.read_bytes()) == payload
    # The copies are used from now on: no mirror needed.
    assert obtain(SPEC, list(PAYLOADS), raw_dir, mirrors=()) == PAYLOADS


def test_download_falls_through_to_next_mirror(mirror, raw_dir: Path) -> None:
    url, served = mirror
    _place(served / "good", LABELS, compress=True)
    mirrors = [_closed_port_url(), url + "missing/", url + "good/"]
    assert obtain(SPEC, [LABELS], raw_dir, mirrors=mirrors, timeout=5) == {LABELS: PAYLOADS[LABELS]}


def test_downloaded_file_is_verified_and_never_kept_when_wrong(mirror, raw_dir: Path) -> None:
    url, served = mirror
    _place(served, LABELS, compress=True, payload=b"tampered")
    with pytest.raises(DataError, match=f"expected {SPEC.md5[LABELS]}"):
        obtain(SPEC, [LABELS], raw_dir, mirrors=[url], timeout=5)
    # A bad download must not sit in raw_dir and poison the next run.
    assert not (raw_dir / SPEC.name / f"{LABELS}.gz").exists()


def test_bad_mirror_content_falls_through_to_a_good_mirror(mirror, raw_dir: Path) -> None:
    url, served = mirror
    _place(served / "bad", LABELS, compress=True, payload=b"tampered")
    _place(served / "good", LABELS, compress=True)
    result = obtain(SPEC, [LABELS], raw_dir, mirrors=[url + "bad/", url + "good/"], timeout=5)
    assert result == {LABELS: PAYLOADS[LABELS]}
    assert (raw_dir / SPEC.name / f"{LABELS}.gz").is_file()


def test_unreachable_mirror(raw_dir: Path) -> None:
    url = _closed_port_url()
    with pytest.raises(DataError, match="could not download") as info:
        obtain(SPEC, [IMAGES], raw_dir, mirrors=[url], timeout=5)
    message = str(info.value)
    assert message.startswith(f"{IMAGES}.gz")
    assert url in message
    assert not (raw_dir / SPEC.name / f"{IMAGES}.gz").exists()


def test_mirror_without_the_file(mirror, raw_dir: Path) -> None:
    url, _ = mirror
    with pytest.raises(DataError, match="could not download") as info:
        obtain(SPEC, [IMAGES], raw_dir, mirrors=[url], timeout=5)
    assert "not found" in str(info.value).lower()
    folder = raw_dir / SPEC.name
    leftovers = list(folder.iterdir()) if folder.exists() else []
    assert leftovers == []  # no partial or temporary file left behind


def test_real_specs_are_complete() -> None:
    for spec in sources.DATASETS.values():
        kinds = ("images-idx3-ubyte", "labels-idx1-ubyte")
        stems = {f"{split}-{kind}" for split in sources.SPLITS for kind in kinds}
        assert set(spec.md5) == stems
        assert all(len(digest) == 32 for digest in spec.md5.values())
        assert spec.mirrors and all(m.endswith("/") for m in spec.mirrors)


# -- prepared arrays ----------------------------------------------------------------------------


def test_split_validation_sizes_and_disjointness() -> None:
    n = 50
    images = np.arange(n, dtype=np.uint8)[:, None, None] * np.ones((1, 2, 2), np.uint8)
    labels = np.arange(n) % 10
    ids = np.arange(n)
    (train_x, train_y), (val_x, val_y) = prepared.split_validation(images, ids, size=12, seed=3)
    assert len(train_y) == 38 and len(val_y) == 12
    assert len(train_x) == 38 and len(val_x) == 12
    assert set(train_y).isdisjoint(val_y)
    assert sorted([*train_y, *val_y]) == list(range(n))
    # Images travel with their labels.
    np.testing.assert_array_equal(train_x[:, 0, 0], train_y)
    np.testing.assert_array_equal(val_x[:, 0, 0], val_y)
    (_, _), (_, val_labels) = prepared.split_validation(images, labels, size=12, seed=3)
    np.testing.assert_array_equal(val_labels, val_y % 10)


def test_split_validation_is_determined_by_seed() -> None:
    images = np.zeros((100, 1, 1), np.uint8)
    ids = np.arange(100)
    first = prepared.split_validation(images, ids, size=20, seed=0)[1][1]
    again = prepared.split_validation(images, ids, size=20, seed=0)[1][1]
    other = prepared.split_validation(images, ids, size=20, seed=1)[1][1]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_binarize_once() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (200, 28, 28), dtype=np.uint8)
    a = prepared.binarize_once(images, seed=5)
    assert a.dtype == np.uint8 and a.shape == images.shape
    assert set(np.unique(a)) == {0, 1}
    np.testing.assert_array_equal(a, prepared.binarize_once(images, seed=5))
    assert not np.array_equal(a, prepared.binarize_once(images, seed=6))
    # 156 800 Bernoulli draws: the mean is within a few standard errors (~0.0013) of p.
    assert abs(a.mean() - images.mean() / 255.0) < 0.006


def test_binarize_once_extremes_are_certain() -> None:
    images = np.array([[0, 255], [255, 0]], np.uint8)[None].repeat(50, axis=0)
    np.testing.assert_array_equal(prepared.binarize_once(images, seed=1), images // 255)


def _prepared_folder(folder: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    arrays = {
        "train_images": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, 6, dtype=np.uint8),
        "valid_images": rng.integers(0, 2, (4, 28, 28), dtype=np.uint8),
        "valid_labels": rng.integers(0, 10, 4, dtype=np.uint8),
    }
    digest = prepared.save_arrays(folder / "mnist.npz", arrays)
    manifest = {"files": {"mnist.npz": {"sha256": digest}}}
    (folder / prepared.MANIFEST).write_text(json.dumps(manifest))
    return arrays


def test_save_and_load_split_round_trip(tmp_path: Path) -> None:
    arrays = _prepared_folder(tmp_path)
    train = prepared.load_split(tmp_path, "mnist.npz", "train")
    valid = prepared.load_split(str(tmp_path), "mnist.npz", "valid")
    np.testing.assert_array_equal(train.images, arrays["train_images"])
    np.testing.assert_array_equal(train.labels, arrays["train_labels"])
    np.testing.assert_array_equal(valid.images, arrays["valid_images"])
    assert len(train) == 6 and len(valid) == 4
    assert not train.binary and valid.binary
    assert valid.flat().shape == (4, 784)
    assert prepared.read_manifest(tmp_path)["files"]["mnist.npz"]["sha256"]


def test_tampered_arrays_are_rejected(tmp_path: Path) -> None:
    arrays = _prepared_folder(tmp_path)
    arrays["train_labels"] = (arrays["train_labels"] + 1) % 10
    prepared.save_arrays(tmp_path / "mnist.npz", arrays)  # manifest left as it was
    with pytest.raises(DataError, match="does not match") as info:
        prepared.load_split(tmp_path, "mnist.npz", "train")
    assert "mnist.npz" in str(info.value)


def test_file_missing_from_manifest_is_rejected(tmp_path: Path) -> None:
    _prepared_folder(tmp_path)
    (tmp_path / prepared.MANIFEST).write_text(json.dumps({"files": {}}))
    with pytest.raises(DataError, match="does not match"):
        prepared.load_split(tmp_path, "mnist.npz", "train")


@pytest.mark.parametrize("missing", ["mnist.npz", prepared.MANIFEST])
def test_missing_prepared_files(tmp_path: Path, missing: str) -> None:
    _prepared_folder(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(DataError, match="run `hvae prepare` first") as info:
        prepared.load_split(tmp_path, "mnist.npz", "train")
    assert missing in str(info.value)


def test_missing_manifest_read(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        prepared.read_manifest(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "flip-byte"])
def test_corrupt_npz_is_a_data_error(tmp_path: Path, damage: str) -> None:
    _prepared_folder(tmp_path)
    path = tmp_path / "mnist.npz"
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        raw[200] ^= 0xFF  # inside the first member's data: CRC check fails
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"mnist\.npz"):
        prepared.load_split(tmp_path, "mnist.npz", "train")
