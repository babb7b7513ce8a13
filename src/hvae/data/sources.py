"""Where the four IDX files of a dataset come from, and proof that they are the real ones.

Order: `$HVAE_DATA_DIR/<dataset>/`, then `data/raw/<dataset>/`, then the public mirrors
(downloaded into `data/raw/<dataset>/`). Every file is checked against the MD5 of its
*uncompressed* bytes, so a re-gzipped copy is as good as the original.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import stat
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hvae.data.idx import read_bytes
from hvae.errors import DataError

DATA_DIR_ENV = "HVAE_DATA_DIR"
SPLITS = ("train", "t10k")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    md5: dict[str, str]  # file stem -> MD5 of the uncompressed file
    mirrors: tuple[str, ...]


MNIST = DatasetSpec(
    name="mnist",
    md5={
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    # The mirrors torchvision uses.
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
)

FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    md5={
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
    # Keras' copy, then Zalando's own.
    mirrors=(
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ),
)

DATASETS = {spec.name: spec for spec in (MNIST, FASHION_MNIST)}


def _find(folder: Path, stem: str, spec: DatasetSpec) -> Path | None:
    """The file to read for `stem` in `folder` (gzip first), None when neither name is there.

    Something under either name that is not a non-empty regular file (a directory, a
    symlink to /dev/null or to nothing, a device) is not "missing": it is an error naming it.
    """
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if not os.path.lexists(candidate):
            continue
        problem = _not_a_data_file(candidate)
        if problem:
            raise DataError(
                f"{candidate}: {problem}; expected the {spec.name} IDX file {stem} (gzip or "
                f"plain, MD5 {spec.md5[stem]} uncompressed): replace or remove it"
            )
        return candidate
    return None


def _not_a_data_file(path: Path) -> str | None:
    """Why `path` cannot be a data file, or None if it may be one."""
    link = os.readlink(path) if path.is_symlink() else None
    via = f" (a symlink to {link})" if link is not None else ""
    try:
        info = path.stat()
    except FileNotFoundError:
        return f"broken symlink -> {link}" if link is not None else "vanished while read"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"symlink loop -> {link}"
        return f"cannot read{via} ({exc.strerror})"
    if stat.S_ISDIR(info.st_mode):
        return f"a directory{via}, not a file"
    if path.resolve() == Path(os.devnull).resolve():
        return f"empty file{via}"
    if not stat.S_ISREG(info.st_mode):
        kind = {stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}.get(
            stat.S_IFMT(info.st_mode), "a pipe or socket"
        )
        return f"not a regular file{via}: {kind}"
    if info.st_size == 0:
        return f"empty file{via}"
    return None


def _download(urls: Sequence[str], dest: Path, expected_md5: str, timeout: float) -> bytes:
    """Fetch the first URL that answers with the right content into `dest`, atomically.

    A download that fails the MD5 check is never kept, so it cannot poison later runs.
    """
    failures = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                payload = response.read()
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            failures.append(f"{url}: {getattr(exc, 'reason', exc)}")
            continue
        try:
            data = gzip.decompress(payload) if payload[:2] == b"\x1f\x8b" else payload
        except (OSError, EOFError, zlib.error) as exc:
            failures.append(f"{url}: corrupt gzip ({exc})")
            continue
        if md5_hex(data) != expected_md5:
            failures.append(f"{url}: MD5 {md5_hex(data)}, expected {expected_md5}")
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as tmp:
            tmp.write(payload)
        os.replace(tmp.name, dest)
        return data
    raise DataError(f"{dest.name}: could not download ({'; '.join(failures)})")


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def obtain(
    spec: DatasetSpec,
    stems: Sequence[str],
    raw_dir: Path,
    mirrors: Sequence[str] | None = None,
    timeout: float = 30.0,
) -> dict[str, bytes]:
    """The verified, uncompressed bytes of each requested file of `spec`."""
    env_dir = os.environ.get(DATA_DIR_ENV)
    local_dirs = []
    if env_dir:
        base = Path(env_dir).expanduser()
        if not base.is_dir():
            raise DataError(f"{DATA_DIR_ENV}={env_dir}: not a directory")
        local_dirs.append(base / spec.name)
    local_dirs.append(raw_dir / spec.name)
    mirrors = spec.mirrors if mirrors is None else mirrors

    out = {}
    for stem in stems:
        path = next((p for d in local_dirs if (p := _find(d, stem, spec)) is not None), None)
        if path is None:
            if not mirrors:
                searched = ", ".join(str(d) for d in local_dirs)
                raise DataError(f"{stem}: not found in {searched} and no mirror configured")
            path = raw_dir / spec.name / f"{stem}.gz"
            urls = [m + f"{stem}.gz" for m in mirrors]
            out[stem] = _download(urls, path, spec.md5[stem], timeout)
            continue
        data = read_bytes(path)
        digest = md5_hex(data)
        if digest != spec.md5[stem]:
            raise DataError(
                f"{path}: MD5 of the uncompressed file is {digest}, expected {spec.md5[stem]}"
            )
        out[stem] = data
    return out
