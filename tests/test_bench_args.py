"""The benchmarks' command lines: out-of-range numbers stop at parse time with one clear line."""

from __future__ import annotations

import argparse
import importlib

import pytest
from bench.args import count, seconds

BENCHES = [
    "determinism",
    "evaluate_time",
    "interrupts",
    "ood_scores",
    "predict_memory",
    "semisup_methods",
    "serve_load",
    "speed",
    "workers",
]


def numeric_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and callable(a.type)]


@pytest.mark.parametrize("text, value", [("1", 1), ("7", 7), ("10", 10)])
def test_count_accepts_its_range(text: str, value: int) -> None:
    assert count(1, 10)(text) == value


@pytest.mark.parametrize(
    "text, message",
    [
        ("0", "0 is out of range, expected 1 … 10"),
        ("11", "11 is out of range, expected 1 … 10"),
        ("-3", "-3 is out of range, expected 1 … 10"),
        ("1.5", "'1.5' is not an integer, expected 1 … 10"),
        ("ten", "'ten' is not an integer, expected 1 … 10"),
        ("", "'' is not an integer, expected 1 … 10"),
    ],
)
def test_count_rejects(text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as raised:
        count(1, 10)(text)
    assert str(raised.value) == message


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "0.5", "3601", "1e9", "soon"])
def test_seconds_rejects_non_finite_and_out_of_range(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="expected 1 … 3600"):
        seconds(1, 3600)(text)


def test_seconds_accepts_fractions() -> None:
    assert seconds(1, 3600)("2.5") == 2.5


@pytest.mark.parametrize("name", BENCHES)
def test_every_numeric_flag_is_bounded_and_its_default_inside(name: str) -> None:
    parser = importlib.import_module(f"bench.{name}").build_parser()
    actions = numeric_actions(parser)
    assert actions, f"bench.{name} has no numeric flag"
    for action in actions:
        # A bare int/float type would let 0, -1 or 10**12 through.
        assert action.type not in (int, float), f"bench.{name} {action.option_strings}"
        if action.default is None:
            continue
        defaults = action.default if isinstance(action.default, list) else [action.default]
        for default in defaults:
            parsed = vars(parser.parse_args([action.option_strings[0], str(default)]))
            got = parsed[action.dest]
            assert (got if not isinstance(got, list) else got[0]) == default


@pytest.mark.parametrize("name", BENCHES)
def test_zero_or_negative_stops_with_one_line(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = importlib.import_module(f"bench.{name}").build_parser()
    for action in numeric_actions(parser):
        flag = action.option_strings[0]
        with pytest.raises(SystemExit) as stopped:
            parser.parse_args([flag, "-1"])
        assert stopped.value.code == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"argument {flag}: -1 is out of range, expected" in error
