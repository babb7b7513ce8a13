"""params.yaml validation: defaults, YAML 1.2 floats, and one-line errors naming the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from hvae.config import Params, flatten, load_params, parse_params
from hvae.errors import ConfigError

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


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
    return message


# -- what loads ---------------------------------------------------------------------------------


def test_repo_params_load_and_every_key_is_used() -> None:
    params = load_params(REPO_PARAMS)
    assert isinstance(params, Params)
    assert isinstance(params.train.learning_rate, float)
    loaded = flatten(params)
    assert loaded.keys() == flatten(Params()).keys()
    # Every value written in the file is the value the pipeline sees.
    raw = yaml.safe_load(REPO_PARAMS.read_text())
    for section, values in raw.items():
        for key, value in values.items() if isinstance(values, dict) else [(None, values)]:
            name = f"{section}.{key}" if key else section
            if isinstance(loaded[name], float) and isinstance(value, str):
                value = float(value)  # `1e-3` is a string to PyYAML's YAML 1.1 rules
            assert loaded[name] == value, name


def test_empty_file_gives_code_defaults(tmp_path: Path) -> None:
    params = load_params(_write(tmp_path, "# nothing set\n"))
    assert params == Params()
    assert params.train.epochs == 100
    assert params.train.batch_size == 512
    assert params.model.latent_dims == [32, 16, 8]
    assert params.prepare.validation_size == 10_000
    assert params.evaluate.iw_samples == 1000


@pytest.mark.parametrize("text", ["1e-3", "1.0e-3", "1E-3", "+1e-3", "0.001", ".001"])
def test_scientific_notation_is_a_float(tmp_path: Path, text: str) -> None:
    params = load_params(_write(tmp_path, f"train:\n  learning_rate: {text}\n"))
    assert type(params.train.learning_rate) is float
    assert params.train.learning_rate == pytest.approx(1e-3)


def test_plain_safe_loader_would_have_read_a_string() -> None:
    # Why the YAML 1.2 resolver matters: PyYAML's 1.1 rules leave `1e-3` a string.
    assert yaml.safe_load("x: 1e-3") == {"x": "1e-3"}


def test_int_is_accepted_for_a_float(tmp_path: Path) -> None:
    params = load_params(_write(tmp_path, "train:\n  grad_clip_norm: 50\n"))
    assert params.train.grad_clip_norm == 50.0


def test_flatten_uses_dotted_keys() -> None:
    flat = flatten(parse_params({"train": {"epochs": 3}, "model": {"latent_dims": [4, 2]}}))
    assert flat["train.epochs"] == 3
    assert flat["model.latent_dims"] == [4, 2]
    assert flat["seed"] == 42
    assert all(not isinstance(v, dict) for v in flat.values())
    assert {key.split(".")[0] for key in flat} == set(Params.model_fields)
    assert len(flat) == 1 + sum(
        len(field.annotation.model_fields)
        for name, field in Params.model_fields.items()
        if name != "seed"
    )


def test_params_are_frozen() -> None:
    params = parse_params({})
    with pytest.raises(Exception, match="frozen"):
        params.train.epochs = 5  # type: ignore[misc]


# -- what does not ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "suggestion"),
    [
        ("train:\n  epoch: 10\n", "did you mean 'train.epochs'?"),
        ("model:\n  latent_dim: [4, 2]\n", "did you mean 'model.latent_dims'?"),
        ("trian:\n  epochs: 10\n", "did you mean 'train'?"),
    ],
)
def test_unknown_key_suggests_the_nearest(tmp_path: Path, text: str, suggestion: str) -> None:
    message = _error(tmp_path, text)
    assert "unknown key" in message
    assert suggestion in message


def test_unknown_key_without_a_close_match_lists_valid_keys(tmp_path: Path) -> None:
    message = _error(tmp_path, "render:\n  zzzz: 1\n")
    assert "unknown key 'render.zzzz'" in message
    assert "did you mean" not in message
    assert "n_images, n_samples, hierarchy_rows" in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('train:\n  epochs: "ten"\n', "train.epochs"),
        ("train:\n  epochs: 1.5\n", "train.epochs"),
        ('train:\n  epochs: "10"\n', "train.epochs"),
        ("model:\n  hidden_dim: 16.0\n", "model.hidden_dim"),
        ("model:\n  latent_dims: 8\n", "model.latent_dims"),
        ("model:\n  latent_dims: [8, x]\n", "model.latent_dims.1"),
        ("train:\n  strategy: tpu\n", "train.strategy"),
        ("train:\n  precision: float16\n", "train.precision"),
        ("model:\n  activation: gelu\n", "model.activation"),
        ("promote:\n  metric: probe_z1_n100\n", "promote.metric"),
        ("train:\n  deterministic: 1\n", "train.deterministic"),
        ("train: 5\n", "train"),
    ],
)
def test_wrong_type_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    assert _error(tmp_path, text).split(": ")[1] == key


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("train:\n  epochs: 0\n", "train.epochs"),
        ("train:\n  batch_size: 0\n", "train.batch_size"),
        ("train:\n  learning_rate: -1e-3\n", "train.learning_rate"),
        ("train:\n  learning_rate: 0\n", "train.learning_rate"),
        ("train:\n  lr_min_ratio: 1.5\n", "train.lr_min_ratio"),
        ("train:\n  ema_decay: 1.0\n", "train.ema_decay"),
        ("train:\n  free_bits: -0.1\n", "train.free_bits"),
        ("train:\n  steps_per_execution: 0\n", "train.steps_per_execution"),
        ("train:\n  grad_clip_norm: 200\n  skip_grad_norm: 100\n", "train.skip_grad_norm"),
        ("model:\n  latent_dims: []\n", "model.latent_dims"),
        ("model:\n  latent_dims: [16]\n", "model.latent_dims"),
        ("model:\n  latent_dims: [8, 0]\n", "model.latent_dims"),
        ("model:\n  min_sigma: 0\n", "model.min_sigma"),
        ("evaluate:\n  iw_samples: 0\n", "evaluate.iw_samples"),
        ("prepare:\n  validation_size: 60000\n", "prepare.validation_size"),
        ("prepare:\n  validation_size: 0\n", "prepare.validation_size"),
        ("seed: -1\n", "seed"),
        ("data:\n  dataset: cifar10\n", "data.dataset"),
        ("evaluate:\n  llr_samples: 0\n", "evaluate.llr_samples"),
        ("evaluate:\n  probe_labels: [100, 15]\n", "evaluate.probe_labels"),
        ("evaluate:\n  probe_labels: []\n", "evaluate.probe_labels"),
        ("evaluate:\n  probe_labels: [60000]\n", "evaluate.probe_labels"),
        ("mlflow:\n  experiment: hvae-{data}\n", "mlflow.experiment"),
        ("mlflow:\n  registered_model: hvae-{dataset\n", "mlflow.registered_model"),
    ],
)
def test_out_of_range_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    message = _error(tmp_path, text)
    assert message.split(": ")[1] == key, message


@pytest.mark.parametrize(
    ("dataset", "ood"), [("mnist", "fashion-mnist"), ("fashion-mnist", "mnist")]
)
def test_the_other_dataset_is_ood_and_names_follow_the_dataset(
    tmp_path: Path, dataset: str, ood: str
) -> None:
    params = load_params(_write(tmp_path, f"data:\n  dataset: {dataset}\n"))
    assert params.data.ood_dataset == ood
    assert params.experiment == params.registered_model == f"hvae-{dataset}"
    fixed = load_params(_write(tmp_path, "mlflow:\n  registered_model: team-vae\n"))
    assert fixed.registered_model == "team-vae"


def test_batch_larger_than_training_split(tmp_path: Path) -> None:
    message = _error(tmp_path, "prepare:\n  validation_size: 59990\ntrain:\n  batch_size: 128\n")
    assert "train.batch_size" in message
    assert "10 training images" in message


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


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    assert "expected a mapping of sections" in _error(tmp_path, text)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path))):
        load_params(tmp_path)


def test_binary_file_instead_of_yaml(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(b"\xff\xfe\x00 not yaml")
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        load_params(path)


def test_promote_metric_is_one_that_versions_carry(tmp_path: Path) -> None:
    message = _error(tmp_path, "promote:\n  metric: test_bpd\n")
    assert "'test_nll'" in message and "'ood_likelihood_auroc'" in message
    assert "(got 'test_bpd')" in message
