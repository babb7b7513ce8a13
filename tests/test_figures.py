"""The report figures' axes: what a reader sees must not hinge on one bad epoch."""

from __future__ import annotations

import numpy as np
import pandas as pd

from hvae.reporting import figures


def _history(epochs: int) -> pd.DataFrame:
    e = np.arange(1, epochs + 1, dtype=float)
    recon, kl = 60.0 + 40.0 / e, 25.0 + 5.0 / e
    return pd.DataFrame(
        {
            "epoch": e,
            "train_recon": recon,
            "train_kl": kl,
            "train_elbo": -(recon + kl),
            "val_recon": recon + 1.0,
            "val_kl": kl,
            "val_elbo": -(recon + kl + 1.0),
        }
    )


def test_a_loss_spike_leaves_the_terms_panel_readable() -> None:
    history = _history(1000)
    history.loc[676, ["train_kl", "train_elbo"]] = [5000.0, -5060.0]  # epoch 677's spike
    _, ax_parts = figures.loss_curves(history).axes
    low, high = ax_parts.get_ylim()
    assert low == 0.0
    # Every epoch's terms from the third on stay in view; the spike does not set the scale.
    bulk = history.drop(index=676).iloc[2:][["train_recon", "val_recon", "train_kl", "val_kl"]]
    assert bulk.to_numpy().max() <= high < 200.0


def test_a_short_run_keeps_every_point_in_view() -> None:
    history = _history(5)
    _, ax_parts = figures.loss_curves(history).axes
    terms = history.iloc[2:][["train_recon", "val_recon", "train_kl", "val_kl"]].to_numpy()
    assert ax_parts.get_ylim()[1] >= terms.max()
