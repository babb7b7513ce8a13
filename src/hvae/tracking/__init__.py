"""MLflow: the store and its runs (runs), the registry and logged models (registry), a
version's model card assembled from its run (card), the alias gate (promotion) and the lock
that serialises registry writes (locks).

May import the top-level helpers, hvae.config, hvae.reporting (the card's text) and
hvae.serving.pyfunc (the scorer a version is logged with); never the maths or the stages.
"""
