"""`hvae prepare` on broken data: exit 1, one line naming the file, nothing written.

The stage runs in-process on tiny generated IDX files. The dataset specs are swapped for
ones whose MD5s match the files as placed (defects included), so each defect reaches the
check meant for it instead of stopping at the MD5; the MD5 case restores the true digest.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from hvae.cli import main
from hvae.data import sources
from hvae.data.idx import write_idx
from hvae.data.sources import DatasetSpec, md5_hex
from hvae.errors import DataError
from params_helpers import params_text

STEMS = {
    "train-images-idx3-ubyte": lambda rng: write_idx(rng.integers(0, 256, (30, 28, 28), "u1")),
    "train-labels-idx1-ubyte": lambda rng: write_idx(rng.integers(0, 10, 30, "u1")),
    "t10k-images-idx3-ubyte": lambda rng: write_idx(rng.integers(0, 256, (10, 28, 28), "u1")),
    "t10k-labels-idx1-ubyte": lambda rng: write_idx(rng.integers(0, 10, 10, "u1")),
}
PARAMS_KEYS = {
    "prepare.validation_size": "10",
    "prepare.ood_validation_size": "10",
    "calibrate.validation_images": "10",
    "train.batch_size": "10",
    "train.probe_images": "10",
}
PARAMS = params_text(PARAMS_KEYS)


def _place(datasets: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("mnist", "fashion-mnist"):
        (datasets / name).mkdir(parents=True)
        for stem, make in STEMS.items():
            (datasets / name / f"{stem}.gz").write_bytes(gzip.compress(make(rng)))


def _trust_files_as_they_are(datasets: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    specs = {}
    for name in ("mnist", "fashion-mnist"):
        md5 = {}
        for stem in STEMS:
            path = datasets / name / f"{stem}.gz"
            try:
                md5[stem] = md5_hex(sources.read_bytes(path))
            except DataError:  # missing or not gunzip-able: the stage must say so itself
                md5[stem] = "0" * 32
        specs[name] = DatasetSpec(name=name, md5=md5, mirrors=())
    monkeypatch.setattr(sources, "DATASETS", specs)


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(PARAMS)
    datasets = tmp_path / "datasets"
    _place(datasets)
    monkeypatch.setenv(sources.DATA_DIR_ENV, str(datasets))
    return tmp_path


def _gz(path: Path, payload: bytes) -> None:
    path.write_bytes(gzip.compress(payload))


def _raw(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes())


MNIST = Path("datasets/mnist")
TRAIN_IMAGES = MNIST / "train-images-idx3-ubyte.gz"
TRAIN_LABELS = MNIST / "train-labels-idx1-ubyte.gz"

CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing file": (
        lambda root: (root / TRAIN_LABELS).unlink(),
        r"train-labels-idx1-ubyte: not found in .*datasets/mnist",
    ),
    "truncated gzip": (
        lambda root: (root / TRAIN_IMAGES).write_bytes((root / TRAIN_IMAGES).read_bytes()[:500]),
        r"train-images-idx3-ubyte\.gz: corrupt or truncated gzip",
    ),
    "not gzip at all": (
        lambda root: (root / TRAIN_IMAGES).write_bytes(b"\x1f\x8bnot really gzip"),
        r"train-images-idx3-ubyte\.gz: corrupt or truncated gzip",
    ),
    "wrong magic": (
        lambda root: _gz(root / TRAIN_IMAGES, b"\x00\x00\x08\x01" + _raw(root / TRAIN_IMAGES)[4:]),
        r"mnist/train-images-idx3-ubyte: wrong IDX magic number 0x00000801, expected 0x00000803",
    ),
    "wrong image size": (
        lambda root: _gz(root / TRAIN_IMAGES, write_idx(np.zeros((30, 32, 32), "u1"))),
        r"mnist/train-images-idx3-ubyte: images are 32x32, expected 28x28",
    ),
    "count mismatch": (
        lambda root: _gz(root / TRAIN_LABELS, write_idx(np.zeros(29, "u1"))),
        r"mnist/train-images-idx3-ubyte: 30 images but train-labels-idx1-ubyte has 29 labels",
    ),
    "empty file": (
        lambda root: _gz(root / TRAIN_LABELS, b""),
        r"mnist/train-labels-idx1-ubyte: empty or truncated IDX file \(0 bytes\)",
    ),
    "data shorter than header says": (
        lambda root: _gz(root / TRAIN_IMAGES, _raw(root / TRAIN_IMAGES)[:-100]),
        r"mnist/train-images-idx3-ubyte: IDX header promises 23520 bytes",
    ),
    "Fashion-MNIST missing": (
        lambda root: [p.unlink() for p in (root / "datasets/fashion-mnist").iterdir()],
        r"t10k-images-idx3-ubyte: not found in .*datasets/fashion-mnist",
    ),
}


def _prepare(capsys) -> tuple[int, str]:
    code = main(["prepare"])
    return code, capsys.readouterr().err


def test_good_files_prepare(project: Path, monkeypatch, capsys) -> None:
    _trust_files_as_they_are(project / "datasets", monkeypatch)
    assert _prepare(capsys)[0] == 0
    assert (project / "data/prepared/manifest.json").exists()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("before", ["fresh", "over a good run"])
def test_bad_data_fails_cleanly(project: Path, monkeypatch, capsys, case: str, before: str):
    damage, message = CASES[case]
    prepared = project / "data" / "prepared"
    snapshot = {}
    if before == "over a good run":
        _trust_files_as_they_are(project / "datasets", monkeypatch)
        assert _prepare(capsys)[0] == 0
        snapshot = {p.name: p.read_bytes() for p in prepared.iterdir()}
    damage(project)
    _trust_files_as_they_are(project / "datasets", monkeypatch)

    code, err = _prepare(capsys)

    assert code == 1
    assert err.count("\n") == 1 and err.startswith("hvae prepare: error: ")
    assert re.search(message, err), err
    if snapshot:
        assert {p.name: p.read_bytes() for p in prepared.iterdir()} == snapshot
    else:
        assert not prepared.exists()
    assert not any(p.name.startswith(".") for p in (project / "data").glob("**/*"))


def test_more_ood_validation_images_than_the_other_dataset_has(project, monkeypatch, capsys):
    overrides = {"prepare.ood_validation_size": "31"}
    (project / "params.yaml").write_text(params_text({**PARAMS_KEYS, **overrides}))
    _trust_files_as_they_are(project / "datasets", monkeypatch)
    code, err = _prepare(capsys)
    assert code == 1 and err.count("\n") == 1
    assert err.strip() == (
        "hvae prepare: error: prepare.ood_validation_size: 31 is more than the 30 images of "
        "fashion-mnist/train-images-idx3-ubyte"
    )
    assert not (project / "data" / "prepared").exists()


def test_md5_mismatch_against_the_real_digests(project: Path, monkeypatch, capsys) -> None:
    # The generated files are not MNIST, so the true MNIST digests must reject them.
    monkeypatch.setattr(sources, "DATASETS", {**sources.DATASETS})
    code, err = _prepare(capsys)
    assert code == 1 and err.count("\n") == 1
    assert "train-images-idx3-ubyte.gz: MD5 of the uncompressed file is" in err
    assert sources.MNIST.md5["train-images-idx3-ubyte"] in err
    assert not (project / "data" / "prepared").exists()


def test_missing_data_folder(project: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv(sources.DATA_DIR_ENV, str(project / "nowhere"))
    code, err = _prepare(capsys)
    assert code == 1
    assert err == f"hvae prepare: error: HVAE_DATA_DIR={project / 'nowhere'}: not a directory\n"
    assert not (project / "data" / "prepared").exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train:\n  epochs: 0\n", "params.yaml: train.epochs: "),
        (
            "train:\n  epoch: 3\n",
            "params.yaml: unknown key 'train.epoch'; did you mean 'train.epochs'?",
        ),
        ("train: [1\n", "params.yaml: not valid YAML"),
        ("evaluate:\n  iw_samples: 0\n", "params.yaml: evaluate.iw_samples: "),
    ],
)
@pytest.mark.parametrize("command", ["prepare", "train", "evaluate", "promote"])
def test_bad_params_stop_every_command_first(
    tmp_path: Path, monkeypatch, capsys, command: str, text: str, expected: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(text)
    code = main([command])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"hvae {command}: error: {expected}"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing written
