"""Ctrl-C and SIGTERM in the CLI.

Both are raised as KeyboardInterrupt (SIGTERM as `Terminated`), so that `with` blocks (an
MLflow run) unwind, and both are remembered: an interrupt that something on the way swallows
still stops the stage at its next `raise_if_received()`. (In one CI run a train sent SIGINT in
its second epoch finished with exit 0; where inside TensorFlow or Keras the interrupt was lost
is not pinned down.)
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable

_received: list[int] = []


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C."""


def _interrupt(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _handler(signum: int, frame: object) -> None:
    _received.append(signum)
    if signum == signal.SIGTERM:
        # Once: a second SIGTERM must not break off the clean-up the first one started.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _interrupt(signum)


def install() -> dict[int, Callable | int | None]:
    """Handle SIGINT and SIGTERM here; returns the handlers to put back (`restore`).

    A signal the parent ignores stays ignored, and nothing changes outside the main thread
    (an embedding application)."""
    _received.clear()
    previous: dict[int, Callable | int | None] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is signal.SIG_IGN:
            continue
        with contextlib.suppress(ValueError):
            previous[signum] = signal.signal(signum, _handler)
    return previous


def restore(previous: dict[int, Callable | int | None]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def raise_if_received() -> None:
    """Raise the first interrupt received, if one has been (swallowed or not)."""
    if _received:
        raise _interrupt(_received[0])
