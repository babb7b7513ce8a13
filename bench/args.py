"""Bounded numbers on the benchmarks' command lines.

Plain `int` flags let `python -m bench.speed --rounds 0` print NaN medians and let a negative
or huge count through; as argparse types these bounds stop it at parse time with one line
naming the flag, the value and the range, and exit 2 before any model is built.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def count(low: int, high: int) -> Callable[[str], int]:
    """An integer in [low, high]."""
    return _bounded(int, "an integer", low, high)


def seconds(low: float, high: float) -> Callable[[str], float]:
    """A finite number of seconds in [low, high]."""
    return _bounded(float, "a number", low, high)


def _bounded(kind: type, noun: str, low: float, high: float) -> Callable[[str], float]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {noun}, expected {low} … {high}"
            ) from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"{text} is out of range, expected {low} … {high}")
        return value

    return parse
