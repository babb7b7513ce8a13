"""Matplotlib figures for reports/figures. Each function returns a Figure; no file I/O."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from hvae.evaluation import detector


def image_grid(rows: np.ndarray, title: str, row_labels: list[str] | None = None) -> Figure:
    """rows: (n_rows, n_cols, 784) pixel values in [0, 1]."""
    n_rows, n_cols = rows.shape[:2]
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(n_cols * 0.9, n_rows * 0.9 + 0.5), squeeze=False
    )
    for r in range(n_rows):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.imshow(rows[r, c].reshape(28, 28), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        if row_labels:
            axes[r, 0].set_ylabel(row_labels[r], fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _marker(history: pd.DataFrame) -> str | None:
    """Dots on short runs, so a one-epoch history still shows its points."""
    return "o" if len(history) < 20 else None


def loss_curves(history: pd.DataFrame) -> Figure:
    fig, (ax_elbo, ax_parts) = plt.subplots(1, 2, figsize=(11, 4))
    m = _marker(history)
    for split in ("train", "val"):
        ax_elbo.plot(history["epoch"], history[f"{split}_elbo"], marker=m, label=f"{split} ELBO")
        ax_parts.plot(
            history["epoch"], history[f"{split}_recon"], marker=m, label=f"{split} reconstruction"
        )
        ax_parts.plot(history["epoch"], history[f"{split}_kl"], "--", marker=m, label=f"{split} KL")
    ax_elbo.set(xlabel="epoch", ylabel="nats per image", title="ELBO (higher is better)")
    ax_parts.set(xlabel="epoch", ylabel="nats per image", title="ELBO terms")
    # Early epochs dwarf the rest; clip the view to the informative range.
    start = min(len(history) - 1, 2)
    tail = history["val_elbo"].iloc[start:]
    ax_elbo.set_ylim(tail.min() - 5, history[["train_elbo", "val_elbo"]].max().max() + 2)
    # One diverging training epoch (a loss spike the skip guard caught) would flatten every
    # other epoch's terms to a line. The validation terms, computed on fixed images at each
    # epoch's end, set the scale instead; the training means run within 1.2x of them.
    val_terms = history[["val_recon", "val_kl"]].iloc[start:]
    ax_parts.set_ylim(0, 1.2 * float(val_terms.max().max()))
    for ax in (ax_elbo, ax_parts):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def layer_kl(history: pd.DataFrame, test_kl: dict[str, float]) -> Figure:
    names = sorted(
        (c.removeprefix("val_") for c in history if c.startswith("val_kl_z")),
        key=lambda n: int(n.removeprefix("kl_z")),
    )
    fig, (ax_curve, ax_bar) = plt.subplots(1, 2, figsize=(11, 4))
    m = _marker(history)
    for name in names:
        label = name.replace("kl_", "KL ")
        ax_curve.plot(history["epoch"], history[f"val_{name}"], marker=m, label=label)
    ax_curve.set(xlabel="epoch", ylabel="nats per image", title="validation KL per layer")
    ax_curve.grid(alpha=0.3)
    ax_curve.legend()
    ax_bar.bar([n.removeprefix("kl_") for n in names], [test_kl[n] for n in names])
    ax_bar.set(ylabel="nats per image", title="test KL per layer (z1 = bottom)")
    fig.tight_layout()
    return fig


def time_to_quality(probes: pd.DataFrame, k: int, images: int) -> Figure:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(probes["train_seconds"] / 60, probes["val_nll"], "o-", markersize=3)
    ax.set(
        xlabel="training wall-clock minutes (probes excluded)",
        ylabel=f"validation NLL, k={k}, {images} images (nats)",
        title="time to quality",
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def ood_roc(curves: dict[str, pd.DataFrame], aurocs: dict[str, float], title: str) -> Figure:
    """One ROC curve per anomaly score (OOD images are the positives)."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, curve in curves.items():
        ax.plot(
            curve["fpr"],
            curve["tpr"],
            label=f"{detector.score_label(name)} (AUROC {aurocs[name]:.3f})",
        )
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def probe_accuracy(metrics: dict[str, float], budgets: list[int], features: list[str]) -> Figure:
    """Grouped bars: test accuracy of a linear probe per feature set and label budget."""
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(budgets)
    x = np.arange(len(features))
    for j, n in enumerate(budgets):
        acc = [metrics[f"probe_{f}_n{n}"] for f in features]
        err = [metrics[f"probe_{f}_n{n}_std"] for f in features]
        ax.bar(x + j * width, acc, width, yerr=err, capsize=3, label=f"{n} labels")
    ax.set_xticks(x + width * (len(budgets) - 1) / 2, features)
    ax.set(ylabel="test accuracy", ylim=(0, 1), title="linear probe on posterior means")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    fig.tight_layout()
    return fig


def save(fig: Figure, path) -> None:
    fig.savefig(path, dpi=100)
    plt.close(fig)
