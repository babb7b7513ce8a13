"""One module per DVC stage: read the params section and the deps, write the outs."""
