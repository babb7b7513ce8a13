"""Ctrl-C and SIGTERM that library code cannot lose.

Python raises KeyboardInterrupt wherever the main thread is when it handles the signal. Two
places in a training step drop it: TensorFlow's `AtomicFunction.__del__` (printed as "Exception
ignored in", then gone) and the bare `except:` around the tensor-to-float conversion in Keras'
`pythonify_logs`, which is where the main thread waits for each compiled call. Training then
ran to the end and exited 0 as though never interrupted. So the handler also records the
signal, and `raise_if_received` (after every batch, every progress step, and before a command
reports success) raises it again.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that `with` blocks (an MLflow run) unwind."""


_received: list[int] = []


def _exception(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _handle(signum: int, frame: FrameType | None) -> None:
    if signum == signal.SIGTERM:
        # Once: a second SIGTERM must not break off the clean-up the first one started.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _received.append(signum)
    raise _exception(signum)


def raise_if_received() -> None:
    """Raise the first signal received (again), if any: a no-op until one arrives."""
    if _received:
        raise _exception(_received[0])


@contextmanager
def recorded() -> Iterator[None]:
    """SIGINT and SIGTERM raise as usual and are also recorded, for the block's duration.

    A signal our parent ignores stays ignored (a shell's background job ignores SIGINT), and
    off the main thread (an embedding application) nothing is installed."""
    _received.clear()
    previous: dict[int, object] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is signal.SIG_IGN:
            continue
        with suppress(ValueError):
            previous[signum] = signal.signal(signum, _handle)
    try:
        yield
    finally:
        _received.clear()  # outside the block nothing is raised again
        for signum, handler in previous.items():
            signal.signal(signum, handler)
