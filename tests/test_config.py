"""params.yaml validation: every key required, YAML 1.2 floats, no duplicate keys, no NaN, and
one-line errors naming the key and the offending value.

Every file here is the repo's params.yaml with a few values rewritten (tests/params_helpers.py):
no field has a default, so a partial file is itself an error.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from hvae.config import Params, flatten, load_params, parse_params
from hvae.errors import ConfigError
from params_helpers import (
    DELETE,
    REPO_PARAMS,
    leaf_keys,
    params_text,
    params_with,
    repo_raw,
    with_values,
)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def _error(tmp_path: Path, text: str) -> str:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_params(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message.removeprefix(f"{path}: ")


def _edited(tmp_path: Path, **overrides: str | None) -> Params:
    """load_params of the repo's file with `section__key="yaml"` values rewritten."""
    return load_params(_write(tmp_path, params_text(_dotted(overrides))))


def _dotted(overrides: dict[str, str | None]) -> dict[str, str | None]:
    return {k.replace("__", "."): v for k, v in overrides.items()}


def _fields(model: type[BaseModel] = Params, prefix: str = "") -> list[str]:
    names: list[str] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names += _fields(annotation, f"{prefix}{name}.")
        else:
            names.append(f"{prefix}{name}")
    return names


# -- what loads ---------------------------------------------------------------------------------


def test_repo_params_load_and_every_key_is_used() -> None:
    params = load_params(REPO_PARAMS)
    assert isinstance(params, Params)
    assert isinstance(params.train.learning_rate, float)
    loaded = flatten(params)
    # The file sets exactly the keys the code reads, and every value written is the value seen.
    assert list(loaded) == _fields() == leaf_keys()
    raw = repo_raw()
    for name, value in loaded.items():
        section, _, key = name.partition(".")
        assert value == (raw[section][key] if key else raw[section]), name


def test_no_key_has_a_code_default() -> None:
    # "Constructor defaults must not stand in for missing params": params.yaml is the one
    # place defaults live.
    def walk(model: type[BaseModel], prefix: str = "") -> None:
        for name, field in model.model_fields.items():
            assert field.is_required(), f"{prefix}{name} has a default in config.py"
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, f"{prefix}{name}.")

    walk(Params)
    with pytest.raises(Exception, match="missing"):
        Params()  # type: ignore[call-arg]


@pytest.mark.parametrize("text", ["1e-3", "1.0e-3", "1E-3", "+1e-3", "0.001", ".001"])
def test_scientific_notation_is_a_float(tmp_path: Path, text: str) -> None:
    params = _edited(tmp_path, train__learning_rate=text)
    assert type(params.train.learning_rate) is float
    assert params.train.learning_rate == pytest.approx(1e-3)


def test_plain_safe_loader_would_have_read_a_string() -> None:
    # Why the YAML 1.2 resolver matters: PyYAML's 1.1 rules leave `1e-3` a string.
    assert yaml.safe_load("x: 1e-3") == {"x": "1e-3"}


def test_int_is_accepted_for_a_float(tmp_path: Path) -> None:
    params = _edited(tmp_path, train__grad_clip_norm="50")
    assert params.train.grad_clip_norm == 50.0


def test_the_same_key_in_two_sections_is_no_duplicate() -> None:
    # `seed` and `prepare.seed` are different keys.
    raw = repo_raw()
    assert "seed" in raw and "seed" in raw["prepare"]
    assert load_params(REPO_PARAMS).prepare.seed == raw["prepare"]["seed"]


def test_a_yaml_merge_key_may_be_overridden(tmp_path: Path) -> None:
    # `<<: *base` then the same key is YAML's override, not a duplicate.
    text = params_text({"promote": None}) + (
        "promote:\n  <<: &base {alias: champion, metric: test_nll, mode: min, margin: 0.0}\n"
        "  margin: 0.5\n"
    )
    assert load_params(_write(tmp_path, text)).promote.margin == 0.5


def test_flatten_uses_dotted_keys() -> None:
    flat = flatten(params_with(train={"epochs": 3}, model={"latent_dims": [4, 2]}))
    assert flat["train.epochs"] == 3
    assert flat["model.latent_dims"] == [4, 2]
    assert flat["seed"] == repo_raw()["seed"]
    assert all(not isinstance(v, dict) for v in flat.values())
    assert {key.split(".")[0] for key in flat} == set(Params.model_fields)
    assert len(flat) == 1 + sum(
        len(field.annotation.model_fields)
        for name, field in Params.model_fields.items()
        if name != "seed"
    )


def test_params_are_frozen() -> None:
    params = load_params(REPO_PARAMS)
    with pytest.raises(Exception, match="frozen"):
        params.train.epochs = 5  # type: ignore[misc]


# -- the messages, exactly ----------------------------------------------------------------------

SECTIONS = (
    "seed, data, prepare, model, train, evaluate, semisup, calibrate, render, mlflow, promote"
)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"train.learning_rate": ".nan"},
            "train.learning_rate: must be a finite number, not NaN or infinity (got nan)",
        ),
        (
            {"model.latent_dims": "[32, 0, 8]"},
            "model.latent_dims: every layer size must be from 1 to 4096 (got [32, 0, 8])",
        ),
        ({"train": "5"}, "train: expected a mapping of keys (got 5)"),
        ({"train.epochs": None}, "train.epochs: missing (expected an integer from 1 to 100000)"),
        ({"train.epochs": "true"}, "train.epochs: expected an integer from 1 to 100000 (got true)"),
        (
            {"train.epochs": '"10"'},
            "train.epochs: expected an integer from 1 to 100000 (got '10', a string: write the "
            "number without quotes)",
        ),
        ({"train.deterministic": "1"}, "train.deterministic: expected true or false (got 1)"),
        ({"train.free_bits": "-0.1"}, "train.free_bits: must be >= 0.0 (got -0.1)"),
        (
            {"train.iw_samples": "300"},
            "train.batch_size * train.iw_samples: must be <= 250000 rows per step "
            "(got 1024 * 300 = 307200)",
        ),
        ({"train.iw_samples": "0"}, "train.iw_samples: must be >= 1 (got 0)"),
        ({"model.min_sigma": "1"}, "model.min_sigma: must be < 1.0 (got 1)"),
        ({"model.latent_dims": "[16]"}, "model.latent_dims: must have at least 2 items (got [16])"),
        ({"model.latent_dims": "[8, x]"}, "model.latent_dims.1: expected an integer (got 'x')"),
        ({"mlflow.experiment": "''"}, "mlflow.experiment: must not be empty (got '')"),
        ({"seed": "~"}, "seed: expected an integer from 0 to 4294967295 (got null)"),
        (
            {"data.dataset": "cifar10"},
            "data.dataset: expected one of 'mnist', 'fashion-mnist' (got 'cifar10')",
        ),
    ],
)
def test_messages(tmp_path: Path, overrides: dict[str, str | None], expected: str) -> None:
    assert _error(tmp_path, params_text(overrides)) == expected


@pytest.mark.parametrize("text", ["", "\n", "# nothing set\n", "# a\n\n   # b\n", "---\n", "~\n"])
def test_an_empty_file_is_an_error(tmp_path: Path, text: str) -> None:
    # It used to train the constructor defaults without a word.
    expected = f"empty, no key is set (expected a mapping of sections: {SECTIONS})"
    assert _error(tmp_path, text) == expected
    with pytest.raises(ConfigError, match=r"^params\.yaml: empty"):
        parse_params(None)


def test_an_empty_mapping_names_the_first_missing_key(tmp_path: Path) -> None:
    assert _error(tmp_path, "{}\n").startswith(
        "seed: missing (expected an integer from 0 to 4294967295"
    )


DUPLICATES = {
    "seed: 1\nseed: 2\n": "'seed' (lines 1 and 2)",
    "seed: 1\nseed: 2\nseed: 3\n": "'seed' (lines 1 and 2)",
    "data:\n  dataset: mnist\n  dataset: mnist\n": "'data.dataset' (lines 2 and 3)",
    "train:\n  epochs: 3\n  epochs: 7\n": "'train.epochs' (lines 2 and 3)",
    "train:\n  epochs: 3\nseed: 1\ntrain: {}\n": "'train' (lines 1 and 4)",
    "render: {n_images: 1, n_images: 2}\n": "'render.n_images' (twice on line 1)",
    "a:\n  - {b: 1, c: 2, b: 3}\n": "'a.0.b' (twice on line 2)",
}


@pytest.mark.parametrize(("text", "expected"), DUPLICATES.items())
def test_duplicate_keys_are_an_error(tmp_path: Path, text: str, expected: str) -> None:
    # PyYAML keeps the last value silently; DVC refuses such a file.
    assert _error(tmp_path, text) == f"duplicate key {expected}"


def _line_of(lines: list[str], key: str) -> int:
    """1-based line of a top-level key or of `section.key` in params.yaml's text."""
    section, _, leaf = key.partition(".")
    current = None
    for number, line in enumerate(lines, 1):
        if match := re.match(r"^([\w-]+):", line):
            current = match[1]
            if not leaf and current == section:
                return number
        elif leaf and current == section and re.match(rf"^  {leaf}:", line):
            return number
    raise AssertionError(key)


@pytest.mark.parametrize("key", ["seed", "train.epochs", "evaluate.probe_repeats", "train"])
def test_a_duplicate_in_the_full_file_names_both_lines(tmp_path: Path, key: str) -> None:
    lines = REPO_PARAMS.read_text().splitlines()
    first = _line_of(lines, key)
    if "." in key:  # the key's line again, right below it
        lines = [*lines[:first], lines[first - 1], *lines[first:]]
        second = first + 1
    else:  # the key again at the end of the file
        lines = [*lines, f"{key}: {{}}"]
        second = len(lines)
    message = _error(tmp_path, "\n".join(lines) + "\n")
    assert message == f"duplicate key '{key}' (lines {first} and {second})"


@pytest.mark.parametrize("key", leaf_keys())
def test_every_missing_key_is_an_error(tmp_path: Path, key: str) -> None:
    message = _error(tmp_path, params_text({key: None}))
    section, _, leaf = key.rpartition(".")
    if section and len(repo_raw()[section]) == 1:  # the section is left with nothing in it
        assert (
            message == f"{section}: expected a mapping of keys: {leaf} (got null, an empty section)"
        )
    else:
        assert message.startswith(f"{key}: missing (expected "), message
    # The same through parse_params on plain data.
    with pytest.raises(ConfigError, match=rf"^params\.yaml: {re.escape(key)}: missing"):
        parse_params(with_values({key: DELETE}))


@pytest.mark.parametrize("section", [k for k in repo_raw() if isinstance(repo_raw()[k], dict)])
def test_every_missing_section_is_an_error(tmp_path: Path, section: str) -> None:
    message = _error(tmp_path, params_text({section: None}))
    keys = ", ".join(repo_raw()[section])
    assert message == f"{section}: missing section (expected a mapping of keys: {keys})"


# -- what does not ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "unknown", "suggestion"),
    [
        ("train.epoch", "train.epoch", "train.epochs"),
        ("model.latent_dim", "model.latent_dim", "model.latent_dims"),
        ("trian.epochs", "trian", "train"),
    ],
)
def test_unknown_key_suggests_the_nearest(
    tmp_path: Path, key: str, unknown: str, suggestion: str
) -> None:
    message = _error(tmp_path, params_text({key: "10"}))
    assert message.startswith(f"unknown key '{unknown}'; did you mean '{suggestion}'? "), message


def test_a_misspelt_key_is_reported_as_unknown_not_missing(tmp_path: Path) -> None:
    # What the file gets wrong comes before what it leaves out: the typo is what needs fixing.
    text = params_text({"train.epochs": None, "train.epoch": "10"})
    message = _error(tmp_path, text)
    assert message.startswith("unknown key 'train.epoch'; did you mean 'train.epochs'?")


def test_unknown_key_without_a_close_match_lists_valid_keys(tmp_path: Path) -> None:
    message = _error(tmp_path, params_text({"render.zzzz": "1"}))
    assert message.startswith("unknown key 'render.zzzz' ")
    assert "did you mean" not in message
    assert "n_images, n_samples, hierarchy_rows" in message


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("train.epochs", '"ten"', "train.epochs"),
        ("train.epochs", "1.5", "train.epochs"),
        ("train.epochs", '"10"', "train.epochs"),
        ("model.hidden_dim", "16.0", "model.hidden_dim"),
        ("model.latent_dims", "8", "model.latent_dims"),
        ("model.latent_dims", "[8, x]", "model.latent_dims.1"),
        ("model.latent_dims", "[8, .nan]", "model.latent_dims.1"),
        ("train.strategy", "tpu", "train.strategy"),
        ("train.precision", "float16", "train.precision"),
        ("model.activation", "gelu", "model.activation"),
        ("promote.metric", "probe_z1_n100", "promote.metric"),
        ("train.deterministic", "1", "train.deterministic"),
        ("train", "5", "train"),
        ("train", "", "train"),
        ("train", "[1, 2]", "train"),
        ("mlflow.experiment", "5", "mlflow.experiment"),
    ],
)
def test_wrong_type_names_the_key(tmp_path: Path, key: str, value: str, named: str) -> None:
    message = _error(tmp_path, params_text({key: value}))
    assert message.split(": ")[0] == named, message
    assert "(got " in message
    assert "instance of" not in message and "Params" not in message


@pytest.mark.parametrize(
    "overrides",
    [
        {"train.epochs": "0"},
        {"train.batch_size": "0"},
        {"train.learning_rate": "-1e-3"},
        {"train.learning_rate": "0"},
        {"train.lr_min_ratio": "1.5"},
        {"train.ema_decay": "1.0"},
        {"train.free_bits": "-0.1"},
        {"train.steps_per_execution": "0"},
        {"train.grad_clip_norm": "200", "train.skip_grad_norm": "100"},
        {"model.latent_dims": "[]"},
        {"model.latent_dims": "[16]"},
        {"model.latent_dims": "[8, 0]"},
        {"model.min_sigma": "0"},
        {"evaluate.iw_samples": "0"},
        {"prepare.validation_size": "60000"},
        {"prepare.validation_size": "0"},
        {"seed": "-1"},
        {"seed": "4294967296"},  # keras.utils.set_random_seed takes numpy's seeds only
        {"data.dataset": "cifar10"},
        {"evaluate.llr_samples": "0"},
        {"evaluate.probe_labels": "[100, 15]"},
        {"evaluate.probe_labels": "[]"},
        {"evaluate.probe_labels": "[60000]"},
        {"mlflow.experiment": "hvae-{data}"},
        {"mlflow.registered_model": "hvae-{dataset"},
    ],
)
def test_out_of_range_names_the_key(tmp_path: Path, overrides: dict[str, str]) -> None:
    message = _error(tmp_path, params_text(overrides))
    assert message.split(": ")[0] == list(overrides)[-1], message
    assert "got " in message


@pytest.mark.parametrize("key", ["train.learning_rate", "model.min_sigma", "promote.margin"])
@pytest.mark.parametrize("value", [".nan", ".NaN", ".inf", "+.inf", "-.inf", ".Inf"])
def test_nan_and_infinity_are_refused(tmp_path: Path, key: str, value: str) -> None:
    # `train.learning_rate: .inf` used to start a training whose loss became nan.
    message = _error(tmp_path, params_text({key: value}))
    assert message.startswith(f"{key}: must be a finite number, not NaN or infinity (got ")
    assert re.search(r"\(got -?(nan|inf)\)$", message), message


def test_a_huge_value_is_shown_short(tmp_path: Path) -> None:
    message = _error(tmp_path, params_text({"model.latent_dims": '"' + "x" * 500 + '"'}))
    assert message.startswith("model.latent_dims: expected a list of 2 to 32 layer sizes")
    assert len(message) < 200 and message.endswith("...)")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            {"type": "int_from_float", "loc": ("train", "epochs"), "input": 1.5},
            "train.epochs: expected an integer from 1 to 100000 (got 1.5)",
        ),
        (
            {"type": "bool_parsing", "loc": ("train", "deterministic"), "input": "yes please"},
            "train.deterministic: expected true or false (got 'yes please')",
        ),
        (
            {"type": "dict_type", "loc": ("promote",), "input": 5},
            "promote: expected a mapping of keys (got 5)",
        ),
        (
            {"type": "less_than_equal", "loc": ("render", "n_images"), "input": 65,
             "ctx": {"le": 64}, "msg": "Input should be less than or equal to 64"},
            "render.n_images: must be <= 64 (got 65)",
        ),
        (
            {"type": "too_long", "loc": ("model", "latent_dims"), "input": [1] * 100,
             "ctx": {"max_length": 10}},
            f"model.latent_dims: must have at most 10 items (got {str([1] * 100)[:77]}...)",
        ),
        (  # one pydantic could add: its words, without the class name
            {"type": "is_instance_of", "loc": ("train",), "input": 5,
             "msg": "Input should be an instance of TrainParams"},
            "train: expected a mapping of keys (got 5)",
        ),
        (
            {"type": "some_new_check", "loc": ("seed",), "input": 7,
             "msg": "Value is odd for an instance of Params"},
            "seed: expected an integer from 0 to 4294967295 (got 7)",
        ),
        (
            {"type": "some_new_check", "loc": ("seed",), "input": 7, "msg": "Value is odd."},
            "seed: value is odd (got 7)",
        ),
    ],
)  # fmt: skip
def test_describe_phrases_pydantic_errors(error: dict, expected: str) -> None:
    from hvae.config import _describe

    assert _describe(error) == expected


@pytest.mark.parametrize(
    ("dataset", "ood"), [("mnist", "fashion-mnist"), ("fashion-mnist", "mnist")]
)
def test_the_other_dataset_is_ood_and_names_follow_the_dataset(
    tmp_path: Path, dataset: str, ood: str
) -> None:
    params = _edited(tmp_path, data__dataset=dataset)
    assert params.data.ood_dataset == ood
    assert params.experiment == params.registered_model == f"hvae-{dataset}"
    fixed = _edited(tmp_path, data__dataset=dataset, mlflow__registered_model="team-vae")
    assert fixed.registered_model == "team-vae"


def test_batch_larger_than_training_split(tmp_path: Path) -> None:
    text = params_text(
        {"prepare.validation_size": "59990", "train.batch_size": "128", "train.probe_images": "10"}
    )
    message = _error(tmp_path, text)
    assert message.startswith("train.batch_size: ")
    assert "10 training images" in message and "(got 128)" in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="file not found") as info:
        load_params(path)
    assert str(info.value).startswith(str(path))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "line"),
    [("train:\n  epochs: [1, 2\n", None), ("train:\n\tepochs: 3\n", 2), ("a: b: c\n", 1)],
)
def test_invalid_yaml(tmp_path: Path, text: str, line: int | None) -> None:
    message = _error(tmp_path, text)
    assert "not valid YAML" in message
    if line is not None:
        assert message.endswith(f"at line {line}")


@pytest.mark.parametrize(
    ("text", "got"),
    [("- 1\n- 2\n", "[1, 2]"), ("just a string\n", "'just a string'"), ("42\n", "42")],
)
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, got: str) -> None:
    assert _error(tmp_path, text) == f"expected a mapping of sections (got {got})"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path))):
        load_params(tmp_path)


def test_binary_file_instead_of_yaml(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(b"\xff\xfe\x00 not yaml")
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        load_params(path)


def test_promote_metric_is_one_that_versions_carry(tmp_path: Path) -> None:
    message = _error(tmp_path, params_text({"promote.metric": "test_bpd"}))
    assert "'test_nll'" in message and "'ood_likelihood_auroc'" in message
    assert "(got 'test_bpd')" in message
