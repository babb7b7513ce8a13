"""What a reader sees: the figures (matplotlib) and a version's model card (Markdown).

Formatting only: every number comes in from the stages. May import hvae.serving.pyfunc for
the serving limits the card states.
"""
