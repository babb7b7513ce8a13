"""Registered model versions and the alias that marks the one in use.

`decide` applies the metric gate, `promote` moves the alias and records the decision as tags
on the version that receives it, `rollback` moves the alias back to the version it replaced.
The metric is read from the version's tags, which evaluate writes (`test_nll`, `test_elbo`, …).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from hvae.errors import RegistryError

Mode = Literal["min", "max"]


@dataclass(frozen=True)
class Decision:
    model: str
    alias: str
    metric: str
    mode: Mode
    margin: float
    candidate: str
    candidate_value: float
    holder: str | None
    holder_value: float | None
    passed: bool
    forced: bool

    @property
    def acts(self) -> bool:
        return self.passed or self.forced

    def describe(self) -> str:
        new = f"version {self.candidate} ({self.metric} {self.candidate_value:.4f})"
        if self.holder is None:
            return f"{new}: '{self.alias}' is unset, so the first version passes"
        held = "none" if self.holder_value is None else f"{self.holder_value:.4f}"
        old = f"version {self.holder} ({self.metric} {held})"
        better = "lower" if self.mode == "min" else "higher"
        verdict = "passes" if self.passed else "fails"
        gate = f"the gate ({better} by at least {self.margin:g}) {verdict}"
        forced = "; forced" if self.forced and not self.passed else ""
        return f"{new} against {old} holding '{self.alias}': {gate}{forced}"


def _registered(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException:
        raise RegistryError(
            f"registered model '{name}' not found (run the pipeline's evaluate stage first)"
        ) from None


def _version(client: MlflowClient, name: str, version: str):
    try:
        return client.get_model_version(name, version)
    except MlflowException:
        known = ", ".join(str(v.version) for v in _versions(client, name))
        raise RegistryError(
            f"version {version} of '{name}' not found (versions: {known or 'none'})"
        ) from None


def _versions(client: MlflowClient, name: str) -> list:
    versions = client.search_model_versions(f"name = '{name}'")
    return sorted(versions, key=lambda v: int(v.version))


def _holder(client: MlflowClient, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _metric(version, metric: str, name: str) -> float:
    raw = version.tags.get(metric)
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise RegistryError(
            f"version {version.version} of '{name}' has no numeric '{metric}' tag "
            f"(got {raw!r}); evaluate writes it"
        ) from None


def _when(millis: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(millis / 1000))


def versions_table(client: MlflowClient, name: str) -> pd.DataFrame:
    """One row per version, newest last: what `hvae models` prints."""
    _registered(client, name)
    aliases = client.get_registered_model(name).aliases  # alias -> version
    rows = []
    for v in _versions(client, name):
        rows.append(
            {
                "version": int(v.version),
                "created": _when(v.creation_timestamp),
                "run": (v.run_id or "")[:12],
                "test_nll": v.tags.get("test_nll", ""),
                "test_elbo": v.tags.get("test_elbo", ""),
                "aliases": ",".join(
                    sorted(a for a, n in aliases.items() if str(n) == str(v.version))
                ),
                "git_commit": v.tags.get("git_commit", "")[:10],
            }
        )
    return pd.DataFrame(
        rows,
        columns=["version", "created", "run", "test_nll", "test_elbo", "aliases", "git_commit"],
    )


def decide(
    client: MlflowClient,
    name: str,
    alias: str,
    version: str | None,
    metric: str,
    mode: Mode,
    margin: float,
    force: bool = False,
) -> Decision:
    """Would `version` (default: the newest) take `alias`? Reads only; changes nothing."""
    _registered(client, name)
    if version is None:
        versions = _versions(client, name)
        if not versions:
            raise RegistryError(f"registered model '{name}' has no versions")
        candidate = versions[-1]
    else:
        candidate = _version(client, name, version)
    holder = _holder(client, name, alias)
    if holder is not None and str(holder.version) == str(candidate.version):
        raise RegistryError(f"version {candidate.version} of '{name}' already holds '{alias}'")
    candidate_value = _metric(candidate, metric, name)
    holder_value = None
    passed = True
    if holder is not None:
        try:
            holder_value = _metric(holder, metric, name)
        except RegistryError:
            if not force:
                raise
        if holder_value is not None:
            gain = candidate_value - holder_value
            passed = (-gain if mode == "min" else gain) >= margin
        else:
            passed = False
    return Decision(
        model=name,
        alias=alias,
        metric=metric,
        mode=mode,
        margin=margin,
        candidate=str(candidate.version),
        candidate_value=candidate_value,
        holder=None if holder is None else str(holder.version),
        holder_value=holder_value,
        passed=passed,
        forced=force,
    )


def promote(client: MlflowClient, decision: Decision) -> None:
    """Move the alias and record the decision on the version that receives it."""
    if not decision.acts:
        raise RegistryError(decision.describe())
    prefix = f"promotion.{decision.alias}"
    tags = {
        f"{prefix}.previous_version": decision.holder or "",
        f"{prefix}.metric": decision.metric,
        f"{prefix}.value": f"{decision.candidate_value:.4f}",
        f"{prefix}.previous_value": ""
        if decision.holder_value is None
        else f"{decision.holder_value:.4f}",
        f"{prefix}.margin": f"{decision.margin:g}",
        f"{prefix}.time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        f"{prefix}.forced": str(decision.forced and not decision.passed).lower(),
    }
    # Record first, then move: a failure in between leaves the old holder in place, never an
    # alias that moved without its record.
    for key, value in tags.items():
        client.set_model_version_tag(decision.model, decision.candidate, key, value)
    client.set_registered_model_alias(decision.model, decision.alias, decision.candidate)


def rollback(client: MlflowClient, name: str, alias: str) -> tuple[str, str]:
    """Move `alias` back to the version it replaced; returns (from, to)."""
    _registered(client, name)
    holder = _holder(client, name, alias)
    if holder is None:
        raise RegistryError(f"alias '{alias}' is not set on '{name}'")
    previous = holder.tags.get(f"promotion.{alias}.previous_version", "")
    if not previous:
        raise RegistryError(
            f"version {holder.version} holds '{alias}' but replaced no earlier version"
        )
    target = _version(client, name, previous)
    prefix = f"rollback.{alias}"
    client.set_model_version_tag(name, holder.version, f"{prefix}.to_version", str(target.version))
    client.set_model_version_tag(
        name, holder.version, f"{prefix}.time", time.strftime("%Y-%m-%dT%H:%M:%S%z")
    )
    client.set_registered_model_alias(name, alias, target.version)
    return str(holder.version), str(target.version)
