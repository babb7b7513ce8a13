"""Datasets: finding and verifying the IDX files, parsing them, and the prepared arrays."""
