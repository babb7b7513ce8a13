"""The model card: every figure a reader looks for, from evaluate's metrics and the lineage."""

from __future__ import annotations

from hvae.config import load_params
from hvae.reporting import model_card
from hvae.tracking import card
from params_helpers import params_text

ARCHITECTURE = {"latent_dims": [32, 16, 8], "hidden_dim": 64, "blocks_per_layer": 1}
ARCHITECTURE["activation"] = "elu"


def _metrics() -> dict:
    metrics = {
        "test_nll": 81.3812,
        "test_elbo": -84.4021,
        "test_recon": 58.67,
        "test_kl": 25.73,
        "iw_samples": 1000,
        "test_images": 10000,
        "ood_test_nll": 300.0,
    }
    for i, (kl, units) in enumerate([(5.27, 32), (6.82, 15), (7.04, 8)], start=1):
        metrics[f"test_kl_z{i}"], metrics[f"active_units_z{i}"] = kl, units
    for score, auroc in [("likelihood", 0.999), ("llr_k1", 0.734), ("llr_k2", 0.7)]:
        metrics.update({f"ood_{score}_auroc": auroc, f"ood_{score}_auprc": 0.5})
        metrics[f"ood_{score}_fpr80"] = 0.25
    for score, auroc in [("likelihood", 0.41), ("llr_k1", 0.62), ("llr_k2", 0.55)]:
        metrics[f"calibrate_{score}_auroc"] = auroc
    metrics["calibrate_typicality_auroc"] = 0.991
    metrics.update(ood_typicality_auroc=0.987, ood_typicality_auprc=0.98, ood_typicality_fpr80=0.01)
    metrics.update(ood_served_auroc=0.987, ood_served_auprc=0.98, ood_served_fpr80=0.01)
    metrics.update(ood_served_tpr=0.948, ood_served_flagged=0.962, calibrate_chosen_tpr=0.95)
    for features in ("z1", "z2", "z3", "all", "pixels"):
        for n in (100, 1000):
            metrics[f"probe_{features}_n{n}"] = 0.5 + n / 10000
            metrics[f"probe_{features}_n{n}_std"] = 0.01
    metrics.update(semisup_error_n100=0.034, semisup_error_n100_std=0.001, semisup_draws=5)
    metrics["semisup_graph_images"] = 50000
    return metrics


def _card(dataset: str = "mnist", ood: str = "fashion-mnist") -> str:
    lineage = model_card.Lineage(
        registered_model=f"hvae-{dataset}",
        version="7",
        run_id="f0a32f31aa",
        model_digest="0123456789abcdef",
        git_commit="cfd189d0123",
        params_digest="p" * 64,
        data_digest="d" * 64,
        dataset=dataset,
        ood_dataset=ood,
    )
    return model_card.render(
        lineage,
        ARCHITECTURE,
        parameters=2_290_123,
        key_params={"train.epochs": 450, "seed": 42, "semisup.features": "encoder"},
        metrics=_metrics(),
        requirements=["mlflow==3.17.2", "tensorflow==2.21.0"],
        served={"ood_score": "typicality", "ood_threshold": "14.2"},
    )


def test_the_card_says_what_the_model_is_and_where_it_came_from() -> None:
    card = _card()
    assert card.startswith("# hvae-mnist version 7\n")
    assert "3 stochastic layers" in card and "32, 16, 8 units (56 in all)" in card
    assert "width 64" in card and "elu" in card and "2,290,123" in card
    for text in ("`f0a32f31aa`", "`cfd189d0123`", "`" + "d" * 16 + "`", "`" + "p" * 16 + "`"):
        assert text in card
    assert "| `train.epochs` | 450 |" in card


def test_the_card_has_every_headline_figure() -> None:
    card = _card()
    assert "k = 1000 | **81.38 nats**" in card
    assert "-84.40 nats (reconstruction 58.67, KL 25.73)" in card
    assert "| z1 | 5.27 | 32 |" in card and "| z3 | 7.04 | 8 |" in card
    assert "| likelihood | 0.999 | 0.500 | 0.250 | 0.410 |" in card
    assert "| LLR>2 | 0.700 | 0.500 | 0.250 | 0.550 |" in card
    # The served score: named, with its validation threshold and its test-set rates.
    assert "| typicality | 0.987 | 0.980 | 0.010 | 0.991 |" in card
    assert "serves **typicality** as `ood_score` and flags `is_ood` above 14.2" in card
    assert "95.0% of in-distribution validation images" in card
    assert "AUROC 0.987; at the threshold 94.8% of the MNIST test images are accepted" in card
    assert "and 96.2% of the Fashion-MNIST test images flagged" in card
    assert "| served |" not in card
    assert "| z2 | 0.510 | 0.600 |" in card and "| all layers | 0.510 | 0.600 |" in card
    assert "Ladder VAE" in card and "| **this version** | **81.38** | 1000 |" in card
    assert "Label spreading on the encoder's deepest feature d_L over 50,000 training" in card
    assert "| 100 | 3.40% ± 0.10% |" in card
    assert 'load_model("models:/hvae-mnist/7")' in card
    assert "`tensorflow==2.21.0`" in card


def test_published_rows_only_for_the_dataset_they_are_about() -> None:
    card = _card("fashion-mnist", "mnist")
    assert "Fashion-MNIST" in card and "against MNIST" in card
    assert "Ladder VAE" not in card


def test_card_params_name_the_held_out_images(tmp_path) -> None:
    # The data digest pins the split, but a reader needs the number: how many of the training
    # set's images the model never trained on.
    path = tmp_path / "params.yaml"
    path.write_text(params_text({"prepare.validation_size": "3000"}))
    shown = card.key_params(load_params(path))
    assert shown["prepare.validation_size"] == 3000
