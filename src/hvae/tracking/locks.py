"""An advisory file lock, so commands that read, decide and write run one at a time."""

from __future__ import annotations

import fcntl
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hvae.errors import HVAEError

REGISTRY_LOCK = ".hvae-registry.lock"


@contextmanager
def exclusive(path: Path, holder: str, timeout: float = 300.0) -> Iterator[None]:
    """Hold an exclusive flock on `path`, waiting up to `timeout` seconds for it.

    The kernel drops a flock when its process dies, so a killed command never leaves a
    stale lock behind (unlike a lock *file* that must be deleted).
    """
    with open(path, "a+") as handle:
        deadline = time.monotonic() + timeout
        waiting = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting:
                    print(f"{holder}: waiting for {path} (another one is running)", file=sys.stderr)
                    waiting = True
                if time.monotonic() > deadline:
                    raise HVAEError(
                        f"{path}: still held by another process after {timeout:.0f} s"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
