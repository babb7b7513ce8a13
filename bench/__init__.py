"""Benchmarks (run from the repo root: `python -m bench.<name>`). Not part of the test suite."""
