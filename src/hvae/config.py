"""Typed, validated view of params.yaml — the one place config is checked.

Every stage reads its section through `load_params`. params.yaml is the single place defaults
live: every key must be set there (no field here has a default), and an empty file, a missing,
unknown or duplicated key, a wrong type, NaN or infinity, or an out-of-range value raises
`ConfigError` with one line naming the key, the offending value and what was expected.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hvae.errors import ConfigError

MNIST_TRAIN_SIZE = 60_000
# `seed` goes to keras.utils.set_random_seed, which takes only numpy's range of seeds.
MAX_SEED = 2**32 - 1
# Upper bounds keep a typo from running away in memory or time; each is far above any
# configuration that trains or scores well here (README: reliability).
MAX_LAYERS, MAX_LATENT_DIM, MAX_HIDDEN_DIM, MAX_BLOCKS = 32, 4096, 8192, 32
MAX_EPOCHS = 100_000
MAX_IW_SAMPLES = 100_000  # per image: k = 5000 is the largest published comparison
# Rows of one evaluation pass (images x importance samples): about 1 GB of pixel logits.
MAX_ROWS_PER_PASS = 250_000


class _Section(BaseModel):
    # strict: "5" is not an int and 1.5 is not an int; ints are still accepted for floats.
    # No NaN or infinity anywhere: `.inf` as a learning rate would only show up as a nan loss.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


Dataset = Literal["mnist", "fashion-mnist"]
DATASETS: tuple[str, ...] = get_args(Dataset)


class DataParams(_Section):
    # Trained on; the other of the two is the out-of-distribution set evaluate scores.
    dataset: Dataset

    @property
    def ood_dataset(self) -> str:
        return next(d for d in DATASETS if d != self.dataset)


class PrepareParams(_Section):
    validation_size: int = Field(ge=1, lt=MNIST_TRAIN_SIZE)
    # Seeds the validation split and the one-off binarization of validation and test sets,
    # so every run and every evaluation scores exactly the same bits, whatever `seed` is.
    seed: int = Field(ge=0)
    # Images held out of the *other* dataset's training set: calibrate's OOD validation set.
    ood_validation_size: int = Field(ge=1, le=MNIST_TRAIN_SIZE)


class ModelParams(_Section):
    # Bottom (z_1, next to the pixels) to top (z_L).
    latent_dims: list[int] = Field(
        min_length=2,
        max_length=MAX_LAYERS,
        description=f"a list of 2 to {MAX_LAYERS} layer sizes, each from 1 to {MAX_LATENT_DIM}",
    )
    hidden_dim: int = Field(ge=8, le=MAX_HIDDEN_DIM)
    blocks_per_layer: int = Field(ge=0, le=MAX_BLOCKS)
    min_sigma: float = Field(gt=0.0, lt=1.0)
    # Of every hidden layer. ELU's and ReLU's gradients are one op each, swish's about five: on
    # a CPU that is a large share of a small MLP's step (README: What was tried).
    activation: Literal["swish", "relu", "elu"]

    @model_validator(mode="after")
    def _positive_dims(self) -> ModelParams:
        if any(d < 1 or d > MAX_LATENT_DIM for d in self.latent_dims):
            raise ValueError(
                f"model.latent_dims: every layer size must be from 1 to {MAX_LATENT_DIM} "
                f"(got {self.latent_dims})"
            )
        return self


class TrainParams(_Section):
    epochs: int = Field(ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(ge=1)
    learning_rate: float = Field(gt=0.0)
    lr_min_ratio: float = Field(ge=0.0, le=1.0)
    kl_warmup_epochs: int = Field(ge=0)
    grad_clip_norm: float = Field(gt=0.0)
    # Updates whose gradient norm is non-finite or above this are skipped (and counted).
    skip_grad_norm: float = Field(gt=0.0)
    free_bits: float = Field(ge=0.0)
    # Posterior draws per image in the training objective: 1 is the ELBO, k > 1 the IWAE
    # bound. Each draw has its own top-down pass, so a step decodes batch_size * k rows.
    iw_samples: int = Field(ge=1, le=MAX_IW_SAMPLES)
    ema_decay: float = Field(ge=0.0, lt=1.0)
    # The resume state is saved at the end of the first epoch that ends this long after the
    # last save (0: every epoch), and always after the last epoch.
    resume_every_seconds: float = Field(ge=0.0, le=86_400.0)
    steps_per_execution: int = Field(ge=1, le=10_000)
    log_every_steps: int = Field(ge=1)
    # Time to quality: IW NLL of a fixed validation subset every N epochs (0 = off).
    probe_every_epochs: int = Field(ge=0)
    probe_images: int = Field(ge=1)
    probe_iw_samples: int = Field(ge=1, le=MAX_IW_SAMPLES)
    strategy: Literal["auto", "mirrored", "multi_worker", "one_device"]
    # Compute dtype of training; weights, losses and evaluation are float32 either way.
    # auto: mixed_bfloat16 where the hardware has bfloat16 matmuls, else float32
    # (hvae.training.precision).
    precision: Literal["auto", "float32", "mixed_bfloat16"]
    # Bit-for-bit repeatable training (hvae.training.determinism): TensorFlow's op determinism.
    deterministic: bool

    @model_validator(mode="after")
    def _skip_above_clip(self) -> TrainParams:
        if self.skip_grad_norm <= self.grad_clip_norm:
            raise ValueError(
                f"train.skip_grad_norm: must be > train.grad_clip_norm={self.grad_clip_norm} "
                f"(got {self.skip_grad_norm}); updates between the two are clipped, not skipped"
            )
        return self

    @model_validator(mode="after")
    def _rows_per_step(self) -> TrainParams:
        _check_rows(
            "train.batch_size", self.batch_size, "train.iw_samples", self.iw_samples, "step"
        )
        return self


class EvaluateParams(_Section):
    iw_samples: int = Field(ge=1, le=MAX_IW_SAMPLES)
    # Images scored at once and importance samples drawn per image per pass: memory is
    # bounded by batch_size * chunk_size rows whatever iw_samples is.
    batch_size: int = Field(ge=1, le=10_000)
    chunk_size: int = Field(ge=1, le=MAX_IW_SAMPLES)
    active_unit_threshold: float = Field(gt=0.0)
    # OOD detection: importance samples for each of the bounds in LLR>k (1 = plain ELBOs).
    llr_samples: int = Field(ge=1, le=MAX_IW_SAMPLES)
    # OOD detection: posterior draws for each reconstruction term R_k (the recon_k scores).
    recon_draws: int = Field(ge=1, le=MAX_IW_SAMPLES)
    # Linear probes: labelled training images per probe (balanced, a multiple of 10 classes),
    # each budget drawn `probe_repeats` times.
    probe_labels: list[int] = Field(
        min_length=1, description="a non-empty list of multiples of 10 (the classes)"
    )
    probe_repeats: int = Field(ge=1, le=100)

    @model_validator(mode="after")
    def _budgets(self) -> EvaluateParams:
        _check_rows(
            "evaluate.batch_size", self.batch_size, "evaluate.chunk_size", self.chunk_size, "pass"
        )
        _check_budgets("evaluate.probe_labels", self.probe_labels)
        return self


class SemisupParams(_Section):
    # Label spreading on features of the trained model (hvae.evaluation.label_spreading):
    # `labels` balanced labelled training images per budget, each drawn `draws` times; the
    # other images of the graph are the unlabelled data.
    # The features (hvae.evaluation.label_spreading.FEATURES): the encoder's deepest feature
    # d_L, or every layer's posterior means.
    features: Literal["encoder", "posterior_means"]
    labels: list[int] = Field(
        min_length=1, description="a non-empty list of multiples of 10 (the classes)"
    )
    draws: int = Field(ge=1, le=20)
    # Training images in the graph (a seeded subset, or all of them if there are fewer): the
    # search is quadratic in it.
    graph_images: int = Field(ge=20)
    neighbours: int = Field(ge=1, le=100)
    alpha: float = Field(gt=0.0, lt=1.0)
    iterations: int = Field(ge=1, le=1000)
    # The budget whose first draw the registered model serves (predict's class column).
    serve_labels: int = Field(ge=10)

    @model_validator(mode="after")
    def _budgets(self) -> SemisupParams:
        _check_budgets("semisup.labels", self.labels)
        if self.serve_labels not in self.labels:
            raise ValueError(
                f"semisup.serve_labels: must be one of semisup.labels={self.labels} "
                f"(got {self.serve_labels})"
            )
        if max(self.labels) >= self.graph_images:
            raise ValueError(
                f"semisup.graph_images: must be > the largest of semisup.labels="
                f"{self.labels}, so that some images are unlabelled (got {self.graph_images})"
            )
        if self.neighbours >= self.graph_images:
            raise ValueError(
                f"semisup.neighbours: must be < semisup.graph_images={self.graph_images} "
                f"(got {self.neighbours})"
            )
        return self


class CalibrateParams(_Section):
    # The served OOD score (hvae.evaluation.detector): auto picks the best validation AUROC.
    # One of auto, likelihood, llr_k<j> or recon_k<j> (1 <= j < the number of layers),
    # typicality or typicality_recon.
    score: str = Field(min_length=1)
    # Binarized training images the typicality statistics are fitted on (a seeded subset,
    # or all of them if there are fewer).
    fit_images: int = Field(ge=10, le=MNIST_TRAIN_SIZE)
    # Of each validation set (in-distribution, and the other dataset's training images).
    validation_images: int = Field(ge=10, le=MNIST_TRAIN_SIZE)
    # The in-distribution validation fraction the threshold accepts.
    in_distribution_tpr: float = Field(gt=0.0, lt=1.0)
    # Binarized training images whose encoder features the neighbour distance searches
    # (stored with the detector); 0 drops the `neighbours` candidate.
    reference_images: int = Field(ge=0, le=MNIST_TRAIN_SIZE)
    # Its k: an image's distance to the k-th nearest reference image.
    neighbours: int = Field(ge=1, le=1000)


def _check_rows(name: str, value: int, other: str, other_value: int, per: str) -> None:
    """Images times samples: the rows one training step or evaluation pass holds in memory."""
    rows = value * other_value
    if rows > MAX_ROWS_PER_PASS:
        raise ValueError(
            f"{name} * {other}: must be <= {MAX_ROWS_PER_PASS} rows per {per} "
            f"(got {value} * {other_value} = {rows})"
        )


def _check_budgets(key: str, budgets: list[int]) -> None:
    for n in budgets:
        if n < 10 or n % 10:
            raise ValueError(
                f"{key}: each budget must be a positive multiple of the 10 classes "
                f"(got {n} in {budgets})"
            )


class RenderParams(_Section):
    n_images: int = Field(ge=1, le=64)
    n_samples: int = Field(ge=1, le=400)
    hierarchy_rows: int = Field(ge=1, le=32)
    hierarchy_draws: int = Field(ge=1, le=32)  # per test image, in the per-layer figures
    traversal_units: int = Field(ge=1, le=32)  # rows per layer: its most-used units
    traversal_steps: int = Field(ge=2, le=32)


# The headline metrics evaluate tags every registered version with: what `hvae promote` can
# gate on. Every other metric stays on the run (and its logged model), not on the version.
GateMetric = Literal[
    "test_nll", "test_elbo", "test_recon", "test_kl", "ood_test_nll", "ood_likelihood_auroc"
]
GATE_METRICS: tuple[str, ...] = get_args(GateMetric)


class PromoteParams(_Section):
    alias: str = Field(min_length=1)
    metric: GateMetric
    mode: Literal["min", "max"]
    # The candidate must beat the holder by at least this much (in the metric's units).
    margin: float = Field(ge=0.0)


class MlflowParams(_Section):
    # "{dataset}" is replaced by data.dataset, so a Fashion-MNIST run gets its own
    # experiment and registered model instead of competing with the MNIST champion.
    experiment: str = Field(min_length=1)
    registered_model: str = Field(min_length=1)

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
    seed: int = Field(ge=0, le=MAX_SEED)
    data: DataParams
    prepare: PrepareParams
    model: ModelParams
    train: TrainParams
    evaluate: EvaluateParams
    semisup: SemisupParams
    calibrate: CalibrateParams
    render: RenderParams
    mlflow: MlflowParams
    promote: PromoteParams

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
                f"prepare.validation_size={self.prepare.validation_size} "
                f"(got {self.train.batch_size})"
            )
        if max(self.evaluate.probe_labels) > train_size:
            raise ValueError(
                f"evaluate.probe_labels: must be <= the {train_size} training images left "
                f"after prepare.validation_size={self.prepare.validation_size} "
                f"(got {max(self.evaluate.probe_labels)})"
            )
        if max(self.semisup.labels) >= train_size:
            raise ValueError(
                f"semisup.labels: must be < the {train_size} training images left after "
                f"prepare.validation_size={self.prepare.validation_size}, so that some are "
                f"unlabelled (got {max(self.semisup.labels)})"
            )
        layers = len(self.model.latent_dims)
        # hvae.evaluation.detector.score_names (tests/test_detector.py checks they agree).
        ratios = [f"{kind}_k{j}" for kind in ("llr", "recon") for j in range(1, layers)]
        scores = ["auto", "likelihood", *ratios, "typicality", "typicality_recon"]
        if self.calibrate.reference_images:
            scores.append("neighbours")
        if self.calibrate.score not in scores:
            raise ValueError(
                f"calibrate.score: must be one of {', '.join(scores)} for "
                f"{layers} layers"
                + ("" if self.calibrate.reference_images else " and calibrate.reference_images=0")
                + f" (got {self.calibrate.score!r})"
            )
        for key, size in (
            ("prepare.validation_size", self.prepare.validation_size),
            ("prepare.ood_validation_size", self.prepare.ood_validation_size),
        ):
            if self.calibrate.validation_images > size:
                raise ValueError(
                    f"calibrate.validation_images: must be <= {key}={size} "
                    f"(got {self.calibrate.validation_images})"
                )
        c = self.calibrate
        if c.reference_images and c.neighbours > min(c.reference_images, train_size):
            raise ValueError(
                f"calibrate.neighbours: must be <= calibrate.reference_images="
                f"{c.reference_images} and the {train_size} training images (got {c.neighbours})"
            )
        if self.train.probe_images > self.prepare.validation_size:
            raise ValueError(
                f"train.probe_images: must be <= prepare.validation_size="
                f"{self.prepare.validation_size} (got {self.train.probe_images})"
            )
        return self


# -- one-line messages from pydantic's errors ----------------------------------------------------

_SHOWN_CHARS = 80
_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
_NUMBER = re.compile(r"^\s*[-+]?(\d[\d_]*\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")
_BOUND_ERRORS = ("greater_than_equal", "greater_than", "less_than_equal", "less_than")


def _show(value: Any) -> str:
    """The offending value as the message shows it: YAML's null, else repr, kept short."""
    if value is None or isinstance(value, bool):
        text = {None: "null", True: "true", False: "false"}[value]
    else:
        text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _field_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The valid keys of the section that `loc` points into (for 'did you mean')."""
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if _is_section(annotation):
            model = annotation
        else:
            break
    return list(model.model_fields)


def _lookup(loc: tuple[Any, ...]) -> tuple[Any, list[Any], str | None]:
    """(annotation, constraints, description) of the value at `loc`; (None, [], None) if none."""
    annotation: Any = Params
    metadata: list[Any] = []
    description = None
    for part in loc:
        if isinstance(part, int):
            args = get_args(annotation) if get_origin(annotation) is list else ()
            if not args:
                return None, [], None
            annotation, metadata, description = args[0], [], None
        elif _is_section(annotation) and str(part) in annotation.model_fields:
            field = annotation.model_fields[str(part)]
            annotation, metadata, description = field.annotation, field.metadata, field.description
        else:
            return None, [], None
    return annotation, metadata, description


def _bounds(metadata: list[Any]) -> str:
    limits = {}
    for constraint in metadata:
        for attr, symbol in _BOUNDS:
            limit = getattr(constraint, attr, None)
            if limit is not None:
                limits[symbol] = limit
    if set(limits) == {">=", "<="}:
        return f"from {limits['>=']} to {limits['<=']}"
    return " and ".join(f"{symbol} {limit}" for symbol, limit in limits.items())


def _expected(loc: tuple[Any, ...]) -> str:
    """What the value at `loc` must be, in words: 'an integer >= 1', 'one of 'min', 'max''."""
    annotation, metadata, description = _lookup(loc)
    if description:
        return description
    bounds = _bounds(metadata)
    bounded = f" {bounds}" if bounds else ""
    if _is_section(annotation):
        return "a mapping of keys"
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(annotation))
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return f"an integer{bounded}"
    if annotation is float:
        return f"a finite number{bounded}"
    if annotation is str:
        short = any(getattr(c, "min_length", None) for c in metadata)
        return "a non-empty string" if short else "a string"
    if get_origin(annotation) is list:
        return "a list"
    return "another value"


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    kind = error["type"]
    ctx = error.get("ctx") or {}
    got = _show(error.get("input"))
    if kind == "extra_forbidden":
        names = tuple(p for p in loc if not isinstance(p, int))
        valid = _field_names(Params, names[:-1])
        close = difflib.get_close_matches(str(names[-1]), valid, n=1)
        hint = f"; did you mean '{'.'.join([*map(str, names[:-1]), close[0]])}'?" if close else ""
        return f"unknown key '{key}'{hint} (valid keys here: {', '.join(valid)})"
    if kind == "value_error":
        # Our own validators already name their key and show the value.
        return str(error["msg"]).removeprefix("Value error, ")
    if kind == "missing":
        section = _lookup(loc)[0]
        if _is_section(section):
            keys = ", ".join(section.model_fields)
            return f"{key}: missing section (expected a mapping of keys: {keys})"
        return f"{key}: missing (expected {_expected(loc)})"
    if kind == "finite_number":
        return f"{key}: must be a finite number, not NaN or infinity (got {got})"
    for name, symbol in _BOUNDS:
        if name in ctx and kind in _BOUND_ERRORS:
            return f"{key}: must be {symbol} {ctx[name]} (got {got})"
    if kind in ("too_short", "too_long"):
        limit = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        word = "at least" if kind == "too_short" else "at most"
        return f"{key}: must have {word} {limit} item{'s' * (limit != 1)} (got {got})"
    if kind == "string_too_short":
        return f"{key}: must not be empty (got {got})"
    if kind in ("model_type", "dict_type") and error.get("input") is None:
        section = _lookup(loc)[0]
        if _is_section(section):  # `train:` with nothing under it
            keys = ", ".join(section.model_fields)
            return f"{key}: expected a mapping of keys: {keys} (got null, an empty section)"
    if kind.endswith("_type") or kind in ("int_from_float", "literal_error", "bool_parsing"):
        hint = ""
        value = error.get("input")
        if kind in ("int_type", "float_type") and isinstance(value, str) and _NUMBER.match(value):
            hint = ", a string: write the number without quotes"
        return f"{key}: expected {_expected(loc)} (got {got}{hint})"
    # Any other pydantic error: what the key takes if pydantic's words are about the input's
    # type (they may name an internal class), else those words without any class name.
    message = str(error.get("msg", "")).rstrip(".")
    if message.startswith("Input should be") or "instance of" in message:
        return f"{key}: expected {_expected(loc)} (got {got})"
    message = re.sub(r"\s*(an )?instance of \w+", "", message) or "not valid"
    return f"{key}: {message[:1].lower()}{message[1:]} (got {got})"


def _first(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """What the user wrote wrong comes before what they left out: a misspelt key is reported
    as unknown (with its nearest valid name), not as the valid key it leaves missing."""
    return next((e for e in errors if e["type"] != "missing"), errors[0])


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate an already-loaded YAML document."""
    if raw is None:
        raise ConfigError(
            f"{source}: empty, no key is set (expected a mapping of sections: "
            f"{', '.join(Params.model_fields)})"
        )
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections (got {_show(raw)})")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(_first(exc.errors()))}") from None


# -- YAML ----------------------------------------------------------------------------------------


class _DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: str, first_line: int, line: int) -> None:
        where = f"lines {first_line} and {line}" if line != first_line else f"twice on line {line}"
        super().__init__(f"duplicate key '{key}' ({where})")


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-3` as a float, as YAML 1.2 (and DVC's parser) do, and refuses
    a key written twice in one mapping (PyYAML would keep the last; DVC refuses the file)."""

    def construct_document(self, node: yaml.Node) -> Any:
        # Where each mapping sits in the document, for naming a duplicate by its full key.
        self._paths: dict[int, tuple[str, ...]] = {}
        self._index(node, ())
        return super().construct_document(node)

    def _index(self, node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            if id(node) in self._paths:  # an alias of an anchored mapping: indexed already
                return
            self._paths[id(node)] = path
            for key, value in node.value:
                name = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
                self._index(value, (*path, name))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._index(item, (*path, str(i)))

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    path = (*getattr(self, "_paths", {}).get(id(node), ()), str(key))
                    raise _DuplicateKeyError(".".join(path), seen[key], line)
                seen[key] = line
            except TypeError:  # an unhashable key: SafeLoader reports it itself
                continue
        return super().construct_mapping(node, deep)


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+"
        r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def load_raw(path: str | Path = "params.yaml") -> Any:
    """The YAML document at `path` as plain data, not yet validated (see `parse_params`)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found (expected the pipeline's params file)") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"{path}: cannot read ({reason})") from None
    try:
        return yaml.load(text, Loader=_Yaml12Loader)  # a SafeLoader subclass
    except _DuplicateKeyError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    return parse_params(load_raw(path), str(path))


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
