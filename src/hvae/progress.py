"""Progress of a long step of work: a bar in a terminal, a line per tenth of the work in a
log or CI (where a redrawn bar is noise and silence looks like a hang).

The maths takes a plain `Callable[[int], None]` ("n more items done"), so it knows nothing of
terminals; stages build a `Progress` and pass its `advance`.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from hvae import interrupts


class Progress:
    """`label`: what is being done; `total`: items (images, image-layers) in all, or an upper
    bound on them (then call `finish`)."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None, steps: int = 10):
        self.label, self.total = label, max(int(total), 1)
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.steps = steps
        self.done = 0
        self._shown = 0  # tenths reported so far (log mode)
        self._started = time.perf_counter()

    def advance(self, n: int) -> None:
        interrupts.raise_if_received()  # one the scoring loop's library calls swallowed
        self.done = min(self.done + int(n), self.total)
        if self.tty:
            self._bar()
        elif (tenth := self.done * self.steps // self.total) > self._shown:
            self._shown = tenth
            self.stream.write(self._line() + "\n")
            self.stream.flush()

    def finish(self) -> None:
        """All done, when `total` was an upper bound (the last line says 100 %)."""
        if self.done < self.total:
            self.advance(self.total - self.done)

    def _line(self) -> str:
        elapsed = time.perf_counter() - self._started
        left = elapsed * (self.total - self.done) / self.done if self.done else 0.0
        share = 100 * self.done / self.total
        return (
            f"{self.label}: {self.done:,}/{self.total:,} ({share:.0f} %), "
            f"{elapsed:.0f} s, ~{left:.0f} s left"
        )

    def _bar(self) -> None:
        width = 30
        filled = width * self.done // self.total
        end = "\n" if self.done == self.total else ""
        self.stream.write(f"\r[{'=' * filled}{'.' * (width - filled)}] {self._line()}{end}")
        self.stream.flush()
