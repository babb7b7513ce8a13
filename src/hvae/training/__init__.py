"""Training: the compiled model and its optimiser, numeric precision, distribution strategies,
determinism, the per-epoch callbacks and resuming a killed run.

May import hvae.model, hvae.evaluation (the time-to-quality probe), hvae.config and the
top-level helpers (errors, atomic, interrupts). Knows nothing of MLflow runs or the registry:
the train stage wires them together.
"""
