"""The params reference, generated from src/hvae/config.py and params.yaml.

`docs/hooks.py` calls `render()` while MkDocs builds docs/params.md, so the reference cannot
drift from the code: every key, type and allowed range comes from the pydantic models in
`hvae.config`, every value from the repo's params.yaml (read with `hvae.config.load_raw` and
validated with `hvae.config.parse_params`, as the stages read it), every comment from the
`# ...` on that key's line of params.yaml, and the stages that read a key from dvc.yaml.
Anything it cannot account for (an invalid params.yaml, a field type or constraint it does not
know how to show, a cross-key rule in config.py without a sentence below) raises, and the
build fails.

Run it alone to print the Markdown: `.venv/bin/python docs/gen_params.py`.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import BaseModel

# The rules config.py checks across keys (its model validators), one sentence each. A validator
# added to or removed from config.py without updating this table fails the build.
CROSS_KEY_RULES: dict[tuple[str, str], str] = {
    ("ModelParams", "_positive_dims"): (
        "every entry of `model.latent_dims` is a layer size from 1 to {MAX_LATENT_DIM}."
    ),
    ("TrainParams", "_skip_above_clip"): (
        "`train.skip_grad_norm` > `train.grad_clip_norm`: updates between the two are "
        "clipped, above it they are skipped."
    ),
    ("TrainParams", "_rows_per_step"): (
        "`train.batch_size * train.iw_samples` ≤ {MAX_ROWS_PER_PASS} rows per training step."
    ),
    ("EvaluateParams", "_budgets"): (
        "`evaluate.batch_size * evaluate.chunk_size` ≤ {MAX_ROWS_PER_PASS} rows per pass, "
        "and every entry of `evaluate.probe_labels` is a positive multiple of the 10 classes."
    ),
    ("SemisupParams", "_budgets"): (
        "every entry of `semisup.labels` is a positive multiple of the 10 classes and < "
        "`semisup.graph_images`; `semisup.serve_labels` is one of them; `semisup.neighbours` "
        "< `semisup.graph_images`."
    ),
    ("MlflowParams", "_known_placeholders"): (
        "the only placeholder in `mlflow.experiment` and `mlflow.registered_model` is "
        "`{{dataset}}`, replaced by `data.dataset`."
    ),
    ("Params", "_split_fits"): (
        "`train.batch_size`, and every entry of `evaluate.probe_labels`, ≤ the training images "
        "left after `prepare.validation_size` (`{MNIST_TRAIN_SIZE} - prepare.validation_size`); "
        "every entry of `semisup.labels` < those training images; "
        "`train.probe_images` ≤ `prepare.validation_size`; `calibrate.score` is `auto`, "
        "`likelihood`, `typicality` or `llr_k<j>` with 1 ≤ j < the number of layers; "
        "`calibrate.validation_images` ≤ both `prepare.validation_size` and "
        "`prepare.ood_validation_size`."
    ),
}

TOP_LEVEL = "(top level)"
HEADER = "| key | type | allowed | value in params.yaml | read by | comment in params.yaml |"


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _text(comment: str) -> str:
    """A params.yaml comment as Markdown text: literal outside its `code` spans."""
    parts = comment.split("`")
    for i in range(0, len(parts), 2):  # the even parts lie outside backticks
        for ch in "\\*_[]":
            parts[i] = parts[i].replace(ch, "\\" + ch)
        parts[i] = parts[i].replace("<", "&lt;")
    return "`".join(parts)


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _yaml_value(value: Any) -> str:
    """A value as params.yaml writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    return str(value)


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _type(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        kinds = {type(a).__name__ for a in get_args(annotation)}
        if len(kinds) != 1:
            raise TypeError(f"a Literal of mixed types: {annotation!r}")
        return kinds.pop()
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        return f"list[{_type(item)}]"
    if annotation in (int, float, bool, str):
        return annotation.__name__
    raise TypeError(f"no way to show the type {annotation!r}")


def _allowed(annotation: Any, metadata: list[Any], description: str | None) -> str:
    """The allowed values, from the field's type and pydantic constraints."""
    low = high = None
    items: list[str] = []
    for c in metadata:
        if isinstance(c, Ge):
            low = f"{_number(c.ge)} ≤ "
        elif isinstance(c, Gt):
            low = f"{_number(c.gt)} < "
        elif isinstance(c, Le):
            high = f" ≤ {_number(c.le)}"
        elif isinstance(c, Lt):
            high = f" < {_number(c.lt)}"
        elif isinstance(c, MinLen):
            items.append(f"at least {c.min_length}")
        elif isinstance(c, MaxLen):
            items.append(f"at most {c.max_length}")
        else:
            raise TypeError(f"no way to show the constraint {c!r}")
    if description:  # the field's own words (config.py writes them for its error messages)
        return description
    if get_origin(annotation) is Literal:
        return ", ".join(f"`{_yaml_value(a)}`" for a in get_args(annotation))
    if annotation is bool:
        return "`true`, `false`"
    if items:
        what = "characters" if annotation is str else "items"
        text = f"{' and '.join(items)} {what}"
        return "non-empty" if text == "at least 1 characters" else text
    if low and high:
        return f"{low}x{high}"
    if low:  # "1 ≤ " -> "≥ 1"
        number, symbol = low.split()
        return f"{'≥' if symbol == '≤' else '>'} {number}"
    if high:
        return high.strip()
    if annotation is float:
        return "any finite number"
    if annotation is int:
        return "any integer"
    if annotation is str:
        return "any string"
    return "any"


def _comment(line: str) -> str:
    """The `# ...` comment of one YAML line, if any (a # inside quotes is not one)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[i + 1 :].strip()
    return ""


def _key_lines(text: str) -> dict[str, int]:
    """Dotted key -> the 0-based line of that key in params.yaml."""
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                dotted = f"{prefix}.{key.value}" if prefix else str(key.value)
                lines[dotted] = key.start_mark.line
                walk(value, dotted)

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        walk(root, "")
    return lines


def _readers(root: Path) -> dict[str, list[str]]:
    """Stage -> the params it declares in dvc.yaml (section names or dotted keys)."""
    dvc = yaml.safe_load((root / "dvc.yaml").read_text())
    out: dict[str, list[str]] = {}
    for stage, spec in dvc["stages"].items():
        names: list[str] = []
        for entry in spec.get("params", []):
            # A params entry is a name, or {file: [names]} for another params file.
            if isinstance(entry, str):
                names.append(entry)
            elif isinstance(entry, dict) and "params.yaml" in entry:
                names.extend(entry["params.yaml"] or [])
        out[stage] = names
    return out


def _read_by(key: str, readers: dict[str, list[str]]) -> str:
    stages = [
        stage
        for stage, names in readers.items()
        if any(key == n or key.startswith(n + ".") for n in names)
    ]
    return ", ".join(stages) if stages else "no stage"


def _rules(config: types.ModuleType, sections: list[type[BaseModel]]) -> list[str]:
    found = {
        (model.__name__, name)
        for model in sections
        for name in model.__pydantic_decorators__.model_validators
    }
    undocumented = sorted(found - CROSS_KEY_RULES.keys())
    stale = sorted(CROSS_KEY_RULES.keys() - found)
    if undocumented or stale:
        raise RuntimeError(
            "docs/gen_params.py: CROSS_KEY_RULES does not match config.py's validators "
            f"(undocumented: {undocumented}; no longer in config.py: {stale})"
        )
    consts = {name: getattr(config, name) for name in dir(config) if name.isupper()}
    order = [model.__name__ for model in sections]
    return [
        CROSS_KEY_RULES[key].format(**consts)
        for key in sorted(found, key=lambda k: (order.index(k[0]), k[1]))
    ]


def render(root: Path | str = ".") -> str:
    """The params reference as Markdown, for the repo at `root`."""
    import hvae.config as config

    root = Path(root)
    path = root / "params.yaml"
    raw = config.load_raw(path)
    config.parse_params(raw, str(path))  # the same check every stage makes; raises ConfigError
    source = path.read_text().splitlines()
    key_lines = _key_lines("\n".join(source))
    readers = _readers(root)

    def comment(key: str) -> str:
        return _text(_comment(source[key_lines[key]])) if key in key_lines else ""

    params = config.Params
    top = [n for n, f in params.model_fields.items() if not _is_section(f.annotation)]
    sections: list[tuple[str, type[BaseModel], dict[str, Any]]] = [(TOP_LEVEL, params, raw)]
    for name, field in params.model_fields.items():
        if name not in top:
            sections.append((name, field.annotation, raw[name]))

    out: list[str] = ['<div class="hvae-params" markdown>', ""]
    for name, model, values in sections:
        fields = [
            (key, field)
            for key, field in model.model_fields.items()
            if model is not params or key in top
        ]
        out.append(f"### `{name}`" if name != TOP_LEVEL else "### Top level")
        out.append("")
        if name != TOP_LEVEL and comment(name):
            out.append(f"params.yaml: *{comment(name)}*")
            out.append("")
        out.append(HEADER)
        out.append("|---|---|---|---|---|---|")
        for key, field in fields:
            dotted = key if name == TOP_LEVEL else f"{name}.{key}"
            row = [
                f"`{dotted}`",
                _type(field.annotation),
                _allowed(field.annotation, field.metadata, field.description),
                f"`{_yaml_value(values[key])}`",
                _read_by(dotted, readers),
                comment(dotted),
            ]
            out.append("| " + " | ".join(_cell(c) for c in row) + " |")
        out.append("")

    out.append("### Rules across keys")
    out.append("")
    out.append("Checked by `src/hvae/config.py` after every key is valid on its own:")
    out.append("")
    all_models = [model for _, model, _ in sections[1:]] + [params]
    out.extend(f"- {rule}" for rule in _rules(config, all_models))
    out.append("")
    out.append("</div>")
    out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(render(sys.argv[1] if len(sys.argv) > 1 else "."))
