"""hvae: a hierarchical VAE on MNIST as a reproducible DVC + MLflow pipeline."""

__version__ = "0.1.0"
