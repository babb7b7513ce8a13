"""Typed, validated view of params.yaml — the one place config is checked.

Every stage reads its section through `load_params`; an unknown key, a wrong type or an
out-of-range value raises `ConfigError` with one line naming the key and what was expected.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hvae.errors import ConfigError

MNIST_TRAIN_SIZE = 60_000


class _Section(BaseModel):
    # strict: "5" is not an int and 1.5 is not an int; ints are still accepted for floats.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


Dataset = Literal["mnist", "fashion-mnist"]
DATASETS: tuple[str, ...] = get_args(Dataset)


class DataParams(_Section):
    # Trained on; the other of the two is the out-of-distribution set evaluate scores.
    dataset: Dataset = "mnist"

    @property
    def ood_dataset(self) -> str:
        return next(d for d in DATASETS if d != self.dataset)


class PrepareParams(_Section):
    validation_size: int = Field(10_000, ge=1, lt=MNIST_TRAIN_SIZE)
    # Seeds the validation split and the one-off binarization of validation and test sets,
    # so every run and every evaluation scores exactly the same bits, whatever `seed` is.
    seed: int = Field(0, ge=0)


class ModelParams(_Section):
    # Bottom (z_1, next to the pixels) to top (z_L).
    latent_dims: list[int] = Field(default_factory=lambda: [32, 16, 8], min_length=2)
    hidden_dim: int = Field(256, ge=8)
    blocks_per_layer: int = Field(1, ge=0)
    min_sigma: float = Field(1e-3, gt=0.0, lt=1.0)
    # Of every hidden layer. ELU's and ReLU's gradients are one op each, swish's about five: on
    # a CPU that is a large share of a small MLP's step (README: What was tried).
    activation: Literal["swish", "relu", "elu"] = "swish"

    @model_validator(mode="after")
    def _positive_dims(self) -> ModelParams:
        if any(d < 1 for d in self.latent_dims):
            raise ValueError("model.latent_dims: every layer size must be >= 1")
        return self


class TrainParams(_Section):
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(512, ge=1)
    learning_rate: float = Field(2e-3, gt=0.0)
    lr_min_ratio: float = Field(0.05, ge=0.0, le=1.0)
    kl_warmup_epochs: int = Field(10, ge=0)
    grad_clip_norm: float = Field(200.0, gt=0.0)
    # Updates whose gradient norm is non-finite or above this are skipped (and counted).
    skip_grad_norm: float = Field(1000.0, gt=0.0)
    free_bits: float = Field(0.0, ge=0.0)
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0)
    steps_per_execution: int = Field(10, ge=1)
    log_every_steps: int = Field(50, ge=1)
    # Time to quality: IW NLL of a fixed validation subset every N epochs (0 = off).
    probe_every_epochs: int = Field(10, ge=0)
    probe_images: int = Field(1000, ge=1)
    probe_iw_samples: int = Field(100, ge=1)
    strategy: Literal["auto", "mirrored", "multi_worker", "one_device"] = "auto"
    # Compute dtype of training; weights, losses and evaluation are float32 either way.
    # auto: mixed_bfloat16 where the hardware has bfloat16 matmuls, else float32 (hvae.precision).
    precision: Literal["auto", "float32", "mixed_bfloat16"] = "auto"
    # Bit-for-bit repeatable training (hvae.determinism): TensorFlow's op determinism.
    deterministic: bool = True

    @model_validator(mode="after")
    def _skip_above_clip(self) -> TrainParams:
        if self.skip_grad_norm <= self.grad_clip_norm:
            raise ValueError(
                f"train.skip_grad_norm: must be > train.grad_clip_norm={self.grad_clip_norm} "
                f"(got {self.skip_grad_norm}); updates between the two are clipped, not skipped"
            )
        return self


class EvaluateParams(_Section):
    iw_samples: int = Field(1000, ge=1)
    # Images scored at once and importance samples drawn per image per pass: memory is
    # bounded by batch_size * chunk_size rows whatever iw_samples is.
    batch_size: int = Field(100, ge=1)
    chunk_size: int = Field(250, ge=1)
    active_unit_threshold: float = Field(0.01, gt=0.0)
    # OOD detection: importance samples for each of the bounds in LLR>k (1 = plain ELBOs).
    llr_samples: int = Field(100, ge=1)
    # Linear probes: labelled training images per probe (balanced, a multiple of 10 classes),
    # each budget drawn `probe_repeats` times.
    probe_labels: list[int] = Field(default_factory=lambda: [100, 1000], min_length=1)
    probe_repeats: int = Field(5, ge=1)

    @model_validator(mode="after")
    def _budgets(self) -> EvaluateParams:
        for n in self.probe_labels:
            if n < 10 or n % 10:
                raise ValueError(
                    f"evaluate.probe_labels: each budget must be a positive multiple of the "
                    f"10 classes (got {n})"
                )
        return self


class RenderParams(_Section):
    n_images: int = Field(10, ge=1, le=64)
    n_samples: int = Field(64, ge=1, le=400)
    hierarchy_rows: int = Field(8, ge=1, le=32)
    hierarchy_draws: int = Field(9, ge=1, le=32)  # per test image, in the per-layer figures
    traversal_units: int = Field(8, ge=1, le=32)  # rows per layer: its most-used units
    traversal_steps: int = Field(9, ge=2, le=32)


# The headline metrics evaluate tags every registered version with: what `hvae promote` can
# gate on. Every other metric stays on the run (and its logged model), not on the version.
GateMetric = Literal[
    "test_nll", "test_elbo", "test_recon", "test_kl", "ood_test_nll", "ood_likelihood_auroc"
]
GATE_METRICS: tuple[str, ...] = get_args(GateMetric)


class PromoteParams(_Section):
    alias: str = Field("champion", min_length=1)
    metric: GateMetric = "test_nll"
    mode: Literal["min", "max"] = "min"
    # The candidate must beat the holder by at least this much (in the metric's units).
    margin: float = Field(0.0, ge=0.0)


class MlflowParams(_Section):
    # "{dataset}" is replaced by data.dataset, so a Fashion-MNIST run gets its own
    # experiment and registered model instead of competing with the MNIST champion.
    experiment: str = Field("hvae-{dataset}", min_length=1)
    registered_model: str = Field("hvae-{dataset}", min_length=1)

    @model_validator(mode="after")
    def _known_placeholders(self) -> MlflowParams:
        for key in ("experiment", "registered_model"):
            value = getattr(self, key)
            rest = value.replace("{dataset}", "")
            if "{" in rest or "}" in rest:
                raise ValueError(
                    f"mlflow.{key}: the only placeholder is {{dataset}} (got {value!r})"
                )
        return self


class Params(_Section):
    seed: int = Field(42, ge=0)
    data: DataParams = DataParams()
    prepare: PrepareParams = PrepareParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    render: RenderParams = RenderParams()
    mlflow: MlflowParams = MlflowParams()
    promote: PromoteParams = PromoteParams()

    @property
    def experiment(self) -> str:
        """mlflow.experiment with {dataset} filled in."""
        return self.mlflow.experiment.replace("{dataset}", self.data.dataset)

    @property
    def registered_model(self) -> str:
        """mlflow.registered_model with {dataset} filled in."""
        return self.mlflow.registered_model.replace("{dataset}", self.data.dataset)

    @model_validator(mode="after")
    def _split_fits(self) -> Params:
        train_size = MNIST_TRAIN_SIZE - self.prepare.validation_size
        if self.train.batch_size > train_size:
            raise ValueError(
                f"train.batch_size: must be <= the {train_size} training images left after "
                f"prepare.validation_size={self.prepare.validation_size}"
            )
        if max(self.evaluate.probe_labels) > train_size:
            raise ValueError(
                f"evaluate.probe_labels: must be <= the {train_size} training images "
                f"(got {max(self.evaluate.probe_labels)})"
            )
        if self.train.probe_images > self.prepare.validation_size:
            raise ValueError(
                f"train.probe_images: must be <= prepare.validation_size="
                f"{self.prepare.validation_size} (got {self.train.probe_images})"
            )
        return self


def _field_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The valid keys of the section that `loc` points into (for 'did you mean')."""
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            break
    return list(model.model_fields)


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(p for p in error["loc"] if not isinstance(p, int))
    key = ".".join(str(p) for p in error["loc"]) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        valid = _field_names(Params, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f"; did you mean '{'.'.join([*map(str, loc[:-1]), close[0]])}'?" if close else ""
        return f"unknown key '{key}'{hint} (valid keys here: {', '.join(valid)})"
    if kind == "value_error":
        # Our own validators already name their key.
        return str(error["msg"]).removeprefix("Value error, ")
    got = error.get("input")
    return f"{key}: {error['msg'].lower()} (got {got!r})"


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate an already-loaded YAML document."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc.errors()[0])}") from None


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-3` as a float, as YAML 1.2 (and DVC's parser) do."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+"
        r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found (expected the pipeline's params file)") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"{path}: cannot read ({reason})") from None
    try:
        raw = yaml.load(text, Loader=_Yaml12Loader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    return parse_params(raw, str(path))


def flatten(params: Params) -> dict[str, Any]:
    """'train.epochs' -> value, for MLflow params and digests."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = value

    walk("", params.model_dump())
    return out
