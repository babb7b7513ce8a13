"""A registered version's model card: what it is, where it came from, how well it does.

Markdown, written by evaluate as the version's description in the MLflow registry and as
`reports/model_card.md`, so `git diff` shows it change. Only formatting here: every number
comes from evaluate's metrics and the run's lineage.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hvae.evaluation.detector import score_label
from hvae.serving import pyfunc

# Published test NLLs on MNIST (nats; dynamically binarized training data), from the papers.
PUBLISHED_MNIST = (
    ("VAE, 1 stochastic layer (Burda et al. 2015)", 86.76, 5000),
    ("VAE, 2 stochastic layers (Burda et al. 2015)", 85.33, 5000),
    ("IWAE k=50, 2 layers (Burda et al. 2015)", 82.90, 5000),
    ("Ladder VAE, 5 layers (Sønderby et al. 2016)", 81.74, 5000),
    ("NVAE (Vahdat & Kautz 2020)", 78.01, 1000),
)


@dataclass(frozen=True)
class Lineage:
    """Where a version came from: the run, the code, the params and the data."""

    registered_model: str
    version: str
    run_id: str
    model_digest: str  # of models/ as trained (tracking.MODEL_DIGEST)
    git_commit: str
    params_digest: str
    data_digest: str
    dataset: str
    ood_dataset: str


def render(
    lineage: Lineage,
    architecture: Mapping,
    parameters: int,
    key_params: Mapping[str, object],
    metrics: Mapping[str, float],
    requirements: Sequence[str],
    served: Mapping[str, str] | None = None,
) -> str:
    """The card as Markdown. `architecture` is the model's config (hvae.artifacts);
    `served` the version's `ood_score` and `ood_threshold` tags, when it has a detector."""
    served = served or {}
    dims = list(architecture["latent_dims"])
    n = len(dims)
    name, version = lineage.registered_model, lineage.version
    lines = [
        f"# {name} version {version}",
        "",
        f"A hierarchical VAE with {n} stochastic layers trained on dynamically binarized "
        f"{_dataset_title(lineage.dataset)}: top-down prior p(z{n})·Π p(z_l | z_>l), top-down "
        "inference q(z_l | x, z_>l), Bernoulli pixels. It scores images: a per-image ELBO "
        "and importance-weighted log-likelihood (higher = more typical; their negatives are "
        "anomaly scores).",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| stochastic layers (z1 bottom … z{n} top) | "
        + ", ".join(str(d) for d in dims)
        + f" units ({sum(dims)} in all) |",
        f"| residual MLP | width {architecture['hidden_dim']}, "
        f"{architecture['blocks_per_layer']} block(s) per layer, {architecture['activation']} |",
        f"| parameters | {parameters:,} |",
        "",
        "## Lineage",
        "",
        "| | |",
        "|---|---|",
        f"| training run | `{lineage.run_id}` |",
        f"| model files digest | `{lineage.model_digest}` |",
        f"| git commit | `{lineage.git_commit}` |",
        f"| data | {lineage.dataset}, digest `{lineage.data_digest[:16]}`; "
        f"OOD set {lineage.ood_dataset} |",
        f"| params digest | `{lineage.params_digest[:16]}` |",
        *(f"| `{key}` | {value} |" for key, value in key_params.items()),
        "",
        _results(metrics, n),
        _ood(metrics, lineage.dataset, lineage.ood_dataset, served),
        _probes(metrics, n),
        _semisup(metrics, key_params.get("semisup.features")),
        _published(metrics, lineage.dataset),
        "## Load and serve",
        "",
        "```python",
        "import mlflow",
        f'model = mlflow.pyfunc.load_model("models:/{name}/{version}")  # or @champion',
        "scores = model.predict(pixels)  # rows of 784 grey levels 0-255, any numeric dtype",
        'scores = model.predict(pixels, params={"iw_samples": 1000})  # columns: elbo, '
        "iw_log_likelihood, class, class_probability, ood_score, is_ood",
        "```",
        "",
        "```bash",
        f"hvae serve --model models:/{name}/{version}  # in the project: body limit, short errors",
        f"mlflow models serve -m models:/{name}/{version} --env-manager uv -p 5001",
        f"mlflow models generate-dockerfile -m models:/{name}/{version}",
        "```",
        "",
        f"A request holds at most {pyfunc.MAX_ROWS:,} rows and rows * (`iw_samples` + the OOD "
        f"score's samples) is at most {pyfunc.MAX_ROW_SAMPLES:,}; `iw_samples` is 1 to "
        f"{pyfunc.MAX_IW_SAMPLES}. A row's "
        "scores depend on that row alone (its noise is seeded by its pixels): the same rows "
        "give the same numbers, alone, batched or concurrently.",
        "",
        "The version carries the `hvae` package code it was trained with and these pinned "
        "requirements: " + ", ".join(f"`{r}`" for r in requirements) + ".",
        "",
    ]
    return "\n".join(lines)


def _dataset_title(dataset: str) -> str:
    return {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}.get(dataset, dataset)


def _results(metrics: Mapping[str, float], n: int) -> str:
    k = int(metrics["iw_samples"])
    images = int(metrics["test_images"])
    rows = [
        f"## Test set ({images:,} images)",
        "",
        "| | |",
        "|---|---|",
        f"| NLL, importance-weighted, k = {k} | **{metrics['test_nll']:.2f} nats** |",
        f"| ELBO | {metrics['test_elbo']:.2f} nats (reconstruction {metrics['test_recon']:.2f}, "
        f"KL {metrics['test_kl']:.2f}) |",
        "",
        "| layer | KL (nats) | active units |",
        "|---|---|---|",
    ]
    for i in range(1, n + 1):
        rows.append(f"| z{i} | {metrics[f'test_kl_z{i}']:.2f} | {metrics[f'active_units_z{i}']} |")
    return "\n".join(rows) + "\n"


def _ood(
    metrics: Mapping[str, float], dataset: str, ood_dataset: str, served: Mapping[str, str]
) -> str:
    scores = sorted(
        {
            m.group(1)
            for k in metrics
            if (m := re.fullmatch(r"ood_(.+)_auroc", k)) and m.group(1) != "served"
        },
        key=lambda s: (s != "likelihood", s.startswith("typicality"), s),
    )
    title = f"## Out-of-distribution detection against {_dataset_title(ood_dataset)}"
    rows = [title, ""]
    if "ood_score" in served:
        score = served["ood_score"]
        rows += [
            f"`predict` serves **{score_label(score)}** as `ood_score` and flags `is_ood` above "
            f"{served.get('ood_threshold', '?')}: the score and threshold calibrate chose on "
            "validation data only (in-distribution validation images against the other "
            "dataset's training images), the threshold accepting "
            f"{metrics.get('calibrate_chosen_tpr', float('nan')):.1%} of in-distribution "
            "validation images.",
            "",
        ]
        if "ood_served_auroc" in metrics:
            rows += [
                f"On the test sets: AUROC {metrics['ood_served_auroc']:.3f}; at the threshold "
                f"{metrics['ood_served_tpr']:.1%} of the {_dataset_title(dataset)} test images "
                "are accepted and "
                f"{metrics['ood_served_flagged']:.1%} of the {_dataset_title(ood_dataset)} "
                "test images flagged.",
                "",
            ]
    if not scores:
        return "\n".join(rows) + "\n" if "ood_score" in served else ""
    rows += [
        "| score (test sets) | AUROC | AUPRC | FPR at 80 % TPR | validation AUROC |",
        "|---|---|---|---|---|",
    ]
    for s in scores:
        valid = metrics.get(f"calibrate_{s}_auroc")
        rows.append(
            f"| {score_label(s)} | {metrics[f'ood_{s}_auroc']:.3f} | "
            f"{metrics[f'ood_{s}_auprc']:.3f} | {metrics[f'ood_{s}_fpr80']:.3f} | "
            + (f"{valid:.3f} |" if valid is not None else "- |")
        )
    return "\n".join(rows) + "\n"


def _probes(metrics: Mapping[str, float], n: int) -> str:
    budgets = sorted(
        int(m.group(1)) for k in metrics if (m := re.fullmatch(r"probe_all_n(\d+)", k))
    )
    if not budgets:
        return ""
    rows = [
        "## Linear probes (test accuracy, mean of the draws)",
        "",
        "| features | " + " | ".join(f"{b} labels" for b in budgets) + " |",
        "|---|" + "---|" * len(budgets),
    ]
    for features in [*(f"z{i}" for i in range(1, n + 1)), "all", "pixels"]:
        values = [metrics.get(f"probe_{features}_n{b}") for b in budgets]
        if all(v is not None for v in values):
            cells = " | ".join(f"{v:.3f}" for v in values)
            rows.append(f"| {'all layers' if features == 'all' else features} | {cells} |")
    return "\n".join(rows) + "\n"


# What semisup.features names, as the card says it.
_FEATURES = {
    "encoder": "the encoder's deepest feature d_L",
    "posterior_means": "every layer's posterior means",
}


def _semisup(metrics: Mapping[str, float], features: object = None) -> str:
    budgets = sorted(
        int(m.group(1)) for k in metrics if (m := re.fullmatch(r"semisup_error_n(\d+)", k))
    )
    if not budgets:
        return ""
    draws = int(metrics.get("semisup_draws", 1))
    rows = [
        "## Semi-supervised classification (test error)",
        "",
        f"Label spreading on {_FEATURES.get(str(features), 'the model features')} over "
        f"{int(metrics.get('semisup_graph_images', 0)):,} training images, the others "
        f"unlabelled; mean ± std over {draws} draws of balanced labels. `predict` answers "
        "with this classifier.",
        "",
        "| labels | test error |",
        "|---|---|",
    ]
    for b in budgets:
        mean, std = metrics[f"semisup_error_n{b}"], metrics.get(f"semisup_error_n{b}_std", 0.0)
        rows.append(f"| {b} | {mean:.2%} ± {std:.2%} |")
    return "\n".join(rows) + "\n"


def _published(metrics: Mapping[str, float], dataset: str) -> str:
    if dataset != "mnist":
        return ""
    rows = [
        "## Beside published results (MNIST test NLL, nats)",
        "",
        "| model | NLL | k |",
        "|---|---|---|",
    ]
    rows += [f"| {model} | {nll:.2f} | {k} |" for model, nll, k in PUBLISHED_MNIST]
    rows.append(
        f"| **this version** | **{metrics['test_nll']:.2f}** | {int(metrics['iw_samples'])} |"
    )
    rows += [
        "",
        "Published rows score a fresh binarization of the test set; this one scores a single "
        "fixed binarization (`prepare.seed`).",
    ]
    return "\n".join(rows) + "\n"
