"""The hierarchical VAE: distributions, building blocks and the keras.Model. No I/O here."""

from hvae.model.hvae import HierarchicalVAE, LayerStats, build_model

__all__ = ["HierarchicalVAE", "LayerStats", "build_model"]
