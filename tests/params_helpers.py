"""The repo's params.yaml as the base of every test's params.

Every key is required (params.yaml is the one place defaults live), so a test states only the
keys it cares about and takes the rest from the real file instead of writing a partial one.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hvae.config import Params, load_raw, parse_params

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
DELETE = object()  # as an override value: remove the key


def repo_raw() -> dict[str, Any]:
    """The repo's params.yaml as plain data (a fresh copy on every call)."""
    return copy.deepcopy(_REPO_RAW)


def leaf_keys(raw: Mapping[str, Any] | None = None, prefix: str = "") -> list[str]:
    """Dotted names of every leaf ('seed', 'train.epochs', ...); a list is a leaf."""
    keys: list[str] = []
    for key, value in (repo_raw() if raw is None else raw).items():
        name = f"{prefix}{key}"
        keys += leaf_keys(value, f"{name}.") if isinstance(value, Mapping) else [name]
    return keys


def with_values(overrides: Mapping[str, Any], raw: dict[str, Any] | None = None) -> dict:
    """`raw` (default: the repo's params) with dotted keys set, or removed by DELETE."""
    raw = repo_raw() if raw is None else copy.deepcopy(raw)
    for dotted, value in overrides.items():
        *parents, last = dotted.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return raw


def params_with(**sections: Mapping[str, Any]) -> Params:
    """Validated repo params with some keys of some sections replaced:
    `params_with(train={"epochs": 2}, model={"hidden_dim": 16})`."""
    overrides = {f"{s}.{k}": v for s, values in sections.items() for k, v in values.items()}
    return parse_params(with_values(overrides))


_TOP = re.compile(r"^([^\s#][^:]*):(.*)$")
_NESTED = re.compile(r"^  ([^\s#][^:]*):(.*)$")


def params_text(overrides: Mapping[str, str | None]) -> str:
    """The repo's params.yaml text with some values rewritten as YAML source (so a test can
    write `1e-3`, `"10"` or `.nan` exactly as a user would). Keys are dotted ('train.epochs')
    or top-level ('seed', or a whole section: 'train' -> '5'); None deletes the key (or
    section); a key that is not in the file is added (to its section, made if need be)."""
    lines = REPO_PARAMS.read_text().splitlines()
    for dotted, value in overrides.items():
        lines = _edit(lines, dotted, value)
    return "\n".join(lines) + "\n"


def _block(lines: list[str], section: str) -> tuple[int, int] | None:
    """[start, end) of a top-level key's line and the indented lines under it."""
    for i, line in enumerate(lines):
        match = _TOP.match(line)
        if match and match[1].strip() == section:
            end = i + 1
            while end < len(lines) and (lines[end].startswith(" ") or not lines[end].strip()):
                end += 1
            return i, end
    return None


def _edit(lines: list[str], dotted: str, value: str | None) -> list[str]:
    section, _, key = dotted.partition(".")
    block = _block(lines, section)
    if not key:
        new = [] if value is None else [f"{section}: {value}"]
        if block is None:
            return lines + new
        return lines[: block[0]] + new + lines[block[1] :]
    if block is None:
        return lines if value is None else [*lines, f"{section}:", f"  {key}: {value}"]
    start, end = block
    for i in range(start + 1, end):
        match = _NESTED.match(lines[i])
        if match and match[1].strip() == key:
            new = [] if value is None else [f"  {key}: {value}"]
            return lines[:i] + new + lines[i + 1 :]
    return (
        lines if value is None else [*lines[: start + 1], f"  {key}: {value}", *lines[start + 1 :]]
    )


_REPO_RAW: dict[str, Any] = load_raw(REPO_PARAMS)
