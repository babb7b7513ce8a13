"""Every leaf key of the repo's params.yaml, probed with wrong values: each must be refused with
one line naming the key and showing the value, and the values a key does take must load.

The keys come from the repo's params.yaml at collection time and the probes from PROBES below:
a key in the file without an entry in PROBES fails (add its probes), so no key added to the
file can skip validation. Every case goes through a real file and `load_params`, so YAML's own
spellings (`.nan`, `.inf`, `-.inf`, quoted numbers) are what is validated.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest
import yaml

from hvae.config import GATE_METRICS, MAX_SEED, Params, flatten, load_params
from hvae.errors import ConfigError
from params_helpers import REPO_PARAMS, leaf_keys, params_text, with_values

NAN, INF = math.nan, math.inf
HUGE = 10**12
Kind = Literal["int", "float", "bool", "str", "choice", "int list"]

# Refused whatever the key's range: wrong types, null, NaN and infinities. A key's own table
# entry may move one of these to `accept`.
GENERIC: dict[str, list[Any]] = {
    "int": ["x", "5", 1.5, True, [1], {"a": 1}, None, NAN, INF, -INF],
    "float": ["x", "0.5", True, [0.5], {"a": 1}, None, NAN, INF, -INF],
    "bool": ["x", "true", 0, 1, [True], {"a": 1}, None, NAN, INF, -INF],
    "str": [5, 1.5, True, ["x"], {"a": 1}, None, NAN, INF, -INF, ""],
    "choice": ["x", "", 5, True, ["x"], {"a": 1}, None, NAN, INF, -INF],
    "int list": [
        *("x", 5, {"a": 1}, None, NAN, INF, -INF),
        *([], ["x"], [1.5], [NAN], [INF], [-INF], [None], [[1]], [True]),
    ],
}


@dataclass(frozen=True)
class Probes:
    kind: Kind
    reject: tuple[Any, ...] = ()  # besides GENERIC[kind]
    accept: tuple[Any, ...] = ()  # loads, with the rest of the repo's params as they are


def _int(reject: tuple[Any, ...], accept: tuple[Any, ...]) -> Probes:
    return Probes("int", reject, accept)


def _float(reject: tuple[Any, ...], accept: tuple[Any, ...]) -> Probes:
    return Probes("float", reject, accept)


POSITIVE = _int((-1, 0), (1, HUGE))  # no upper bound: 10**12 loads


def _up_to(top: int, low: int = 1) -> Probes:
    """An int from `low` to `top`: what bounds a key's memory or time."""
    return _int((-1, low - 1, top + 1, HUGE), (low, top))


NATURAL = _int((-1,), (0, HUGE))  # 0 = off, or none
RENDER = {"n_images": 64, "n_samples": 400, "hierarchy_rows": 32, "hierarchy_draws": 32}
RENDER |= {"traversal_units": 32}
NAMES = Probes("str", ("hvae-{data}", "{", "}", "hvae-{dataset"), ("x", "hvae-{dataset}", "a b"))

# Repo context: validation_size 2000 (58 000 training images left), batch_size 1024,
# probe_images 1000, grad_clip_norm 200, skip_grad_norm 1000, probe_labels up to 1000;
# 60000 MNIST training images.
PROBES: dict[str, Probes] = {
    "seed": _int((-1, HUGE, MAX_SEED + 1), (0, MAX_SEED)),
    "data.dataset": Probes("choice", ("cifar10", "MNIST"), ("mnist", "fashion-mnist")),
    # >= probe_images (1000) and calibrate.validation_images (2000); the training split left
    # must hold a batch (1024).
    "prepare.validation_size": _int((-1, 0, 1, 999, 1999, 58977, 60000, HUGE), (2000, 58976)),
    "prepare.seed": _int((-1,), (0, HUGE)),  # a SeedSequence's entropy: any size
    # >= calibrate.validation_images (2000), <= the other dataset's 60 000 training images.
    "prepare.ood_validation_size": _int((-1, 0, 1999, 60_001, HUGE), (2000, 60_000)),
    "model.latent_dims": Probes(
        "int list",
        ([16], [32, 0, 8], [8, -1], [0, 0], [8, "x"], [8, 1.5], [8, NAN], [8, 4097], [8, HUGE]),
        ([4, 2], [1, 1], [64, 32, 16, 8, 4], [8, 4096], [1] * 32),
    ),
    "model.hidden_dim": _int((-1, 0, 7, 8193, HUGE), (8, 8192)),
    "model.blocks_per_layer": _up_to(32, low=0),
    "model.min_sigma": _float((-1, 0, 0.0, 1, 1.0, HUGE), (1e-9, 0.5)),
    "model.activation": Probes("choice", ("gelu", "ELU"), ("swish", "relu", "elu")),
    "train.epochs": _up_to(100_000),
    "train.batch_size": _int((-1, 0, 58_001, HUGE), (1, 58_000)),
    "train.learning_rate": _float((-1, 0, -1e-3), (1e-9, HUGE)),
    "train.lr_min_ratio": _float((-1, -1e-9, 1.5, HUGE), (0, 0.0, 1, 0.5)),
    "train.kl_warmup_epochs": NATURAL,
    "train.grad_clip_norm": _float((-1, 0, 1000, 1000.0, HUGE), (1e-9, 999.9)),  # < skip
    "train.skip_grad_norm": _float((-1, 0, 100, 200), (200.1, HUGE)),  # > clip
    "train.free_bits": _float((-1, -1e-9), (0, 0.0, HUGE)),
    # batch_size * iw_samples <= 250 000 rows per step (the repo's batch: 1024).
    "train.iw_samples": _int((-1, 0, 245, HUGE), (1, 244)),
    "train.ema_decay": _float((-1, 1, 1.0, HUGE), (0, 0.0, 0.999)),
    # Up to a day between resume saves (0: every epoch).
    "train.resume_every_seconds": _float((-1, -0.5, 86_401, HUGE), (0, 0.0, 60, 86_400)),
    "train.steps_per_execution": _up_to(10_000),
    "train.log_every_steps": POSITIVE,
    "train.probe_every_epochs": NATURAL,
    "train.probe_images": _int((-1, 0, 2_001, HUGE), (1, 2_000)),  # <= validation_size
    "train.probe_iw_samples": _up_to(100_000),
    "train.strategy": Probes(
        "choice", ("tpu", "AUTO"), ("auto", "mirrored", "multi_worker", "one_device")
    ),
    "train.precision": Probes(
        "choice", ("float16", "bfloat16"), ("auto", "float32", "mixed_bfloat16")
    ),
    "train.deterministic": Probes("bool", (), (True, False)),
    "evaluate.iw_samples": _up_to(100_000),
    # batch_size * chunk_size <= 250 000 rows per pass (the repo's: 100 and 250).
    "evaluate.batch_size": _int((-1, 0, 1001, 10_001, HUGE), (1, 1000)),
    "evaluate.chunk_size": _int((-1, 0, 2501, 100_001, HUGE), (1, 2500)),
    "evaluate.active_unit_threshold": _float((-1, 0), (1e-9, HUGE)),
    "evaluate.llr_samples": _up_to(100_000),
    "evaluate.recon_draws": _up_to(100_000),
    # Multiples of the 10 classes, at most the 58 000 training images.
    "evaluate.probe_labels": Probes(
        "int list",
        ([0], [-10], [15], [100, 15], [58_010], [HUGE], [100, "x"]),
        ([10], [58_000], [100, 1000, 10_000]),
    ),
    "evaluate.probe_repeats": _up_to(100),
    # Multiples of 10, below graph_images (50 000) and holding serve_labels (1000).
    "semisup.labels": Probes(
        "int list",
        ([0], [-10], [15], [100, 15], [100], [50_000], [HUGE], [1000, "x"]),  # [100]: no 1000
        ([1000], [10, 1000], [100, 1000, 49_990]),
    ),
    "semisup.features": Probes("choice", ("pixels", "Encoder"), ("encoder", "posterior_means")),
    "semisup.draws": _up_to(20),
    # More than the training images left means all of them.
    "semisup.graph_images": _int((-1, 0, 19, 1000), (1001, 50_000, HUGE)),
    "semisup.neighbours": _up_to(100),
    "semisup.alpha": _float((-1, 0, 0.0, 1, 1.0, HUGE), (1e-9, 0.5, 0.99)),
    "semisup.iterations": _up_to(1000),
    "semisup.serve_labels": _int((-1, 0, 10, 1001, HUGE), (100, 1000)),
    # The repo's model has 4 layers: LLR>1 to LLR>3, recon>1 to recon>3.
    "calibrate.score": Probes(
        "str",
        ("x", "llr_k0", "llr_k4", "llr_k", "LLR_k1", "auto ", "llr_k01", "recon_k4", "recon_k0"),
        (
            *("auto", "likelihood", "typicality", "typicality_recon", "neighbours"),
            *("llr_k1", "llr_k3", "recon_k2"),
        ),
    ),
    "calibrate.fit_images": _int((-1, 0, 9, 60_001, HUGE), (10, 60_000)),
    # <= prepare.validation_size (2 000) and prepare.ood_validation_size (10 000).
    "calibrate.validation_images": _int((-1, 0, 9, 2_001, HUGE), (10, 2_000)),
    "calibrate.in_distribution_tpr": _float((-1, 0, 0.0, 1, 1.0, HUGE), (1e-9, 0.5, 0.95)),
    # The repo serves neighbours (so 0 is refused) at k = 50 (so at least 50).
    "calibrate.reference_images": _int((-1, 0, 49, 60_001, HUGE), (50, 20_000, 60_000)),
    "calibrate.neighbours": _int((-1, 0, 1001, HUGE), (1, 50, 1000)),
    **{f"render.{key}": _int((-1, 0, top + 1, HUGE), (1, top)) for key, top in RENDER.items()},
    "render.traversal_steps": _int((-1, 0, 1, 33, HUGE), (2, 32)),
    "mlflow.experiment": NAMES,
    "mlflow.registered_model": NAMES,
    "promote.alias": Probes("str", (), ("x", "champion")),
    "promote.metric": Probes("choice", ("test_bpd", "probe_z1_n100"), GATE_METRICS),
    "promote.mode": Probes("choice", ("minimum", "MIN"), ("min", "max")),
    "promote.margin": _float((-1, -1e-9), (0, 0.0, HUGE)),
}

KEYS = leaf_keys()  # the repo's params.yaml, read now: a new key gets probed (or fails)


def _rejects(key: str) -> list[Any]:
    probes = PROBES[key]
    generic = [v for v in GENERIC[probes.kind] if not _within(v, probes.accept)]
    return generic + [v for v in probes.reject if not _within(v, generic)]


def _within(value: Any, values: tuple[Any, ...] | list[Any]) -> bool:
    # By type and value (True is not 1 here), NaN equal to NaN.
    return any(repr(value) == repr(v) and type(value) is type(v) for v in values)


def _cases() -> list[Any]:
    cases = []
    for key in KEYS:
        if key not in PROBES:  # fails in the test, naming the key
            cases.append(pytest.param(key, None, "reject", id=f"{key}-NO PROBES"))
            continue
        for verdict, values in (("reject", _rejects(key)), ("accept", PROBES[key].accept)):
            cases += [pytest.param(key, v, verdict, id=f"{key}-{verdict}-{v!r}") for v in values]
    return cases


CASES = _cases()


def _shown(value: Any) -> list[str]:
    """How the message may show the value: itself, or (in a list) the element it refuses."""
    values = [value, *value] if isinstance(value, list) else [value]
    return [_YAML_WORDS[v] if v is None or isinstance(v, bool) else repr(v) for v in values]


_YAML_WORDS = {None: "null", True: "true", False: "false"}


def _names(message: str, key: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", message) is not None


# -- the table covers the file ------------------------------------------------------------------


def test_every_leaf_key_of_params_yaml_has_probes() -> None:
    missing = [key for key in KEYS if key not in PROBES]
    assert not missing, f"add probes for {missing} to PROBES in {Path(__file__).name}"
    stale = [key for key in PROBES if key not in KEYS]
    assert not stale, f"PROBES has keys params.yaml no longer has: {stale}"


@pytest.mark.parametrize("key", KEYS)
def test_each_key_decides_its_numbers_and_its_kind(key: str) -> None:
    """A key's entry must say what -1, 0 and 10**12 do (numbers) or name an unknown choice,
    and its kind must be the field's type in config.py."""
    probes = PROBES[key]
    section, _, leaf = key.rpartition(".")
    field = (Params.model_fields[section].annotation if section else Params).model_fields[leaf]
    annotation = field.annotation
    kind = {int: "int", float: "float", bool: "bool", str: "str", list[int]: "int list"}.get(
        annotation, "choice" if get_origin(annotation) is Literal else None
    )
    assert probes.kind == kind, (key, annotation)
    decided = (*probes.reject, *probes.accept)
    if kind in ("int", "float"):
        for number in (-1, 0, HUGE):
            assert any(v == number and not isinstance(v, bool) for v in decided), (key, number)
    if kind == "choice":
        assert set(probes.accept) == set(get_args(annotation)), key
        assert any(v not in probes.accept for v in probes.reject), key
    assert probes.accept, f"{key}: name at least one value it takes"


# -- the property -------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value", "verdict"), CASES)
def test_a_leaf_key_refuses_what_it_must(tmp_path: Path, key: str, value: Any, verdict: str):
    assert key in PROBES, f"params.yaml key {key!r} has no probes: add it to PROBES"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(with_values({key: value}), sort_keys=False))
    if verdict == "accept":
        assert flatten(load_params(path))[key] == value
        return
    with pytest.raises(ConfigError) as info:
        load_params(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(f"{path}: "), message
    assert _names(message, key), f"{key} not named: {message}"
    for internal in ("instance of", "Params", "Input should", "Value error", "pydantic", "type="):
        assert internal not in message, message
    assert "got " in message and any(form in message for form in _shown(value)), message


def test_the_cases_cover_every_key_many_times() -> None:
    per_key = {key: sum(1 for c in CASES if c.values[0] == key) for key in KEYS}
    assert min(per_key.values()) >= 10, per_key
    assert len(CASES) > 10 * len(KEYS)


# -- the same through the CLI, as a user meets it -----------------------------------------------

BAD_FILES = {
    "empty": "",
    "duplicate key": params_text({"train.epochs": "450\n  epochs: 3"}),
    "nan learning_rate": params_text({"train.learning_rate": ".nan"}),
    "missing key": params_text({"train.epochs": None}),
    "wrong type section": params_text({"train": "5"}),
    "zero layer size": params_text({"model.latent_dims": "[32, 0, 8]"}),
}
EXPECTED = {
    "empty": "empty, no key is set",
    "duplicate key": r"duplicate key 'train\.epochs' \(lines \d+ and \d+\)",
    "nan learning_rate": r"train\.learning_rate: must be a finite number.* \(got nan\)",
    "missing key": r"train\.epochs: missing \(expected an integer from 1 to 100000\)",
    "wrong type section": r"train: expected a mapping of keys \(got 5\)",
    "zero layer size": (
        r"model\.latent_dims: every layer size must be from 1 to 4096 \(got \[32, 0, 8\]\)"
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_the_cli_stops_on_a_bad_params_file_and_writes_nothing(tmp_path: Path, case: str):
    bad = tmp_path / "in" / "bad.yaml"
    bad.parent.mkdir()
    bad.write_text(BAD_FILES[case])
    cwd = tmp_path / "work"
    cwd.mkdir()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(
        [sys.executable, "-m", "hvae.cli", "prepare", "--params", str(bad)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    last = result.stderr.rstrip("\n").splitlines()[-1]
    assert re.fullmatch(rf"hvae prepare: error: {re.escape(str(bad))}: {EXPECTED[case]}.*", last)
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in cwd.iterdir()) == []  # no data/, models/, reports/, mlflow.db
    assert sorted(p.name for p in bad.parent.iterdir()) == ["bad.yaml"]


def test_the_repo_file_itself_is_fine() -> None:
    # The base every probe edits: if this fails, every case above means nothing.
    assert flatten(load_params(REPO_PARAMS)).keys() == set(KEYS)
