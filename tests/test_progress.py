"""hvae.progress: a line per tenth in a log, a redrawn bar in a terminal."""

from __future__ import annotations

import io

from hvae.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_one_line_per_tenth_and_no_more() -> None:
    out = io.StringIO()
    progress = Progress("evaluate: test NLL", 1000, stream=out)
    for _ in range(100):
        progress.advance(10)
    lines = out.getvalue().splitlines()
    assert len(lines) == 10
    assert lines[0].startswith("evaluate: test NLL: 100/1,000 (10 %), ")
    assert lines[-1].startswith("evaluate: test NLL: 1,000/1,000 (100 %), ")
    assert all("s left" in line for line in lines)


def test_large_steps_skip_tenths_without_repeating_lines() -> None:
    out = io.StringIO()
    progress = Progress("x", 10, stream=out)
    progress.advance(7)
    progress.advance(7)  # clamped at the total
    assert [line.split(": ")[1].split(" (")[0] for line in out.getvalue().splitlines()] == [
        "7/10",
        "10/10",
    ]


def test_finish_completes_an_upper_bound() -> None:
    out = io.StringIO()
    progress = Progress("probe", 100, stream=out)
    progress.advance(55)
    progress.finish()
    progress.finish()  # once only
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "100/100 (100 %)" in lines[-1]


def test_a_terminal_gets_a_bar_redrawn_in_place() -> None:
    out = _Terminal()
    progress = Progress("train", 4, stream=out)
    for _ in range(4):
        progress.advance(1)
    text = out.getvalue()
    assert text.count("\r") == 4 and text.endswith("\n") and text.count("\n") == 1
    assert "[" + "=" * 30 + "]" in text
